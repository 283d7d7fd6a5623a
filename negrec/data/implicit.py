"""Implicit negatives from fast skips: in short video most negative signal is a skip, not a 'hate'."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .arrays import chunks
from .schema import NEGATIVE, NEUTRAL, implicit_mask, source_column


@dataclass
class SkipRule:
    """An exposure becomes an implicit negative when the user left it fast, both relatively
    (play/duration below `max_watch_ratio`) and absolutely (play time below `max_play_s`).
    Explicit labels always win: only neutral exposures are relabelled."""
    enabled: bool = True
    max_watch_ratio: float = 0.2
    max_play_s: float = 3.0


def skip_mask(feedback: np.ndarray, play: np.ndarray, duration: np.ndarray, rule: SkipRule) -> np.ndarray:
    """Neutral exposures the rule turns into implicit negatives (chunked; ratios in float64).
    No positive duration: no ratio, so no implicit label."""
    out = np.zeros(len(feedback), bool)
    for a, b in chunks(len(feedback)):
        p = play[a:b].astype(np.float64)
        d = duration[a:b].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[a:b] = (feedback[a:b] == NEUTRAL) & (d > 0) & (p / d < rule.max_watch_ratio) & (p < rule.max_play_s)
    return out


def add_implicit_negatives(df: pd.DataFrame, rule: SkipRule) -> tuple[pd.DataFrame, int]:
    """Relabel fast-skipped neutral exposures as implicit negatives. Returns (frame, count).
    The input frame is left as it is; unchanged columns are shared, not copied."""
    if not rule.enabled or "play_time_s" not in df.columns or "duration_s" not in df.columns:
        return df, 0
    fb = df["feedback"].to_numpy()
    skip = skip_mask(fb, df["play_time_s"].to_numpy(), df["duration_s"].to_numpy(), rule)
    n = int(skip.sum())
    if n:
        fb = fb.copy()
        fb[skip] = NEGATIVE
        df = df.assign(feedback=fb, source=source_column(skip | implicit_mask(df["source"])))
    return df, n
