"""Implicit negatives from fast skips: in short video most negative signal is a skip, not a 'hate'."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .schema import IMPLICIT, NEGATIVE, NEUTRAL, source_column


@dataclass
class SkipRule:
    """An exposure becomes an implicit negative when the user left it fast, both relatively
    (play/duration below `max_watch_ratio`) and absolutely (play time below `max_play_s`).
    Explicit labels always win: only neutral exposures are relabelled."""
    enabled: bool = True
    max_watch_ratio: float = 0.2
    max_play_s: float = 3.0


def add_implicit_negatives(df: pd.DataFrame, rule: SkipRule) -> tuple[pd.DataFrame, int]:
    """Relabel fast-skipped neutral exposures as implicit negatives. Returns (frame, count)."""
    if not rule.enabled or "play_time_s" not in df.columns or "duration_s" not in df.columns:
        return df, 0
    play = df["play_time_s"].to_numpy("float64")
    dur = df["duration_s"].to_numpy("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dur > 0, play / dur, np.nan)  # no duration: no ratio, so no implicit label
    skip = (df["feedback"].to_numpy() == NEUTRAL) & (ratio < rule.max_watch_ratio) & (play < rule.max_play_s)
    n = int(skip.sum())
    if n:
        df = df.copy()
        fb = df["feedback"].to_numpy().copy()
        fb[skip] = NEGATIVE
        df["feedback"] = fb
        df["source"] = source_column(skip | (df["source"] == IMPLICIT).to_numpy())
    return df, n
