"""The one canonical schema every stage reads, and the checks that guard it."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .arrays import bits, chunks, compact, take

NEGATIVE, NEUTRAL, POSITIVE = -1, 0, 1
EXPLICIT, IMPLICIT = "explicit", "implicit"
KINDS = ("hated", "skipped", "low rating", "liked", "neutral")

INTERACTION_COLUMNS = ["user_id", "item_id", "ts", "feedback", "source", "kind"]
OPTIONAL_INTERACTION_COLUMNS = ["rating", "play_time_s", "duration_s"]
ITEM_COLUMNS = ["item_id", "title", "text", "genres"]
FEATURE_PREFIX = "feat_"             # categorical item features (data.generic.feature_columns) become feat_<name>
# What is shown of an item's title or text (alignment examples, the report) is cut to this many words and
# characters: a title is a few words (ML-100K's longest 16 words, 81 characters), and a catalogue's long
# descriptions or run-on titles would otherwise make every alignment example thousands of tokens long
LABEL_WORDS, LABEL_CHARS = 32, 256


def cut_label(text: str) -> str:
    """`text` with its whitespace runs made single spaces, cut to `LABEL_WORDS` words and `LABEL_CHARS` characters."""
    return " ".join(str(text).split()[:LABEL_WORDS])[:LABEL_CHARS].strip()


def feature_columns(items: pd.DataFrame) -> list[str]:
    """The items' categorical feature columns (`feat_*`), sorted."""
    return sorted(c for c in items.columns if str(c).startswith(FEATURE_PREFIX))


SOURCE_DTYPE = pd.CategoricalDtype([EXPLICIT, IMPLICIT])
KIND_DTYPE = pd.CategoricalDtype(list(KINDS))


def source_column(implicit: np.ndarray) -> pd.Categorical:
    """The `source` column from an implicit-mask, one byte per row."""
    return pd.Categorical.from_codes(np.asarray(implicit, dtype=np.int8), dtype=SOURCE_DTYPE)


def implicit_mask(values) -> np.ndarray:
    """Rows whose `source` is implicit, from a categorical or a column of strings."""
    if isinstance(values, pd.Series):
        values = values.array
    if isinstance(values, pd.Categorical):
        cats = list(values.categories)
        if IMPLICIT not in cats:
            return np.zeros(len(values), bool)
        return np.asarray(values.codes) == cats.index(IMPLICIT)
    return np.asarray(values, dtype=object) == IMPLICIT


class DataError(ValueError):
    """Bad input data. The message names the file, and the line and field where known."""


# ---------------------------------------------------------------- where a row came from
def set_origin(df: pd.DataFrame, parts, fields: dict | None = None) -> pd.DataFrame:
    """Record where each row of a loaded frame came from, so later checks can name file and line.

    parts: [(path, first_line, n_rows, unit[, skipped_lines])], in row order; unit is "line" for
    text files (1-based line of the first row) or "row" for Parquet (1-based row); skipped_lines:
    sorted line numbers that hold no row (blank lines). fields: canonical -> file column name.
    """
    df.attrs["origin"] = {"parts": [(str(p[0]), int(p[1]), int(p[2]), p[3], list(p[4]) if len(p) > 4 else [])
                                    for p in parts], "fields": dict(fields or {})}
    return df


def line_of(first: int, i: int, skipped=()) -> int:
    """The line of data row i (0-based) when rows start at line `first` and `skipped` lines hold none."""
    line = first + i
    for b in skipped:
        if b <= line:
            line += 1
        else:
            break
    return line


def locate(origin: dict | None, row: int, fallback: str) -> str:
    """'file: line N' (or 'file: row N') for row `row` (0-based, in load order) of a loaded frame."""
    if origin:
        offset = 0
        for part in origin["parts"]:
            path, first, n, unit = part[:4]
            if row < offset + n:
                return f"{path}: {unit} {line_of(first, row - offset, part[4] if len(part) > 4 else ())}"
            offset += n
    return f"{fallback}: row {row + 1}"


