"""Chronological per-user cuts at day boundaries, and the samples later stages read.

A user's cut is the start (00:00 UTC) of one of their active days. The context is everything the
user did strictly before the cut; F_H is the set of items the user gives negative feedback to in
[cut, cut + H days), minus items already in the context. Everything is vectorised over the whole
log (it is sorted by user, then time): no Python loop per user.

Rule for the test cut of a user with n events: the earliest active-day start b (not the first
day) with at least `test_frac * n` events before b; if none, the last active-day start. The valid
cut applies the same rule with `valid_frac` among day starts before the test cut. A cut needs at
least `min_context` events before it, else the user has no such cut (-1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from .schema import NEGATIVE, POSITIVE

DAY = 86400
TS_MAX = (1 << 34) - 1  # timestamps live in the low 34 bits of the (user, ts) sort key


@dataclass
class SplitConfig:
    test_frac: float = 0.8
    valid_frac: float = 0.6
    min_context: int = 5
    global_test_date: str = ""   # "YYYY-MM-DD": one global cut for every user instead of per-user cuts
    global_valid_date: str = ""
    train_event_stride: int = 0  # >0: extra training cuts every N events (bursty logs like MovieLens)
    max_train_samples_per_user: int = 50
    max_history: int = 50


def _user_bounds(users: np.ndarray):
    """Start offset of each user's run in the sorted log and each row's user rank."""
    change = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    urank = np.cumsum(np.r_[False, users[1:] != users[:-1]])
    return change, urank


def compute_cuts(log: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Per-user valid and test cuts (UTC seconds at 00:00, or -1)."""
    users = log["user_id"].to_numpy()
    ts = log["ts"].to_numpy()
    starts, urank = _user_bounds(users)
    n_users = len(starts)
    counts = np.diff(np.r_[starts, len(users)])
    pos = np.arange(len(users)) - starts[urank]  # events of the user before this row
    day = ts // DAY
    new_day = np.r_[True, (day[1:] != day[:-1]) | (users[1:] != users[:-1])]
    cand = new_day & (pos > 0)  # first event of a later active day: a day boundary with a past
    c_idx = np.flatnonzero(cand)
    c_user, c_pos, c_ts = urank[c_idx], pos[c_idx], day[c_idx] * DAY

    if cfg.global_test_date:
        test_cut = np.full(n_users, _date_ts(cfg.global_test_date))
        before_test = _events_before(urank, ts, test_cut)
    else:
        test_cut, before_test = _frac_cut(c_user, c_pos, c_ts, counts, cfg.test_frac, n_users,
                                          limit=np.full(n_users, np.iinfo(np.int64).max))
    test_cut = np.where(before_test >= cfg.min_context, test_cut, -1)
    if cfg.global_valid_date:
        valid_cut = np.full(n_users, _date_ts(cfg.global_valid_date))
        before_valid = _events_before(urank, ts, valid_cut)
    else:
        limit = np.where(test_cut >= 0, test_cut, np.iinfo(np.int64).max)
        valid_cut, before_valid = _frac_cut(c_user, c_pos, c_ts, counts, cfg.valid_frac, n_users, limit=limit)
    valid_cut = np.where((before_valid >= cfg.min_context) & (test_cut >= 0) & (valid_cut < test_cut), valid_cut, -1)
    # what fitted models may see: before the first evaluation cut (train/valid) or the test cut
    # (test). With global dates that bound holds for every user, evaluated or not.
    never = np.full(n_users, TS_MAX)
    if cfg.global_test_date:
        test_limit = np.full(n_users, _date_ts(cfg.global_test_date))
        train_limit = np.full(n_users, _date_ts(cfg.global_valid_date)) if cfg.global_valid_date else test_limit
    else:
        test_limit = np.where(test_cut >= 0, test_cut, never)
        train_limit = np.where(valid_cut >= 0, valid_cut, test_limit)
    return pd.DataFrame({"user_id": users[starts], "valid_cut": valid_cut.astype("int64"),
                         "test_cut": test_cut.astype("int64"), "train_limit": train_limit.astype("int64"),
                         "test_limit": test_limit.astype("int64"), "n_events": counts})


