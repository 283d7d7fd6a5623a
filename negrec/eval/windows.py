"""Ranking from more of a user's history than one prompt shows: the policy is asked once per window
of `prompt.max_events` events, the latest window first (the row's own prompt) and then the windows
before it, and each item's probability is summed over the windows, a mixture of the policy's own
distributions (no other model's scores enter).

Under day cuts the future is the user's coming days, seen from before they start, and what a user
disliked long ago says as much about them as their last session: on ML-100K cut at day starts, four
SFT runs, four windows raised Recall@10 by +0.014 [+0.002, +0.026] over the last window alone. Under
event cuts the future is the rest of the burst the prompt is in, and older windows dilute it
(Recall@10 −0.013 [−0.022, −0.005] with four), so `eval.history_windows` follows the cut unit.
The same holds within day cuts: a user whose last event lies less than a day before the cut mostly
continues that session, and older windows cost those users Recall@10 on the validation cuts
(−0.017 ± 0.007 over three SFT runs), while users away for days gain (test cuts, away 10 days or
more: +0.031 ± 0.012). So older windows are asked only for users away at least
`eval.history_windows_gap_days` (docs/RESULTS.md "Older windows for users who have been away").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

DAY_CUT_WINDOWS = 4  # eval.history_windows left unset under day cuts (1 under event cuts)


def older_window_rows(log: pd.DataFrame, rows: Sequence[dict], known, window: int, n_windows: int,
                      min_gap: float = 0) -> tuple[list[int], list[dict]]:
    """(owner row index, row) for each older window of each row. The row's own prompt shows the last
    `window` events with a SID (`known`) of its `mixed_items` (fewer where those hold fewer); window
    w >= 1 holds the `window` known events of the log before window w - 1, in `mixed_items` /
    `mixed_feedback` / `mixed_ts`, so the prompt builder shows exactly them, and the negatives up to
    the window's end in `neg_items` / `neg_ts` (`prompt.older_negatives` reads them). A row whose
    history is shorter gets fewer windows (none beyond its first event), and a row whose latest
    event (its `mixed_ts`) lies less than `min_gap` seconds before its cut gets none."""
    if n_windows <= 1 or window < 1:
        return [], []
    away = [r for r in range(len(rows)) if _away(rows[r], min_gap)]
    if not away:
        return [], []
    known = np.asarray(known, dtype=np.int64)
    wanted = np.unique(np.fromiter((int(rows[r]["user_id"]) for r in away), np.int64, len(away)))
    log = log[np.isin(log["item_id"].to_numpy(), known) & np.isin(log["user_id"].to_numpy(), wanted)]
    log = log.sort_values(["user_id", "ts"], kind="stable")
    users, ts = log["user_id"].to_numpy(), log["ts"].to_numpy()
    items, feedback = log["item_id"].to_numpy(), log["feedback"].to_numpy()
    owners, out = [], []
    for r in away:
        row = rows[r]
        lo, hi = np.searchsorted(users, [row["user_id"], row["user_id"] + 1])
        end = lo + int(np.searchsorted(ts[lo:hi], row["cut_ts"]))  # events strictly before the cut
        shown = min(window, int(np.isin(np.asarray(row["mixed_items"], dtype=np.int64), known).sum()))
        stop = end - shown
        for _ in range(1, n_windows):
            if stop <= lo:
                break
            part, neg = slice(max(lo, stop - window), stop), lo + np.flatnonzero(feedback[lo:stop] < 0)
            owners.append(r)
            out.append(dict(row, mixed_items=items[part], mixed_feedback=feedback[part], mixed_ts=ts[part],
                            neg_items=items[neg], neg_ts=ts[neg]))
            stop -= window
    return owners, out


def _away(row: dict, min_gap: float) -> bool:
    """Whether the row's latest event lies at least `min_gap` seconds before its cut (no events: away)."""
    ts = np.asarray(row["mixed_ts"], dtype=np.int64)
    return not len(ts) or row["cut_ts"] - ts.max() >= min_gap


def mix_rankings(ranked: Sequence[Sequence[tuple[int, float]]], owners: Sequence[int], n_rows: int,
                 k: int) -> list[list[tuple[int, float]]]:
    """Per row, its top `k` items by the sum over its windows of exp(log-probability), best first
    (ties by item id); the score returned is the log of that sum (summed in log space: a SID's
    log-probability can lie below what exp represents)."""
    totals: list[dict[int, float]] = [{} for _ in range(n_rows)]
    for r, lst in zip(owners, ranked):
        for item, score in lst:
            totals[r][item] = float(np.logaddexp(totals[r][item], score)) if item in totals[r] else float(score)
    return [sorted(t.items(), key=lambda x: (-x[1], x[0]))[:k] for t in totals]