def field_name(origin: dict | None, field: str) -> str:
    """The field as the file names it, plus the canonical name when they differ."""
    raw = (origin or {}).get("fields", {}).get(field, field)
    return repr(field) if raw == field else f"{raw!r} ({field})"


# ---------------------------------------------------------------- items
class ItemLookup:
    """Membership and position of item ids in a sorted id table: a direct table when the ids are
    dense enough, a binary search otherwise."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids, np.int64)
        self.lo = int(self.ids[0]) if len(self.ids) else 0
        self.hi = int(self.ids[-1]) if len(self.ids) else -1
        span = self.hi - self.lo + 1
        self.table = None
        if len(self.ids) and span <= max(8 * len(self.ids), 1 << 22):
            self.table = np.full(span, -1, np.int64 if len(self.ids) >= 1 << 31 else np.int32)
            self.table[self.ids - self.lo] = np.arange(len(self.ids))

    def position(self, values: np.ndarray) -> np.ndarray:
        """Index of each value in the table, -1 where absent (chunked: no full-size temporaries)."""
        out = np.empty(len(values), np.int64 if len(self.ids) >= 1 << 31 else np.int32)
        for a, b in chunks(len(values)):
            v = np.asarray(values[a:b], np.int64)
            inside = (v >= self.lo) & (v <= self.hi)
            if self.table is not None:
                out[a:b] = np.where(inside, self.table[np.where(inside, v - self.lo, 0)], -1)
            else:
                p = np.minimum(np.searchsorted(self.ids, v), max(len(self.ids) - 1, 0))
                out[a:b] = np.where(inside & (self.ids[p] == v), p, -1) if len(self.ids) else -1
        return out

    def known(self, values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), bool)
        for a, b in chunks(len(values)):
            out[a:b] = self.position(values[a:b]) >= 0
        return out


def clean_items(items: pd.DataFrame, source: str, require_text: bool = False, original=None):
    """Validate and sort the items table. Returns (items, rows dropped for lack of text).
    `original`: internal id -> the id as the file wrote it, for messages (an `ids.IdMap.to_original`)."""
    origin = items.attrs.get("origin")
    if "item_id" not in items.columns:
        raise DataError(f"{source}: items lack field 'item_id'")
    items = items.copy()
    for c in ("title", "text", "genres"):
        if c not in items.columns:
            items[c] = ""
        items[c] = items[c].fillna("").astype(str)
    ids = pd.to_numeric(items["item_id"], errors="coerce")
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataError(f"{locate(origin, i, source + ' (items)')}: field {field_name(origin, 'item_id')}: "
                        f"cannot parse {items['item_id'].iloc[i]!r} as an integer")
    items["item_id"] = ids.astype("int64")
    dup = items["item_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{locate(origin, i, source + ' (items)')}: field {field_name(origin, 'item_id')}: "
                        f"duplicate item id {as_written(int(items['item_id'].iloc[i]), original)}")
    n_dropped = 0
    if require_text:
        empty = (items["text"].str.strip() == "").to_numpy()
        n_dropped = int(empty.sum())
        items = items[~empty]
    return items.sort_values("item_id").reset_index(drop=True), n_dropped


def as_written(internal_id: int, original=None):
    """An internal id as the file wrote it, through `original` when ids were mapped."""
    value = original(np.array([internal_id], np.int64))[0] if original is not None else int(internal_id)
    return value.item() if hasattr(value, "item") else value


def unknown_item_error(origin, item_ids: np.ndarray, known: np.ndarray, source: str, original=None) -> DataError:
    """`original`: internal id -> the id as the file wrote it (an `ids.IdMap.to_original`)."""
    i = int(np.flatnonzero(~known)[0])
    value = as_written(int(item_ids[i]), original)
    return DataError(f"{locate(origin, i, source)}: field {field_name(origin, 'item_id')} = {value} "
                     f"is not in the items table ({int((~known).sum())} rows with unknown items)")


# ---------------------------------------------------------------- interactions
def sort_log(user: np.ndarray, ts: np.ndarray, dedupe: tuple[np.ndarray, ...] | None = None):
    """Order rows by (user, ts), ties in load order, and drop exact duplicates (rows equal in user,
    ts and every `dedupe` column). Returns (order, user, ts, n_duplicates): `order` lists the kept
    input rows in output order (None: input order, all kept); `user` and `ts` are in output order."""
    carry = {"row": np.arange(len(user))}
    names = []
    for j, c in enumerate(dedupe or ()):
        carry[f"d{j}"] = c
        names.append(f"d{j}")
    user, ts, n_dup, moved = sort_log_owned({"user": user, "ts": ts}, carry, names if dedupe is not None else None)
    return (carry["row"] if moved else None), user, ts, n_dup


def sort_log_owned(box: dict, carry: dict, dedupe: list[str] | None = None, dtypes: dict | None = None,
                   conflicts: dict | None = None):
    """Sort a log by (user, ts), ties in load order, dropping exact duplicates, with little memory.

    Takes `user` and `ts` out of `box` (so they are freed once the sort key exists) and puts every
    column of `carry` in output order, one column at a time (dtypes[name] narrows it on the way).
    Sorts once, in place, a single int64 key packing (user, ts - min ts, row) when it fits in 63
    bits: the row in the low bits keeps ties in load order, and only rows sharing user and second
    are compared on the `dedupe` columns of `carry`. Returns (user, ts, n_duplicates, moved) with ts
    as int32 when every value fits; moved is False when the input was already in order.
    `conflicts` {"key": column, "value": column}: rows sharing user, second and key but differing in
    value are found (conflicting duplicates); their input rows, sorted, come back in
    conflicts["rows"] and the first one's (user, key, ts) in conflicts["first"] (the caller refuses);
    with conflicts["rule"] == "negative" they are resolved instead (`_losers`), counted in
    conflicts["resolved"].
    """
    dtypes = dtypes or {}
    user = np.asarray(box.pop("user"))
    ts = np.asarray(box.pop("ts"))
    n = len(user)
    user_dtype = user.dtype
    umin, umax, tmin, tmax = int(user.min()), int(user.max()), int(ts.min()), int(ts.max())
    ts_dtype = np.int32 if tmin >= np.iinfo(np.int32).min and tmax <= np.iinfo(np.int32).max else np.int64
    ib, tb = bits(n - 1), bits(tmax - tmin)
    ub, uniq = bits(umax - umin), None
    if ub + tb + ib > 63:
        uniq = np.unique(user)
        ub = bits(len(uniq) - 1)
        if ub + tb + ib > 63:
            return _sort_log_lexsort(user, ts, carry, dedupe, dtypes, ts_dtype, conflicts)
    key, is_sorted = _packed_key(user, ts, uniq, umin, tmin, tb, ib)
    del user, ts
    if not is_sorted:
        key.sort()
    imask = (1 << ib) - 1
    n_dup = n_drop = 0
    if dedupe is not None or conflicts is not None:
        dropped = _drop_tied_rows(key, ib, tb, carry, dedupe, conflicts, (uniq, umin, tmin))
        if dropped is None:  # conflicting duplicates, reported in `conflicts`
            return None, None, 0, False
        key, n_dup, n_drop = dropped
    moved = not is_sorted or n_drop > 0
    _put_in_key_order(carry, key, imask, dtypes, moved)
    out_user, out_ts = _unpack_key(key, ib, tb, umin, uniq, tmin, user_dtype, ts_dtype)
    del key
    return out_user, out_ts, n_dup, moved


def _tied_positions(key: np.ndarray, ib: int) -> np.ndarray:
    """Positions in the sorted `key` whose (user, ts) equals the row before's, chunk by chunk."""
    tie = []
    for a, b in chunks(len(key)):
        a0 = max(a - 1, 0)
        g = key[a0:b] >> ib
        tie.append(np.flatnonzero(g[1:] == g[:-1]) + a0 + 1)
    return np.concatenate(tie)