def _date_ts(date: str) -> int:
    return int(pd.Timestamp(date, tz="UTC").value // 10**9)


def _events_before(urank, ts, cut_per_user):
    return np.bincount(urank, weights=ts < cut_per_user[urank], minlength=len(cut_per_user)).astype(int)


def _frac_cut(c_user, c_pos, c_ts, counts, frac, n_users, limit):
    ok = c_ts < limit[c_user]
    cu, cp, ct = c_user[ok], c_pos[ok], c_ts[ok]
    cut = np.full(n_users, -1, dtype=np.int64)
    before = np.zeros(n_users, dtype=np.int64)
    # fallback: the last candidate of each user (candidates are sorted by user then time)
    last = np.r_[cu[1:] != cu[:-1], True] if len(cu) else np.zeros(0, bool)
    cut[cu[last]] = ct[last]
    before[cu[last]] = cp[last]
    # preferred: the first candidate with enough events before it; assign in reverse so the first wins
    q = np.flatnonzero(cp >= frac * counts[cu])[::-1]
    cut[cu[q]] = ct[q]
    before[cu[q]] = cp[q]
    return cut, before


# ---------------------------------------------------------------- samples
def _ragged(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """A list column whose row r holds values[starts[r]:ends[r]], built without a Python loop."""
    lengths = np.maximum(ends - starts, 0)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    total = int(offsets[-1])
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(total)
    return pa.LargeListArray.from_arrays(offsets, pa.array(values[idx]))


class SampleBuilder:
    """Precomputed indexes over a sorted log so that samples for many cuts are cheap."""

    def __init__(self, log: pd.DataFrame, horizons: list[int], max_history: int):
        self.log = log
        self.horizons = horizons
        self.max_history = max_history
        self.users = log["user_id"].to_numpy()
        self.items = log["item_id"].to_numpy()
        self.ts = log["ts"].to_numpy()
        self.fb = log["feedback"].to_numpy()
        kind = pd.Categorical(log["kind"])
        self.kind_codes = kind.codes
        self.kind_names = pa.array([str(c) for c in kind.categories], pa.string())
        self.starts, self.urank = _user_bounds(self.users)
        self.ends = np.r_[self.starts[1:], len(self.users)]
        # composite sort key (user rank, ts): searchsorted finds "first event of user u at/after t"
        self.key = (self.urank.astype(np.int64) << 34) + self.ts
        self.neg_rows = np.flatnonzero(self.fb == NEGATIVE)
        self.pos_rows = np.flatnonzero(self.fb == POSITIVE)
        # first time each (user, item) pair appears, and the first negative / positive row of each.
        # pd.factorize numbers pairs in order of first appearance (the log is time-sorted per user),
        # so a row is a pair's first exactly when its code exceeds every earlier code.
        item_codes, item_uniques = pd.factorize(self.items)
        codes, _ = pd.factorize(self.urank.astype(np.int64) * len(item_uniques) + item_codes)
        is_first = codes > np.maximum.accumulate(np.r_[-1, codes[:-1]])
        first_row = np.flatnonzero(is_first)  # first_row[c] is where pair c first appears
        self.first_seen_ts = self.ts[first_row[codes]]
        self.pair = codes
        self.is_first_neg = self._first_of(self.neg_rows)
        self.is_first_pos = self._first_of(self.pos_rows)
        self.user_index = pd.Index(self.users[self.starts])

    def _first_of(self, rows):
        """Flag the first of `rows` (sorted) for each (user, item) pair."""
        flag = np.zeros(len(self.users), bool)
        c, _ = pd.factorize(self.pair[rows])
        first = c > np.maximum.accumulate(np.r_[-1, c[:-1]])
        flag[rows[first]] = True
        return flag

    def build(self, user_ids: np.ndarray, cut_ts: np.ndarray, split: str, limit_ts: np.ndarray | None = None,
              with_context: bool = True) -> pa.Table:
        """Samples for (user, cut) pairs. Future windows end at `limit_ts` (targets never cross into
        the period a later split evaluates)."""
        u = self.user_index.get_indexer(user_ids)
        if (u < 0).any():
            raise KeyError(f"unknown user ids {user_ids[u < 0][:5]}")
        cut_ts = np.asarray(cut_ts, np.int64)
        g = np.searchsorted(self.key, (u.astype(np.int64) << 34) + cut_ts)  # first row at/after the cut
        s, e = self.starts[u], self.ends[u]
        H = self.max_history
        cols: dict[str, object] = {"user_id": user_ids.astype(np.int64), "cut_ts": cut_ts,
                                   "split": np.full(len(u), split, dtype=object)}
        for name, rows in (("neg", self.neg_rows), ("pos", self.pos_rows)):
            hi = np.searchsorted(rows, g)
            lo = np.maximum(np.searchsorted(rows, s), hi - H)
            cols[f"{name}_items"] = _ragged(self.items[rows], lo, hi)
            cols[f"{name}_ts"] = _ragged(self.ts[rows], lo, hi)
            codes = _ragged(self.kind_codes[rows], lo, hi)
            cols[f"{name}_kinds"] = pa.LargeListArray.from_arrays(codes.offsets, self.kind_names.take(codes.values))
        lo = np.maximum(s, g - H)
        cols["mixed_items"] = _ragged(self.items, lo, g)
        cols["mixed_feedback"] = _ragged(self.fb.astype(np.int8), lo, g)
        cols["mixed_ts"] = _ragged(self.ts, lo, g)
        if with_context:
            cols["context_items"] = _ragged(self.items, s, g)
        cols["n_context"] = (g - s).astype(np.int64)
        end_limit = np.full(len(u), TS_MAX) if limit_ts is None else np.minimum(np.asarray(limit_ts, np.int64), TS_MAX)
        for h in self.horizons:
            w_end = np.minimum(cut_ts + h * DAY, end_limit)
            ge = np.maximum(np.searchsorted(self.key, (u.astype(np.int64) << 34) + w_end), g)
            # an item counts in F_H if its first negative in the log lies in the window and the
            # user never touched it before the cut
            cols[f"future_neg_h{h}"] = self._future(g, ge, cut_ts, self.is_first_neg)
            cols[f"future_pos_h{h}"] = self._future(g, ge, cut_ts, self.is_first_pos)
        nn = np.searchsorted(self.neg_rows, g)
        nn_ok = (nn < len(self.neg_rows))
        nn_row = self.neg_rows[np.minimum(nn, len(self.neg_rows) - 1)] if len(self.neg_rows) else np.zeros(len(g), int)
        nn_ok &= nn_row < e if len(self.neg_rows) else False
        cols["next_neg"] = np.where(nn_ok, self.items[nn_row] if len(self.neg_rows) else -1, -1).astype(np.int64)
        return pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in cols.items()})

    def _future(self, g, ge, cut_ts, flag):
        lengths = np.maximum(ge - g, 0)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        idx = np.repeat(g - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        cut_of = np.repeat(cut_ts, lengths)
        k = flag[idx] & (self.first_seen_ts[idx] >= cut_of)
        row = np.repeat(np.arange(len(g)), lengths)[k]
        new_off = np.r_[0, np.cumsum(np.bincount(row, minlength=len(g)))].astype(np.int64)
        return pa.LargeListArray.from_arrays(new_off, pa.array(self.items[idx][k]))


def train_cuts(log: pd.DataFrame, cuts: pd.DataFrame, cfg: SplitConfig, seed: int = 0):
    """Training cuts: every active-day start (and every `train_event_stride` events) strictly
    before the user's first evaluation cut, with at least `min_context` events before it.
    Returns (user_ids, cut_ts, limit_ts) where limit_ts is the first evaluation cut."""
    users = log["user_id"].to_numpy()
    ts = log["ts"].to_numpy()
    starts, urank = _user_bounds(users)
    pos = np.arange(len(users)) - starts[urank]
    limit = cuts["train_limit"].to_numpy()
    day = ts // DAY
    new_day = np.r_[True, (day[1:] != day[:-1]) | (users[1:] != users[:-1])]
    day_cut = np.where(new_day, day * DAY, -1)
    # a cut at the start of the day (day boundary) has `pos` events before it
    cand_ts = [day_cut[new_day]]
    cand_row = [np.flatnonzero(new_day)]
    if cfg.train_event_stride > 0:
        stride = (pos >= cfg.min_context) & ((pos - cfg.min_context) % cfg.train_event_stride == 0) & ~new_day
        # a mid-day cut sits at the event's own time; ties at that second go to the future
        cand_ts.append(ts[stride])
        cand_row.append(np.flatnonzero(stride))
    c_ts = np.concatenate(cand_ts)
    c_row = np.concatenate(cand_row)
    c_u = urank[c_row]
    # context size = events strictly before the cut time
    key = (urank.astype(np.int64) << 34) + ts
    n_before = np.searchsorted(key, (c_u.astype(np.int64) << 34) + c_ts) - starts[c_u]
    ok = (n_before >= cfg.min_context) & (c_ts < limit[c_u])
    c_u, c_ts = c_u[ok], c_ts[ok]
    order = np.lexsort((c_ts, c_u))
    c_u, c_ts = c_u[order], c_ts[order]
    keep = np.r_[True, (c_u[1:] != c_u[:-1]) | (c_ts[1:] != c_ts[:-1])][: len(c_u)]
    c_u, c_ts = c_u[keep], c_ts[keep]
    if cfg.max_train_samples_per_user > 0 and len(c_u):
        # keep each user's most recent cuts (closest to what is evaluated)
        rank_from_end = _rank_within(c_u, reverse=True)
        sel = rank_from_end < cfg.max_train_samples_per_user
        c_u, c_ts = c_u[sel], c_ts[sel]
    return users[starts][c_u], c_ts, limit[c_u]


def _rank_within(groups: np.ndarray, reverse: bool = False) -> np.ndarray:
    """0-based position of each element within its run of equal (sorted) group ids."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, len(groups)])
    r = np.arange(len(groups)) - np.repeat(starts, lengths)
    return (np.repeat(lengths, lengths) - 1 - r) if reverse else r
