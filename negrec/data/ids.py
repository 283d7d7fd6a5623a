"""Original ids -> dense internal ids, fixed once at load time.

A log's ids may be strings (`A1XYZ`, RecBole `:token` ids), 64-bit numbers or sparse ones (1e12).
Every stage works on int64 internal ids, so `encode_ids` maps them here, once:
- integer ids that are non-negative and dense enough (max < 2^31 and at most 4 x rows + 4M) are
  kept as they are (an identity map: MovieLens, KuaiRand and every existing run keep their ids);
- anything else (strings, negative, sparse or 64-bit numbers) becomes 0..n-1 in sorted order of
  the original ids; the map is saved as data/id_map_users.parquet and data/id_map_items.parquet
  (columns `id`, `original`) and carried into predictions and the codebook export.
This module owns the id checks: an empty id, a fractional one (`196.5`) or a float beyond 2^53
(which cannot hold an exact integer) is refused with its file, line and field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import DataError, field_name, locate

# an integer as an int64 would print it: "007", "+7" and 19-digit or longer ids stay text, so that
# two ids that differ as written never become one (and the id map gives back what the log said)
_INT = re.compile(r"^(0|-?[1-9]\d{0,17})$")
_DIGITS = re.compile(r"^[+-]?\d+$")
_DENSE_SLACK = 1 << 22
_EXACT_FLOAT = 2 ** 53


@dataclass
class IdMap:
    """Internal id i <-> original[i]; `original` None: the identity (internal id = original id)."""
    original: np.ndarray | None = None

    @property
    def identity(self) -> bool:
        return self.original is None

    def to_original(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        return ids if self.original is None else self.original[ids]

    def to_internal(self, values) -> np.ndarray:
        """Internal id of each original value, -1 where unknown."""
        if self.original is None:
            return np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").fillna(-1), np.int64)
        keys = pd.Series(values)
        if self.original.dtype.kind == "O":
            keys = keys.astype(str)
        return pd.Index(self.original).get_indexer(keys.to_numpy()).astype(np.int64)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"id": np.arange(len(self.original), dtype=np.int64), "original": self.original})

    def save(self, path) -> None:
        from ..io import write_parquet

        if self.original is not None:
            write_parquet(Path(path), self.frame())

    @classmethod
    def load(cls, path) -> "IdMap":
        path = Path(path)
        if not path.exists():
            return cls()
        orig = pd.read_parquet(path)["original"]
        return cls(orig.to_numpy(object if orig.dtype.kind not in "iu" else np.int64))


def canonical_ints(values: pd.Series) -> pd.Series:
    """A text id column as int64 when every id is written as an int64 prints it, else as it is
    (a column already numeric is returned as it is)."""
    if values.dtype.kind in "iuf":
        return values
    text = values.astype(str).str.strip()
    return text.astype(np.int64) if len(text) and text.str.match(_INT).all() else values


def _where(origin, source: str):
    return lambda i: locate(origin, i, source)


# the spellings of a missing value pandas and spreadsheets write (the tables are read with
# keep_default_na=False, so none of them becomes NaN on its own)
MISSING_WORDS = frozenset({"nan", "na", "n/a", "null", "none", "<na>", "nat", "#n/a"})


def id_keys(values, origin, source: str, field: str) -> np.ndarray:
    """An id column as int64 keys, or str keys when any id is not an integer literal.
    Refuses empty ids, fractional ids and floats too large to be exact, naming file/line/field."""
    v = np.asarray(values)
    where, name = _where(origin, source), field_name(origin, field)
    if v.dtype.kind == "b":
        return v.astype(np.int64)
    if v.dtype.kind == "u":
        return v.astype(np.int64) if not len(v) or v.max() <= np.iinfo(np.int64).max else v.astype(str).astype(object)
    if v.dtype.kind == "i":
        return v  # int32 stays int32: a 10M-row log is not widened here
    if v.dtype.kind == "f":
        return _float_keys(v, v, where, name)
    s = pd.Series(v, dtype=object)
    text = s.astype(str).str.strip()
    blank = s.isna().to_numpy() | (text == "").to_numpy()
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(f"{where(i)}: field {name} is empty (every row needs an id)")
    missing = text.str.lower().isin(MISSING_WORDS).to_numpy()  # what a CSV writer prints for a missing value
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"{where(i)}: field {name}: id {text.iloc[i]!r} reads as a missing value, not an id "
                        f"({int(missing.sum())} such rows)")
    ints = canonical_ints(text)
    if ints.dtype.kind == "i":
        return ints.to_numpy()
    if text.str.match(_DIGITS).all():
        return text.to_numpy(object)
    num = pd.to_numeric(text, errors="coerce")
    if num.notna().all():  # every id is a number, some not written as an integer: 196.5, 1e12
        return _float_keys(num.to_numpy("float64"), v, where, name)
    return text.to_numpy(object)


def _float_keys(f: np.ndarray, raw, where, name) -> np.ndarray:
    bad = np.isnan(f)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where(i)}: field {name} is empty (every row needs an id)")
    frac = f != np.floor(f)
    if frac.any():
        i = int(np.flatnonzero(frac)[0])
        raise DataError(f"{where(i)}: field {name}: id {_plain(raw[i])!r} is fractional; ids must be integers or strings "
                        f"({int(frac.sum())} such rows)")
    big = np.abs(f) >= _EXACT_FLOAT
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise DataError(f"{where(i)}: field {name}: id {_plain(raw[i])!r} is a float beyond 2^53, which cannot hold an exact "
                        f"integer id; store ids as integers or strings")
    return f.astype(np.int64)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _is_dense(keys: np.ndarray) -> bool:
    if keys.dtype.kind != "i" or not len(keys):
        return False
    lo, hi = int(keys.min()), int(keys.max())
    return lo >= 0 and hi < 2 ** 31 and hi <= 4 * len(keys) + _DENSE_SLACK


def _harmonize(*keys: np.ndarray) -> list[np.ndarray]:
    """Int keys and str keys of the same ids (a log of strings, an items table read as numbers): all str."""
    if all(k.dtype.kind == "i" for k in keys) or all(k.dtype.kind == "O" for k in keys):
        return list(keys)
    return [k.astype(str).astype(object) if k.dtype.kind == "i" else k for k in keys]


def dense_map(*keys: np.ndarray) -> tuple[IdMap, list[np.ndarray]]:
    """One map over every key array (a log's item ids and its items table share one); returns the
    map and each array in internal ids."""
    keys = _harmonize(*keys)
    if all(_is_dense(k) for k in keys if len(k)):
        return IdMap(), keys
    uniq = pd.unique(np.concatenate(keys))
    uniq = np.sort(uniq.astype(np.int64) if keys[0].dtype.kind == "i" else uniq.astype(object))
    index = pd.Index(uniq)
    return IdMap(uniq), [index.get_indexer(k).astype(np.int64) for k in keys]


def encode_ids(inter: pd.DataFrame, items: pd.DataFrame, source: str) -> dict[str, IdMap]:
    """Replace user_id and item_id of the loaded log (and item_id of its items table) by internal
    ids, in place; returns {"users": IdMap, "items": IdMap}."""
    iorigin, torigin = inter.attrs.get("origin"), items.attrs.get("origin")
    users = id_keys(inter["user_id"].to_numpy(), iorigin, source, "user_id")
    log_items = id_keys(inter["item_id"].to_numpy(), iorigin, source, "item_id")
    table_items = id_keys(items["item_id"].to_numpy(), torigin, source + " (items)", "item_id")
    umap, (ucodes,) = dense_map(users)
    imap, (lcodes, tcodes) = dense_map(log_items, table_items)
    inter["user_id"] = ucodes
    inter["item_id"] = lcodes
    items["item_id"] = tcodes
    return {"users": umap, "items": imap}
