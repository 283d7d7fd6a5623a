"""Use the predicted dislikes as a pre-ranking filter, and measure what it costs.

The paper removes a candidate whose embedding lies within cosine θ of any of the user's
predicted dislikes. `filter_candidates` is that filter; it lives beside the codebook export in
`negrec.tokenizer.serving` (numpy only, so serving code calls it without torch or pandas) and is
re-exported here. `filter_curve` sweeps θ and reports, per θ, the share of the
users' true future negatives the filter removes against the share of their future positives it
wrongly removes.
"""
from __future__ import annotations

import numpy as np

from negrec.rewards.matching import ItemEmbeddings, ItemSets, max_cosine_to_sets
from negrec.tokenizer.serving import filter_candidates

__all__ = ["filter_candidates", "filter_curve"]


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
