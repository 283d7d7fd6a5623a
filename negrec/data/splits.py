"""Chronological per-user cuts, and the samples later stages read.

The context of a cut is everything the user did strictly before it; F_H is the set of items the
user gives negative feedback to in [cut, cut + H days), minus items already in the context.
Everything is vectorised over the whole log (it is sorted by user, then time): no Python loop per
user.

`cut_unit: day` (default): a cut is the start (00:00 UTC) of one of the user's active days. The
test cut of a user with n events is the earliest active-day start b (not the first day) with at
least `test_frac * n` events before b; if none, the last active-day start. The valid cut applies
the same rule with `valid_frac` among day starts before the test cut.

`cut_unit: event` (bursty logs such as MovieLens, where most users have one active day and so no
day cut): the test cut sits at the timestamp of the user's event at 0-based position
ceil(test_frac * n), a mid-day cut whose ties at that second go to the future; the valid cut is the
event at position ceil(valid_frac * m), m the events before the test cut.

`cut_unit: auto` (`resolve_cut_unit`, `configs/generic.yaml`'s setting): the data stage counts the users
each unit gives a test cut and takes day cuts unless they give fewer than half as many as event cuts.

Either way a cut needs at least `min_context` events strictly before it, else the user has no such
cut (-1); `global_test_date` / `global_valid_date` override the per-user rule. With
`rolling_every` > 0 the test split also holds extra cuts every that many events after the test cut
(`cuts_for_test`), each scored on its own F_H; models are still fitted on pre-test-cut events only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from .arrays import CHUNK, bits, chunks, expand, narrow_int, rank_within, run_starts, seek
from .schema import NEGATIVE, POSITIVE

DAY = 86400
TS_MAX = (1 << 34) - 1  # "no limit" for cut and window ends (far beyond any real timestamp)
_NEVER = np.iinfo(np.int64).max
CUT_UNITS = ("day", "event")
# `cut_unit: auto` takes day cuts unless they give fewer than this share of the test users event cuts
# give: on a bursty log (ML-100K: 338 of 943, most users rate in one sitting) day cuts drop most users
AUTO_DAY_SHARE = 0.5


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
    cut_unit: str = "day"        # day: 00:00 UTC of an active day | event: at an event's own time (bursty logs)
                                 # | auto: the data stage picks one from the log (`resolve_cut_unit`)
    rolling_every: int = 0       # >0: extra test cuts every N events after the test cut (growing context)
    rolling_max: int = 0         # most extra test cuts per user (0: no limit)

    def __post_init__(self):
        check_split_config(self)


def check_split_config(cfg: SplitConfig) -> None:
    if cfg.cut_unit not in (*CUT_UNITS, "auto"):
        raise ValueError(f"data.split.cut_unit: {cfg.cut_unit!r} is not one of {'|'.join(CUT_UNITS)}|auto")
    for name in ("rolling_every", "rolling_max", "min_context", "train_event_stride", "max_train_samples_per_user"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"data.split.{name}: must be >= 0, got {getattr(cfg, name)}")
    for name in ("test_frac", "valid_frac"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise ValueError(f"data.split.{name}: must be in (0, 1), got {getattr(cfg, name)}")
    if cfg.max_history <= 0:
        raise ValueError(f"data.split.max_history: must be > 0, got {cfg.max_history}")
    for name in ("global_test_date", "global_valid_date"):
        value = getattr(cfg, name)
        if value:
            try:
                pd.Timestamp(value)
            except (ValueError, TypeError) as e:
                raise ValueError(f"data.split.{name}: {value!r} is not a date (YYYY-MM-DD)") from e


def _bounds(users: np.ndarray):
    """Start and end offset of each user's run in the sorted log."""
    starts = run_starts(users)
    return starts, np.r_[starts[1:], len(users)].astype(np.int64)