def _drop_tied_rows(key: np.ndarray, ib: int, tb: int, carry: dict, dedupe: list[str] | None, conflicts: dict | None,
                    origin: tuple) -> tuple[np.ndarray, int, int] | None:
    """`sort_log_owned`'s duplicates among rows sharing user and second: (key without the dropped
    rows, exact duplicates, rows dropped), or None when `conflicts` found conflicting rows (and holds
    them). `origin`: (the user ranks' values or None, the smallest user, the smallest ts)."""
    uniq, umin, tmin = origin
    n, imask = len(key), (1 << ib) - 1
    tie = _tied_positions(key, ib)
    if not len(tie):
        return key, 0, 0
    pos = np.union1d(tie, tie - 1)
    rows = key[pos] & imask
    group = np.cumsum(~np.isin(pos, tie))
    lose = np.zeros(len(pos), bool)
    if conflicts is not None:
        clash = _clashes(group, carry, rows, conflicts)
        if len(clash) and conflicts.get("rule") == "negative":
            lose[_losers(group, carry, rows, clash, conflicts)] = True
            conflicts["resolved"] = int(lose.sum())
        elif len(clash):
            p0 = pos[clash[0]]
            hi = int(key[p0] >> (tb + ib))
            conflicts["rows"] = np.sort(rows[clash])
            conflicts["first"] = (int(uniq[hi]) if uniq is not None else hi + umin,
                                  np.asarray(carry[conflicts["key"]])[rows[clash[0]]].item(),
                                  int(((key[p0] >> ib) & ((1 << tb) - 1)) + tmin))
            return None
    frame = pd.DataFrame({"g": group, **{c: np.asarray(carry[c])[rows] for c in dedupe or ()}})
    dup = frame.duplicated().to_numpy() & ~lose if dedupe is not None else np.zeros(len(pos), bool)
    drop = pos[dup | lose]
    if len(drop):
        keep = np.ones(n, bool)
        keep[drop] = False
        key = compact(key, keep)
    return key, int(dup.sum()), len(drop)


