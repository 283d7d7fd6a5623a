"""Predictions files checked against the targets before they are scored, and original ids out.

A predictions file (user_id, cut_ts, rank, item_id[, score]) is refused, naming the file, the row
and the field, when a column is missing, an id or rank is empty (NaN), not an integer, negative,
or repeated within a (user_id, cut_ts) row; and when none of its (user_id, cut_ts) pairs is one
of the targets' (an off-by-one cut, another run's users) or none of its items is in the log.
A partial match is scored and reported as one warning line with the counts.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from ..data.ids import IdMap
from ..data.schema import DataError

PRED_COLUMNS = ("user_id", "cut_ts", "rank", "item_id")
ORIGINAL = {"user_id": "original_user_id", "item_id": "original_item_id"}


def with_original_ids(pred: pd.DataFrame, id_maps: dict | None) -> pd.DataFrame:
    """`original_user_id` / `original_item_id` beside the internal ids where the run mapped its ids
    (strings, 64-bit or sparse ids of the log): predictions name users and items as the log does."""
    if not id_maps:
        return pred
    out = pred.copy()
    for col, kind in (("user_id", "users"), ("item_id", "items")):
        m = id_maps.get(kind) or IdMap()
        if not m.identity:
            out[ORIGINAL[col]] = m.to_original(out[col].to_numpy())
    return out


def _int_column(pred: pd.DataFrame, col: str, path) -> np.ndarray:
    v = pred[col]
    if v.dtype.kind in "iu":
        return v.to_numpy(np.int64)
    num = pd.to_numeric(v, errors="coerce") if v.dtype.kind != "f" else v
    bad = num.isna().to_numpy() | (num.to_numpy(dtype=float) != np.floor(num.to_numpy(dtype=float)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = v.iloc[i].item() if hasattr(v.iloc[i], "item") else v.iloc[i]  # 1.5, not np.float64(1.5)
        what = "is empty (NaN)" if pd.isna(value) else f"{value!r} is not an integer id"
        raise DataError(f"{path}: row {i + 1}: field {col!r} {what} ({int(bad.sum())} such rows)")
    return num.to_numpy(dtype=float).astype(np.int64)


def _to_internal(pred: pd.DataFrame, id_maps: dict | None) -> pd.DataFrame:
    """An outside file of a run whose ids were mapped names users and items by the log's own ids."""
    if not id_maps or ORIGINAL["user_id"] in pred.columns:
        return pred
    pred = pred.copy()
    for col, kind in (("user_id", "users"), ("item_id", "items")):
        m = id_maps.get(kind) or IdMap()
        if not m.identity:
            pred[col] = m.to_internal(pred[col].to_numpy())
    return pred


def check_predictions(pred: pd.DataFrame, keys: pd.DataFrame, path, known_items: np.ndarray | None = None,
                      id_maps: dict | None = None) -> pd.DataFrame:
    """The rows of `pred` whose (user_id, cut_ts) is one of `keys`, with int64 columns; refuses a
    file that is broken or matches nothing, warns (one line) on a partial match."""
    missing = [c for c in PRED_COLUMNS if c not in pred.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a predictions file has user_id, cut_ts, rank, "
                        f"item_id[, score]; found {list(pred.columns)}")
    if len(pred) == 0:
        raise DataError(f"{path}: no rows (an empty predictions file)")
    pred = _to_internal(pred, id_maps)
    cols = {c: _int_column(pred, c, path) for c in PRED_COLUMNS}
    neg = cols["rank"] < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise DataError(f"{path}: row {i + 1}: field 'rank': {int(cols['rank'][i])} is negative (ranks count from 0)")
    frame = pred.assign(**cols).reset_index(drop=True)
    for what, col in (("rank", "rank"), ("item", "item_id")):
        dup = frame.duplicated(["user_id", "cut_ts", col]).to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise DataError(f"{path}: row {i + 1}: field {col!r}: duplicate {what} {int(frame[col].iloc[i])} for user "
                            f"{int(frame['user_id'].iloc[i])} at cut_ts {int(frame['cut_ts'].iloc[i])} "
                            f"({int(dup.sum())} such rows)")
    return _match(frame, keys, path, known_items)


def _match(frame: pd.DataFrame, keys: pd.DataFrame, path, known_items) -> pd.DataFrame:
    pairs = frame[["user_id", "cut_ts"]].drop_duplicates()
    hit = pairs.merge(keys[["user_id", "cut_ts"]], on=["user_id", "cut_ts"], how="left", indicator=True)
    n_hit = int((hit["_merge"] == "both").sum())
    if n_hit == 0:
        u, c = int(pairs["user_id"].iloc[0]), int(pairs["cut_ts"].iloc[0])
        same_user = keys[keys["user_id"] == u]["cut_ts"]
        hint = (f"; the targets cut user {u} at {int(same_user.iloc[0])}, not {c}" if len(same_user)
                else f"; user {u} is not among the targets' users")
        raise DataError(f"{path}: field 'user_id', 'cut_ts': none of its {len(pairs)} (user_id, cut_ts) pairs is one of "
                        f"the {len(keys)} target rows{hint}")
    out = frame.merge(keys[["user_id", "cut_ts"]], on=["user_id", "cut_ts"])
    notes = []
    if n_hit < len(pairs):
        notes.append(f"{len(pairs) - n_hit} of {len(pairs)} (user_id, cut_ts) pairs match no target row and are ignored")
    if n_hit < len(keys):
        notes.append(f"{len(keys) - n_hit} of {len(keys)} target rows have no predictions (scored as misses)")
    if known_items is not None:
        unknown = ~np.isin(out["item_id"].to_numpy(), known_items)
        if unknown.all():
            raise DataError(f"{path}: field 'item_id': none of its {len(out)} predicted items is in the log "
                            f"(e.g. {int(out['item_id'].iloc[0])}); are the ids those of this run?")
        if unknown.any():
            notes.append(f"{int(unknown.sum())} of {len(out)} predicted items are not in the log")
    if notes:
        print(f"negrec: warning: {path}: " + "; ".join(notes), file=sys.stderr)
    return out