def _day_starts(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Rows that open a later active day of their user (the user's first row excluded)."""
    out = []
    for a, b in chunks(len(users)):
        a0 = max(a - 1, 0)
        d, u = ts[a0:b] // DAY, users[a0:b]
        out.append(np.flatnonzero((d[1:] != d[:-1]) & (u[1:] == u[:-1])) + a0 + 1)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def resolve_cut_unit(log: pd.DataFrame, cfg: SplitConfig) -> tuple[SplitConfig, dict]:
    """`cut_unit: auto`: day cuts, unless fewer than `AUTO_DAY_SHARE` of the users that event cuts give a
    test cut would get one (a bursty log, where most users are active on one day or two; with a
    `global_test_date`, a validation cut). Returns the config with the unit chosen and the counts
    behind the choice ({} when the unit was written)."""
    if cfg.cut_unit != "auto":
        return cfg, {}
    users = users_with_test_cut(log, cfg)
    unit = "event" if day_cuts_drop_most(users) else "day"
    return replace(cfg, cut_unit=unit), {"chosen": unit, "counted": counted_cut(cfg),
                                         **{f"test_users_{u}": n for u, n in users.items()}}


def counted_cut(cfg: SplitConfig) -> str:
    """The cut whose users tell the units apart: the test cut, or with a `global_test_date` (one test
    cut for every user, whatever the unit) the validation cut."""
    return "validation" if cfg.global_test_date else "test"


def users_with_test_cut(log: pd.DataFrame, cfg: SplitConfig, units=CUT_UNITS) -> dict[str, int]:
    """{unit: users that unit's cuts give a `counted_cut`}."""
    cut = "valid_cut" if counted_cut(cfg) == "validation" else "test_cut"
    return {unit: int((compute_cuts(log, replace(cfg, cut_unit=unit))[cut] >= 0).sum()) for unit in units}


def day_cuts_drop_most(users: dict[str, int]) -> bool:
    """Day cuts give fewer than `AUTO_DAY_SHARE` of the users event cuts give: a bursty log."""
    return users["day"] < AUTO_DAY_SHARE * users["event"]


def compute_cuts(log: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Per-user valid and test cuts (UTC seconds, or -1) and the limits of what fitted models see."""
    check_split_config(cfg)
    if cfg.cut_unit == "auto":
        raise ValueError("data.split.cut_unit: auto is chosen from the log first (`resolve_cut_unit`)")
    users = log["user_id"].to_numpy()
    ts = log["ts"].to_numpy()
    starts, ends = _bounds(users)
    n_users = len(starts)
    counts = ends - starts
    # frac_cut(frac, n, limit) -> (cut, events before it). Event cuts take frac of the n events
    # given (all, or those before the test cut); day cuts keep their rule: frac of all the user's
    # events, among day starts before `limit`.
    if cfg.cut_unit == "event":
        def frac_cut(frac, n, limit):
            return _event_cut(ts, starts, ends, n, frac)
    else:
        c_idx = _day_starts(users, ts)  # first event of a later active day: a day boundary with a past
        c_user = np.searchsorted(starts, c_idx, side="right") - 1
        c_pos, c_ts = c_idx - starts[c_user], (ts[c_idx] // DAY) * DAY

        def frac_cut(frac, n, limit):
            return _frac_cut(c_user, c_pos, c_ts, counts, frac, n_users, limit=limit)

    if cfg.global_test_date:
        test_cut = np.full(n_users, _date_ts(cfg.global_test_date))
        before_test = seek(ts, starts, ends, test_cut) - starts
    else:
        test_cut, before_test = frac_cut(cfg.test_frac, counts, np.full(n_users, _NEVER))
    test_cut = np.where(before_test >= cfg.min_context, test_cut, -1)
    if cfg.global_valid_date:
        valid_cut = np.full(n_users, _date_ts(cfg.global_valid_date))
        before_valid = seek(ts, starts, ends, valid_cut) - starts
    else:
        limit = np.where(test_cut >= 0, test_cut, _NEVER)
        valid_cut, before_valid = frac_cut(cfg.valid_frac, np.where(test_cut >= 0, before_test, 0), limit)
    valid_cut = np.where((before_valid >= cfg.min_context) & (test_cut >= 0) & (valid_cut < test_cut), valid_cut, -1)
    # what fitted models may see: before the first evaluation cut (train/valid) or the test cut
    # (test). With global dates that bound holds for every user, evaluated or not; with a global
    # test date alone, each user's own valid cut bounds train/valid (validation futures stay unseen)
    never = np.full(n_users, TS_MAX)
    test_limit = (np.full(n_users, _date_ts(cfg.global_test_date)) if cfg.global_test_date
                  else np.where(test_cut >= 0, test_cut, never))
    if cfg.global_valid_date:
        train_limit = np.full(n_users, _date_ts(cfg.global_valid_date))
    else:
        train_limit = np.where(valid_cut >= 0, valid_cut, test_limit)
    return pd.DataFrame({"user_id": users[starts].astype("int64"), "valid_cut": valid_cut.astype("int64"),
                         "test_cut": test_cut.astype("int64"), "train_limit": train_limit.astype("int64"),
                         "test_limit": test_limit.astype("int64"), "n_events": counts.astype("int64")})


def _event_cut(ts, starts, ends, n, frac):
    """Per user, a cut at the time of the event at 0-based position ceil(frac * n) (about frac * n
    events before it) among the user's first n events; -1 where there is no such event. Returns
    (cut, events strictly before the cut): ties at the cut's second go to the future, so that count
    can be below the position and is what min_context is checked against."""
    # rounded first: 0.28 * 25 is 7.000000000000001 in floating point, position 7 all the same
    pos = np.ceil(np.round(frac * n, 6)).astype(np.int64)
    has = pos < n
    row = np.minimum(starts + pos, max(len(ts) - 1, 0))
    cut = np.where(has, ts[row] if len(ts) else row, -1).astype(np.int64)
    before = seek(ts, starts, ends, cut) - starts
    return cut, np.where(has, before, 0)


def _date_ts(date: str) -> int:
    return int(pd.Timestamp(date, tz="UTC").value // 10**9)


def _frac_cut(c_user, c_pos, c_ts, counts, frac, n_users, limit):
    """Day cuts: the first candidate day start before `limit` with at least frac * counts events
    before it, else the last one; (cut, events before it) per user, -1 where no candidate."""
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
def _index_dtype(n: int):
    return np.int32 if n < 1 << 31 else np.int64


def _lists(lo: np.ndarray, length: np.ndarray, values: np.ndarray, through: np.ndarray | None = None,
           typ=pa.int64(), names: pa.Array | None = None) -> pa.LargeListArray:
    """A list column whose row r holds values[lo[r] : lo[r] + length[r]] (through an index array
    when given), built without a Python loop."""
    length = np.maximum(length, 0)
    offsets = np.zeros(len(length) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    idx = expand(lo, length)
    flat = values[through[idx] if through is not None else idx]
    del idx
    if names is not None:
        arr = pa.DictionaryArray.from_arrays(pa.array(flat.astype(np.int32)), names).cast(typ)
    else:
        arr = pa.array(flat.astype(typ.to_pandas_dtype(), copy=False), typ)
    return pa.LargeListArray.from_arrays(pa.array(offsets), arr)


class _Log:
    """The sorted log's arrays that samples point into (shared with the interactions frame)."""

    def __init__(self, log: pd.DataFrame, max_history: int):
        self.users = log["user_id"].to_numpy()
        self.items = log["item_id"].to_numpy()
        self.ts = log["ts"].to_numpy()
        self.fb = log["feedback"].to_numpy()
        kind = log["kind"].array if isinstance(log["kind"].dtype, pd.CategoricalDtype) else pd.Categorical(log["kind"])
        self.kind_codes = np.asarray(kind.codes)
        self.kind_names = pa.array([str(c) for c in kind.categories], pa.string())
        self.starts, self.ends = _bounds(self.users)
        self.idx_dtype = _index_dtype(len(self.users))
        self.rows = {"neg": np.flatnonzero(self.fb == NEGATIVE).astype(self.idx_dtype),
                     "pos": np.flatnonzero(self.fb == POSITIVE).astype(self.idx_dtype)}
        self.max_history = max_history


class SampleTable:
    """The samples of one split, held compactly: per sample the user's index in the log, the first
    row at/after the cut, the cut, the target limit, the next negative, and the F_H candidates of
    the largest H. Histories, contexts and F_H lists are windows of the shared log, so they are
    materialised only when asked for: `column(name)` gives one column and `to_arrow()` the table of
    the on-disk schema (int64 scalars, large_list<int64> items and timestamps, ...)."""

    def __init__(self, log: _Log, split: str, u, g, cut_ts, limit, next_neg, future: dict, horizons,
                 with_context: bool = True):
        self.log, self.split = log, split
        self.u, self.g, self.cut_ts, self.limit, self.next_neg = u, g, cut_ts, limit, next_neg
        self.future = future  # "neg"/"pos" -> (offsets, index into log.rows[side]) for the largest H
        self.horizons = list(horizons)
        names = ["user_id", "cut_ts", "split", "neg_items", "neg_ts", "neg_kinds", "pos_items", "pos_ts",
                 "pos_kinds", "mixed_items", "mixed_feedback", "mixed_ts"]
        names += ["context_items"] if with_context else []
        names += ["n_context"]
        for h in self.horizons:
            names += [f"future_neg_h{h}", f"future_pos_h{h}"]
        self.column_names = names + ["next_neg"]

    def __len__(self) -> int:
        return len(self.u)

    @property
    def num_rows(self) -> int:
        return len(self)

    @property
    def nbytes(self) -> int:
        """Bytes held by this split alone (the log's arrays it points into not counted)."""
        arrays = [self.u, self.g, self.cut_ts, self.next_neg, *(a for f in self.future.values() for a in f)]
        return sum(a.nbytes for a in arrays) + (self.limit.nbytes if self.limit is not None else 0)

    def to_arrow(self) -> pa.Table:
        return pa.table({name: self.column(name) for name in self.column_names})

    def column(self, name: str) -> pa.Array:
        if name not in self.column_names:
            raise KeyError(name)
        L = self.log
        s = L.starts[self.u]
        g = self.g.astype(np.int64)
        if name == "user_id":
            return pa.array(L.users[s].astype(np.int64))
        if name == "cut_ts":
            return pa.array(self.cut_ts.astype(np.int64))
        if name == "split":
            return pa.repeat(pa.scalar(self.split, pa.string()), len(self))
        if name == "n_context":
            return pa.array(g - s)
        if name == "next_neg":
            return pa.array(self.next_neg.astype(np.int64))
        if name == "context_items":
            return _lists(s, g - s, L.items)
        H = L.max_history
        side, _, what = name.partition("_")
        if side in ("neg", "pos"):
            rows = L.rows[side]
            hi = np.searchsorted(rows, g.astype(rows.dtype))
            lo = np.maximum(np.searchsorted(rows, s.astype(rows.dtype)), hi - H)
            if what == "kinds":
                return _lists(lo, hi - lo, L.kind_codes, rows, pa.string(), L.kind_names)
            return _lists(lo, hi - lo, L.items if what == "items" else L.ts, rows)
        if side == "mixed":
            lo = np.maximum(s, g - H)
            if what == "feedback":
                return _lists(lo, g - lo, L.fb, typ=pa.int8())
            return _lists(lo, g - lo, L.items if what == "items" else L.ts)
        # future_{neg,pos}_h{H}: the candidates of the largest H, cut at this H's window end
        _, side, h = name.split("_")
        h = int(h[1:])
        offsets, j = self.future[side]
        counts = np.diff(offsets)
        r = np.repeat(np.arange(len(self), dtype=np.int32), counts)
        end = self.cut_ts.astype(np.int64) + h * DAY
        if self.limit is not None:
            end = np.minimum(end, self.limit)
        rows = L.rows[side][j]
        keep = L.ts[rows] < end[r]
        out = np.zeros(len(self) + 1, np.int64)
        np.cumsum(np.bincount(r[keep], minlength=len(self)), out=out[1:])
        return pa.LargeListArray.from_arrays(pa.array(out), pa.array(L.items[rows[keep]].astype(np.int64)))


class SampleBuilder:
    """Precomputed indexes over a sorted log so that samples for many cuts are cheap."""

    def __init__(self, log: pd.DataFrame, horizons: list[int], max_history: int):
        self.horizons = list(horizons)
        self.max_history = max_history
        self.log = _Log(log, max_history)
        L = self.log
        self.users, self.items, self.ts, self.fb = L.users, L.items, L.ts, L.fb
        self.starts, self.ends = L.starts, L.ends
        self.user_index = pd.Index(self.users[self.starts])
        # first-seen time of each negative (positive) row's (user, item) pair when the row is the
        # pair's first negative (positive), else a sentinel below any cut: F_H needs nothing else
        ts_dtype = np.int32 if self.ts.dtype.itemsize <= 4 else np.int64
        self._not_first = np.iinfo(ts_dtype).min
        self.first_seen = {k: np.full(len(r), self._not_first, ts_dtype) for k, r in L.rows.items()}
        self._first_seen()

    def _first_seen(self):
        """One in-place sort of a packed (user, item, row) key per block of whole users (a few
        hundred thousand rows): no log-sized temporaries, no hashing of (user, item) pairs."""
        n = len(self.users)
        if n == 0:
            return
        imin, imax = int(self.items.min()), int(self.items.max())
        direct = bits(imax - imin) <= 28
        cut = np.unique(np.r_[self.starts[np.searchsorted(self.starts, np.arange(0, n, CHUNK // 4), side="right") - 1], n])
        for a, b in zip(cut[:-1], cut[1:]):
            u, it = self.users[a:b], self.items[a:b]
            lu = np.cumsum(np.r_[0, u[1:] != u[:-1]], dtype=np.int64)
            code = (it.astype(np.int64) - imin) if direct else pd.factorize(it)[0].astype(np.int64)
            ub, cb, rb = bits(int(lu[-1])), bits(int(code.max())), bits(b - a - 1)
            if ub + cb + rb <= 63:
                key = (lu << (cb + rb)) | (code << rb) | np.arange(b - a, dtype=np.int64)
                key.sort()
                srow = key & ((1 << rb) - 1)
                key >>= rb
                new_pair = np.r_[True, key[1:] != key[:-1]]
                del key
            else:
                srow = np.lexsort((np.arange(b - a), code, lu))
                new_pair = np.r_[True, (lu[srow][1:] != lu[srow][:-1]) | (code[srow][1:] != code[srow][:-1])]
            del lu, code
            gid = np.cumsum(new_pair) - 1
            first_ts = self.ts[a + srow[new_pair]]  # rows are time-sorted: a pair's first row is its first touch
            sfb = self.fb[a + srow]
            for name, value in (("neg", NEGATIVE), ("pos", POSITIVE)):
                p = np.flatnonzero(sfb == value)
                g = gid[p]
                first = p[np.r_[True, g[1:] != g[:-1]]] if len(p) else p
                rows = self.log.rows[name]
                at = np.searchsorted(rows, (a + srow[first]).astype(rows.dtype))
                self.first_seen[name][at] = first_ts[gid[first]]

    def _seek(self, u, t):
        """First row of user u at or after time t."""
        return seek(self.ts, self.starts[u], self.ends[u], t)

    def build(self, user_ids: np.ndarray, cut_ts: np.ndarray, split: str, limit_ts: np.ndarray | None = None,
              with_context: bool = True) -> SampleTable:
        """Samples for (user, cut) pairs. Future windows and the next negative end at `limit_ts`
        (targets never cross into the period a later split evaluates)."""
        user_ids = np.asarray(user_ids)
        u = self.user_index.get_indexer(user_ids)
        if (u < 0).any():
            raise KeyError(f"unknown user ids {user_ids[u < 0][:5]}")
        R = len(u)
        dt = self.log.idx_dtype
        cut_ts = np.asarray(cut_ts, np.int64)
        g = self._seek(u, cut_ts)  # first row at/after the cut
        e = self.ends[u]
        limit = None if limit_ts is None else np.minimum(np.asarray(limit_ts, np.int64), TS_MAX)
        # F_H candidates: rows whose (user, item) pair has its first negative (positive) in
        # [cut, min(cut + max H days, limit)) and was never touched before the cut. The largest
        # window is expanded once, over negative (positive) rows only; each H filters it by time.
        hmax = max(self.horizons) if self.horizons else 0
        w_end = cut_ts + hmax * DAY if limit is None else np.minimum(cut_ts + hmax * DAY, limit)
        g_end = self._seek(u, np.maximum(w_end, cut_ts))
        future = {}
        for name in ("neg", "pos"):
            rows = self.log.rows[name]
            lo = np.searchsorted(rows, g.astype(dt))
            hi = np.searchsorted(rows, g_end.astype(dt))
            keep_j, counts = [], np.zeros(R, np.int64)
            for a, b in chunks(R, CHUNK // 32):  # bounded temporaries however long the windows
                j = expand(lo[a:b], hi[a:b] - lo[a:b])
                r = np.repeat(np.arange(a, b), hi[a:b] - lo[a:b])
                ok = self.first_seen[name][j] >= cut_ts[r]
                keep_j.append(j[ok].astype(dt))
                counts[a:b] = np.bincount(r[ok] - a, minlength=b - a)
            offsets = np.zeros(R + 1, dt if counts.sum() < 1 << 31 else np.int64)
            np.cumsum(counts, out=offsets[1:])
            future[name] = (offsets, np.concatenate(keep_j) if keep_j else np.zeros(0, dt))
        # the very next negative after the cut, within the same bound as the targets
        rows = self.log.rows["neg"]
        if len(rows):
            nxt = np.searchsorted(rows, g.astype(dt))
            row = rows[np.minimum(nxt, len(rows) - 1)]
            ok = (nxt < len(rows)) & (row < e)
            if limit is not None:
                ok &= self.ts[row] < limit
            next_neg = np.where(ok, self.items[row], -1).astype(self.items.dtype)
        else:
            next_neg = np.full(R, -1, np.int32)
        return SampleTable(self.log, split, u.astype(np.int32), g.astype(dt), narrow_int(cut_ts), limit, next_neg,
                           future, self.horizons, with_context)


def cuts_for_test(log: pd.DataFrame, cuts: pd.DataFrame, cfg: SplitConfig):
    """The test split's (user_ids, cut_ts), sorted by user then time: each user's test cut and, with
    `rolling_every` = N > 0, extra cuts at the events N, 2N, ... positions after it (at most
    `rolling_max` per user when > 0). Like every mid-day cut, an extra cut sits at its event's own
    time and ties at that second go to the future; a cut falling on the second of an earlier one
    is dropped, so cut times strictly increase."""
    uid, test = cuts["user_id"].to_numpy(), cuts["test_cut"].to_numpy()
    has = test >= 0
    if cfg.rolling_every <= 0 or not has.any():
        return uid[has].astype(np.int64), test[has].astype(np.int64)
    users, ts = log["user_id"].to_numpy(), log["ts"].to_numpy()
    starts, ends = _bounds(users)
    u = pd.Index(users[starts]).get_indexer(uid[has])
    t0 = test[has].astype(np.int64)
    first = seek(ts, starts[u], ends[u], t0)  # first event at/after the test cut
    n_extra = np.maximum(ends[u] - 1 - first, 0) // cfg.rolling_every
    r = np.repeat(np.arange(len(u)), n_extra)
    k = expand(np.ones(len(u), np.int64), n_extra)  # 1..n_extra per user
    cut = ts[first[r] + k * cfg.rolling_every].astype(np.int64)
    prev = t0[r]  # the cut before each candidate: the test cut, or the user's previous candidate
    later = np.flatnonzero(r[1:] == r[:-1]) + 1
    prev[later] = cut[later - 1]
    keep = cut > prev  # candidates are time-sorted per user: this drops repeats and test-cut ties
    r, cut = r[keep], cut[keep]
    if cfg.rolling_max > 0:
        sel = rank_within(r) < cfg.rolling_max
        r, cut = r[sel], cut[sel]
    all_u = np.r_[np.arange(len(u)), r]
    all_t = np.r_[t0, cut]
    order = np.lexsort((all_t, all_u))
    return uid[has][all_u[order]].astype(np.int64), all_t[order]


def train_cuts(log: pd.DataFrame, cuts: pd.DataFrame, cfg: SplitConfig, seed: int = 0):
    """Training cuts: every active-day start (and every `train_event_stride` events) strictly
    before the user's first evaluation cut, with at least `min_context` events before it.
    Returns (user_ids, cut_ts, limit_ts) where limit_ts is the first evaluation cut."""
    users = log["user_id"].to_numpy()
    ts = log["ts"].to_numpy()
    starts, ends = _bounds(users)
    limit = cuts["train_limit"].to_numpy()
    # a cut at the start of an active day has exactly the user's earlier rows before it; day-start
    # rows come in (user, time) order, so the candidates need no sort
    day_rows = _day_starts(users, ts)
    if cfg.min_context <= 0:  # a cut before the user's first day has an empty context: allowed then
        day_rows = np.union1d(starts, day_rows)
    c_u = np.searchsorted(starts, day_rows, side="right") - 1
    ok = day_rows - starts[c_u] >= cfg.min_context
    day_rows, c_u = day_rows[ok], c_u[ok]
    c_ts = (ts[day_rows] // DAY).astype(np.int64) * DAY
    del day_rows
    ok = c_ts < limit[c_u]
    c_u, c_ts = c_u[ok], c_ts[ok]
    if cfg.train_event_stride > 0:
        stride = []
        for a, b in chunks(len(users)):
            rows = np.arange(a, b)
            pos = rows - starts[np.searchsorted(starts, rows, side="right") - 1]
            stride.append(rows[(pos >= cfg.min_context) & ((pos - cfg.min_context) % cfg.train_event_stride == 0)])
        stride = np.concatenate(stride)
        su = np.searchsorted(starts, stride, side="right") - 1
        # rows that open an active day already gave a day-boundary cut
        opens_day = (stride == starts[su]) | (ts[stride] // DAY != ts[np.maximum(stride - 1, 0)] // DAY)
        stride, su = stride[~opens_day], su[~opens_day]
        # a mid-day cut sits at the event's own time; ties at that second go to the future
        st = ts[stride].astype(np.int64)
        n_before = seek(ts, starts[su], ends[su], st) - starts[su]
        ok = (n_before >= cfg.min_context) & (st < limit[su])
        c_u, c_ts = np.r_[c_u, su[ok]], np.r_[c_ts, st[ok]]
        order = np.lexsort((c_ts, c_u))
        c_u, c_ts = c_u[order], c_ts[order]
        keep = np.r_[True, (c_u[1:] != c_u[:-1]) | (c_ts[1:] != c_ts[:-1])][: len(c_u)]
        c_u, c_ts = c_u[keep], c_ts[keep]
    if cfg.max_train_samples_per_user > 0 and len(c_u):
        # keep each user's most recent cuts (closest to what is evaluated)
        sel = rank_within(c_u, reverse=True) < cfg.max_train_samples_per_user
        c_u, c_ts = c_u[sel], c_ts[sel]
    return users[starts][c_u].astype(np.int64), c_ts.astype(np.int64), limit[c_u]