def _packed_key(user, ts, uniq, umin: int, tmin: int, tb: int, ib: int) -> tuple[np.ndarray, bool]:
    """The int64 sort key (user rank or offset, ts - tmin, input row) of every row, built chunk by
    chunk, and whether the rows are already in key order."""
    n = len(user)
    key = np.empty(n, np.int64)
    is_sorted = True
    prev = None
    for a, b in chunks(n):
        hi = (np.searchsorted(uniq, user[a:b]) if uniq is not None else user[a:b].astype(np.int64) - umin)
        k = key[a:b]
        np.left_shift(hi.astype(np.int64, copy=False), tb + ib, out=k)
        k |= (ts[a:b].astype(np.int64) - tmin) << ib
        k |= np.arange(a, b, dtype=np.int64)
        if is_sorted:
            is_sorted = bool((k[1:] >= k[:-1]).all()) and (prev is None or prev <= k[0])
            prev = k[-1]
        del hi, k
    return key, is_sorted


def _put_in_key_order(carry: dict, key: np.ndarray, imask: int, dtypes: dict, moved: bool) -> None:
    """Every column of `carry` in output order, narrowed to dtypes[name], one column at a time."""
    if moved:  # the input row of each output row is the key's low bits: no separate order array
        for name in list(carry):
            old = carry.pop(name)
            new = np.empty(len(key), dtypes.get(name, old.dtype))
            for a, b in chunks(len(key)):
                new[a:b] = old[key[a:b] & imask]
            carry[name] = new
            del old, new
    else:
        for name, dt in dtypes.items():
            if name in carry and carry[name].dtype != dt:
                carry[name] = carry[name].astype(dt)


def _unpack_key(key: np.ndarray, ib: int, tb: int, umin: int, uniq, tmin: int, user_dtype, ts_dtype):
    """(user, ts) of every sorted key."""
    m = len(key)
    out_user = np.empty(m, user_dtype)
    out_ts = np.empty(m, ts_dtype)
    tmask = (1 << tb) - 1
    for a, b in chunks(m):
        k = key[a:b]
        hi = k >> (tb + ib)
        out_user[a:b] = uniq[hi] if uniq is not None else hi + umin
        out_ts[a:b] = ((k >> ib) & tmask) + tmin
    return out_user, out_ts


