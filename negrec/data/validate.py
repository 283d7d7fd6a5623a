"""Checks on a loaded log that refuse it with file, line, field, value and rule, rather than turn
it into wrong numbers. Each rule has one owner:

- `check_timestamps`: every timestamp (UTC seconds, after the loader's unit) lies in
  [1995-01-01, now + 1 year]; a value that would fit at 1000x or 1/1000x is named as mixed units
  (every value: a `ts_unit` to set), and a log whose every value is that early as relative times.
  (Parsing and int64 overflow: `timestamps.parse_ts`.)
- `check_values`: a column's values lie in a declared range or set (ratings in
  `data.ratings.min_rating..max_rating`, KuaiRand labels and flags in {0, 1}).
- ids (empty, fractional, 64-bit, strings): `ids.id_keys`.
- conflicting duplicates (same user, item and second with different feedback):
  `schema.sort_log_owned` finds them, `conflict_error` words the refusal.
- `check_splittable`: a log with no negative feedback, fewer than 2 users, or no user with a
  test cut is refused (the pipeline would otherwise run to the end on "0 test users").
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from .arrays import chunks
from .schema import NEGATIVE, DataError, field_name, locate

TS_MIN = 788_918_400  # 1995-01-01 00:00 UTC: no recommender log is older
YEAR = 365 * 86_400


def ts_max() -> int:
    return int(time.time()) + YEAR


def _date(sec: float) -> str:
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(int(sec)))
    except (OverflowError, ValueError, OSError):
        return f"year ~{1970 + sec / (YEAR + 21_600):.0f}"


def check_timestamps(ts: np.ndarray, origin, source: str) -> None:
    """Every timestamp in [1995-01-01, now + 1 year], else the first bad row is named."""
    lo, hi = TS_MIN, ts_max()
    for a, b in chunks(len(ts)):
        v = ts[a:b]
        bad = (v < lo) | (v > hi)
        if not bad.any():
            continue
        i = int(np.flatnonzero(bad)[0])
        n_bad = int(sum(int(((ts[c:d] < lo) | (ts[c:d] > hi)).sum()) for c, d in chunks(len(ts))))
        x = int(v[i])
        rule = f"before {_date(lo)}" if x < lo else f"after {_date(hi)} (now + 1 year)"
        hint = _range_hint(ts, x, every=n_bad == len(ts))
        raise DataError(f"{locate(origin, a + i, source)}: field {field_name(origin, 'ts')}: timestamp {x} s "
                        f"({_date(x)}) is {rule}: outside the plausible range{hint} "
                        f"({n_bad} such row{'s' if n_bad > 1 else ''})")


def _range_hint(ts: np.ndarray, x: int, every: bool) -> str:
    """What an implausible timestamp `x` suggests: a unit (for every value, one that brings the smallest
    and the largest into range), mixed units, or, every value being early, times relative to a start."""
    if not every:
        return _unit_hint(x, False)
    bounds = [(int(ts[c:d].min()), int(ts[c:d].max())) for c, d in chunks(len(ts))]  # one pass over the log
    smallest, largest = min(lo for lo, _ in bounds), max(hi for _, hi in bounds)
    hints = {_unit_hint(smallest, True), _unit_hint(largest, True)}
    if len(hints) == 1 and "" not in hints:
        return hints.pop()
    if largest < TS_MIN:  # e.g. seconds or day numbers since the log's start
        return ("; every timestamp is that early: relative times (seconds or days since a start)? "
                "add the start's Unix time in seconds to them")
    return _unit_hint(x, False)


TS_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}  # each 1000x finer
UNIT_NAMES, UNIT_SHORT = tuple(TS_UNIT_NAMES.values()), tuple(TS_UNIT_NAMES)


def _unit_hint(x: int, every: bool) -> str:
    """Why a timestamp read as `x` seconds is implausible, when 1e3, 1e6 or 1e9 times it would not be."""
    lo, hi = TS_MIN, ts_max()
    for steps in (1, 2, 3):
        f = 1000 ** steps
        for finer in (True, False):
            if not lo <= (x / f if finer else x * f) <= hi:
                continue
            size = f"{f:,} times too {'large' if finer else 'small'}"
            if every:
                return f"; every timestamp is {size}: set data.generic.ts_unit ({'|'.join(UNIT_SHORT)})"
            # (this unit, the others') pairs that differ by f, finest last
            pairs = [(i + steps, i) if finer else (i, i + steps) for i in range(len(UNIT_SHORT) - steps)]
            (a, b), rest = pairs[0], pairs[1:]
            others = " or " + ", ".join(f"{UNIT_SHORT[c]} among {UNIT_SHORT[d]}" for c, d in rest) if rest else ""
            return f"; a value {size} ({UNIT_NAMES[a]} among {UNIT_NAMES[b]}{others}: mixed units)?"
    return ""


def check_values(values: np.ndarray, where: Callable[[int], str], field: str, *, lo: float | None = None,
                 hi: float | None = None, allowed: tuple | None = None, rule: str = "") -> None:
    """Values in [lo, hi] or in `allowed` (NaN counts as absent, not as out of range)."""
    v = np.asarray(values)
    if v.dtype.kind not in "iufb":
        return
    present = ~np.isnan(v) if v.dtype.kind == "f" else np.ones(len(v), bool)
    bad = np.zeros(len(v), bool)
    if allowed is not None:
        bad |= present & ~np.isin(v, allowed)
    if lo is not None:
        bad |= present & (v < lo)
    if hi is not None:
        bad |= present & (v > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        want = f"one of {list(allowed)}" if allowed is not None else f"in [{lo}, {hi}]"
        x = v[i].item()
        raise DataError(f"{where(i)}: field {field}: {x!r} is out of range: must be {want}"
                        f"{' (' + rule + ')' if rule else ''} ({int(bad.sum())} such rows)")


def blank_values(frame: pd.DataFrame, source: str, columns) -> dict:
    """{field as the file names it: {"cells": how many are blank, "first": where the first is}} for
    the numeric `columns` a log may leave blank (a rule reading one is false there): said, not dropped."""
    origin, out = frame.attrs.get("origin"), {}
    for col in columns:
        if col in frame.columns:
            blank = np.flatnonzero(pd.isna(frame[col].to_numpy()))
            if len(blank):
                out[field_name(origin, col)] = {"cells": int(len(blank)), "first": locate(origin, int(blank[0]), source)}
    return out


def check_ratings(frame: pd.DataFrame, source: str, lo: float, hi: float) -> None:
    if "rating" not in frame.columns:
        return
    origin = frame.attrs.get("origin")
    check_values(frame["rating"].to_numpy(), lambda i: locate(origin, i, source), field_name(origin, "rating"),
                 lo=lo, hi=hi, rule="data.ratings.min_rating .. max_rating")


def conflict_error(origin, rows: np.ndarray, user, item, ts, source: str) -> DataError:
    """Same user, item and second with different feedback: which line, and how many such rows."""
    i = int(rows[0])
    other = locate(origin, int(rows[1]), source).rsplit(": ", 1)[-1] if len(rows) > 1 else "another row"
    return DataError(f"{locate(origin, i, source)}: field 'feedback': conflicting duplicate: user {user}, item {item} "
                     f"at ts {ts} has a different feedback on {other}; a log must not say both "
                     f"(remove one, aggregate them before loading, or set data.conflicts: negative to keep the dislike) "
                     f"({len(rows)} such rows)")


def check_splittable(feedback: np.ndarray, users: np.ndarray, n_test_users: int, source: str,
                     negative_rule: str, min_context: int, cut_unit: str) -> None:
    """Refuse a log that cannot give a single evaluable test user."""
    if not (np.asarray(feedback) == NEGATIVE).any():
        raise DataError(f"{source}: field 'feedback': no negative feedback in {len(feedback)} rows under the rule "
                        f"{negative_rule}; there is nothing to predict (check the rule or the log)")
    n_users = int(pd.unique(np.asarray(users)).size)
    if n_users < 2:
        raise DataError(f"{source}: field 'user_id': {n_users} user(s) in the log; a test split needs at least 2")
    if n_test_users == 0:
        where = {"day": "under cut_unit: day, on days before the cut's: for a log of one or a few days set "
                        "data.split.cut_unit: event",
                 "event": "under cut_unit: event, at earlier seconds than the events after it: events sharing one "
                          "timestamp cannot be cut apart",
                 "auto": "under cut_unit: auto neither day nor event cuts give one: too few events per user, or "
                         "events sharing one timestamp"}[cut_unit]
        raise DataError(f"{source}: field 'user_id': no user of {n_users} has a test cut: each needs at least "
                        f"data.split.min_context = {min_context} events before it ({where})")
