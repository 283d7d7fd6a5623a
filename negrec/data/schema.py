"""The one canonical schema every stage reads, and the checks that guard it."""
from __future__ import annotations

import numpy as np
import pandas as pd

NEGATIVE, NEUTRAL, POSITIVE = -1, 0, 1
EXPLICIT, IMPLICIT = "explicit", "implicit"
KINDS = ("hated", "skipped", "low rating", "liked", "neutral")

INTERACTION_COLUMNS = ["user_id", "item_id", "ts", "feedback", "source", "kind"]
OPTIONAL_INTERACTION_COLUMNS = ["rating", "play_time_s", "duration_s"]
ITEM_COLUMNS = ["item_id", "title", "text", "genres"]


SOURCE_DTYPE = pd.CategoricalDtype([EXPLICIT, IMPLICIT])


def source_column(implicit: np.ndarray) -> pd.Categorical:
    """The `source` column from an implicit-mask, one byte per row."""
    return pd.Categorical.from_codes(np.asarray(implicit, dtype=np.int8), dtype=SOURCE_DTYPE)


class DataError(ValueError):
    """Bad input data. The message names the file, and the line and field where known."""


def check_interactions(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate a canonical interactions frame; sort it by (user, ts) and fix dtypes."""
    missing = [c for c in INTERACTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: interactions lack field(s) {missing}")
    if len(df) == 0:
        raise DataError(f"{source}: no interactions (empty file?)")
    bad = ~df["feedback"].isin([NEGATIVE, NEUTRAL, POSITIVE])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: row {i}: field 'feedback' must be -1, 0 or 1, got {df['feedback'].iloc[i]!r}")
    out = df.astype({"user_id": "int64", "item_id": "int64", "ts": "int64", "feedback": "int8",
                     "source": SOURCE_DTYPE})
    users, ts = out["user_id"].to_numpy(), out["ts"].to_numpy()
    if np.any((users[1:] < users[:-1]) | ((users[1:] == users[:-1]) & (ts[1:] < ts[:-1]))):
        out = out.take(np.lexsort((ts, users)))  # stable: ties keep file order
    return out.reset_index(drop=True)


def check_items(items: pd.DataFrame, interactions: pd.DataFrame, source: str, require_text: bool = False):
    """Validate the items table against the log. Returns (items, interactions, dropped counts)."""
    for c in ("item_id",):
        if c not in items.columns:
            raise DataError(f"{source}: items lack field {c!r}")
    items = items.copy()
    for c in ("title", "text", "genres"):
        if c not in items.columns:
            items[c] = ""
        items[c] = items[c].fillna("").astype(str)
    dup = items["item_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{source}: items row {i}: duplicate item_id {items['item_id'].iloc[i]!r}")
    dropped = {}
    if require_text:
        empty = items["text"].str.strip() == ""
        dropped["items_without_text"] = int(empty.sum())
        items = items[~empty]
    known = interactions["item_id"].isin(items["item_id"])
    if not known.all():
        i = int(np.flatnonzero(~known.to_numpy())[0])
        if not require_text:
            raise DataError(
                f"{source}: interaction row {i}: field 'item_id' = {interactions['item_id'].iloc[i]} "
                f"is not in the items table ({int((~known).sum())} rows with unknown items)"
            )
        dropped["interactions_of_dropped_items"] = int((~known).sum())
        interactions = interactions[known].reset_index(drop=True)
    return items.sort_values("item_id").reset_index(drop=True), interactions, dropped


def kind_of(feedback: np.ndarray, implicit: np.ndarray, has_rating: np.ndarray) -> pd.Categorical:
    """Human-readable feedback kind shown in prompts: hated / skipped / low rating / liked / neutral.
    Categorical, so a 10M-row log holds one byte per row rather than a Python string."""
    code = np.full(len(feedback), KINDS.index("neutral"), dtype=np.int8)
    neg = feedback == NEGATIVE
    code[neg & ~implicit & ~has_rating] = KINDS.index("hated")
    code[neg & ~implicit & has_rating] = KINDS.index("low rating")
    code[neg & implicit] = KINDS.index("skipped")
    code[feedback == POSITIVE] = KINDS.index("liked")
    return pd.Categorical.from_codes(code, categories=list(KINDS))
