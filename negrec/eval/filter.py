"""Use the predicted dislikes as a pre-ranking filter, and measure what it costs.

The paper removes a candidate whose embedding lies within cosine θ of any of the user's
predicted dislikes. `filter_candidates` is that filter (numpy only, so serving code can call
it beside the exported codebook); `filter_curve` sweeps θ and reports, per θ, the share of the
users' true future negatives the filter removes against the share of their future positives it
wrongly removes.
"""
from __future__ import annotations

import numpy as np

from negrec.rewards.matching import ItemEmbeddings, ItemSets, max_cosine_to_sets


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def filter_candidates(candidate_emb: np.ndarray, predicted_dislike_emb: np.ndarray, theta: float) -> np.ndarray:
    """Keep-mask over candidates: False where cos(candidate, some predicted dislike) >= theta.

    candidate_emb (n, d), predicted_dislike_emb (m, d); with m = 0 every candidate is kept.
    """
    candidate_emb = np.atleast_2d(candidate_emb)
    predicted = np.atleast_2d(predicted_dislike_emb) if len(predicted_dislike_emb) else np.zeros((0, candidate_emb.shape[1]))
    if predicted.shape[0] == 0 or candidate_emb.shape[0] == 0:
        return np.ones(candidate_emb.shape[0], dtype=bool)
    if predicted.shape[1] != candidate_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: candidates {candidate_emb.shape[1]}, dislikes {predicted.shape[1]}")
    return (_unit(candidate_emb) @ _unit(predicted).T).max(1) < theta


def filter_curve(
    embeddings: ItemEmbeddings,
    predicted: ItemSets,
    future_neg: ItemSets,
    future_pos: ItemSets,
    thetas=None,
) -> list[dict]:
    """For each θ: share of future negatives removed vs share of future positives removed.

    Rows are users (cuts); `predicted` holds each row's predicted dislikes, `future_neg` /
    `future_pos` what the row's user in fact disliked / liked in the window. An item is removed
    when its max cosine to the row's predicted dislikes is >= θ. Shares are over all (row, item)
    pairs (micro average); `*_user` are the means of per-row shares over rows having such items.
    """
    thetas = np.round(np.linspace(0.5, 1.0, 11), 3) if thetas is None else np.asarray(thetas, dtype=float)
    for name, sets in (("future_neg", future_neg), ("future_pos", future_pos)):
        if len(sets) != len(predicted):
            raise ValueError(f"{name} has {len(sets)} rows, predicted has {len(predicted)}")

    def closeness(sets: ItemSets):
        # one (row, item) query per target: its max cosine to the row's predicted dislikes
        pairs = predicted.take(sets.rows)
        cos = max_cosine_to_sets(sets.indices, pairs, embeddings, empty=-np.inf)
        return cos, sets.rows

    neg_cos, neg_rows = closeness(future_neg)
    pos_cos, pos_rows = closeness(future_pos)
    out = []
    for theta in thetas:
        row = {"theta": float(theta)}
        for name, cos, rows, sets in (("neg", neg_cos, neg_rows, future_neg), ("pos", pos_cos, pos_rows, future_pos)):
            removed = cos >= theta
            row[f"{name}_removed"] = float(removed.mean()) if len(removed) else None
            per_row = np.bincount(rows[removed], minlength=len(sets)) / np.maximum(sets.lengths, 1)
            has = sets.lengths > 0
            row[f"{name}_removed_user"] = float(per_row[has].mean()) if has.any() else None
        out.append(row)
    return out