def _clashes(group: np.ndarray, carry: dict, rows: np.ndarray, conflicts: dict) -> np.ndarray:
    """Positions (into `rows`) of tied rows that share group and key but differ in value."""
    cf = pd.DataFrame({"g": group, "k": np.asarray(carry[conflicts["key"]])[rows],
                       "v": np.asarray(carry[conflicts["value"]])[rows]})
    distinct = cf.drop_duplicates()
    clash = distinct.duplicated(["g", "k"], keep=False).to_numpy()
    if not clash.any():
        return np.zeros(0, np.int64)
    bad = distinct[clash][["g", "k"]]
    return np.flatnonzero(pd.MultiIndex.from_frame(cf[["g", "k"]]).isin(pd.MultiIndex.from_frame(bad)))


def _losers(group: np.ndarray, carry: dict, rows: np.ndarray, clash: np.ndarray, conflicts: dict) -> np.ndarray:
    """Rule `negative` for conflicting duplicates: of the rows sharing user, second and key, those
    whose value is above the group's smallest (feedback: a dislike wins over a like or an exposure)."""
    df = pd.DataFrame({"g": group[clash], "k": np.asarray(carry[conflicts["key"]])[rows[clash]],
                       "v": np.asarray(carry[conflicts["value"]])[rows[clash]]})
    low = df.groupby(["g", "k"])["v"].transform("min").to_numpy()
    return clash[df["v"].to_numpy() > low]


def _sort_log_lexsort(user, ts, carry, dedupe, dtypes, ts_dtype=np.int64, conflicts=None):
    """sort_log_owned for keys too wide to pack: a stable lexsort."""
    order = np.lexsort((ts, user))
    if conflicts is not None:
        g = np.r_[0, np.cumsum((user[order][1:] != user[order][:-1]) | (ts[order][1:] != ts[order][:-1]))]
        clash = _clashes(g, carry, order, conflicts)
        if len(clash) and conflicts.get("rule") == "negative":
            lose = _losers(g, carry, order, clash, conflicts)
            conflicts["resolved"] = len(lose)
            order = np.delete(order, lose)
        elif len(clash):
            r = order[clash[0]]
            conflicts["rows"] = np.sort(order[clash])
            conflicts["first"] = (int(user[r]), np.asarray(carry[conflicts["key"]])[r].item(), int(ts[r]))
            return None, None, 0, False
    n_dup = 0
    if dedupe is not None:
        frame = pd.DataFrame({"u": user[order], "t": ts[order], **{c: np.asarray(carry[c])[order] for c in dedupe}})
        dup = frame.duplicated().to_numpy()
        n_dup = int(dup.sum())
        order = order[~dup]
    for name in list(carry):
        carry[name] = take(carry.pop(name), order, dtypes.get(name))
    return user[order], ts[order].astype(ts_dtype), n_dup, True


def check_feedback(feedback: np.ndarray, origin, source: str) -> np.ndarray:
    fb = np.asarray(feedback)
    bad = ~((fb == NEGATIVE) | (fb == NEUTRAL) | (fb == POSITIVE))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{locate(origin, i, source)}: field 'feedback' must be -1, 0 or 1, got {fb[i]!r}")
    return fb.astype(np.int8, copy=False)


def kind_codes(feedback: np.ndarray, implicit: np.ndarray, has_rating: np.ndarray | None) -> np.ndarray:
    """Codes into KINDS: hated / skipped / low rating / liked / neutral (int8, chunked)."""
    n = len(feedback)
    code = np.full(n, KINDS.index("neutral"), dtype=np.int8)
    for a, b in chunks(n):
        fb, imp, c = feedback[a:b], implicit[a:b], code[a:b]
        neg = fb == NEGATIVE
        rated = has_rating[a:b] if has_rating is not None else np.zeros(b - a, bool)
        c[neg & ~imp & ~rated] = KINDS.index("hated")
        c[neg & ~imp & rated] = KINDS.index("low rating")
        c[neg & imp] = KINDS.index("skipped")
        c[fb == POSITIVE] = KINDS.index("liked")
    return code
