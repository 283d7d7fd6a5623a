"""Make semantic IDs unique when several items land on the same code tuple.

- `extra_level` (TIGER): append a level that numbers the items sharing a tuple 0, 1, 2, ...
- `sinkhorn` (LC-Rec): keep the item closest to the shared last-level code and move the others
  to free last-level codes under the same prefix. The move is an entropic optimal transport
  (Sinkhorn-Knopp, uniform marginals, so movers spread over free codes instead of piling onto
  the nearest one) rounded to a one-to-one assignment with the Hungarian method.
"""
from __future__ import annotations

import numpy as np


def collision_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per item, group sizes): items with the same code tuple share a group."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose code tuple is shared with at least one other item."""
    if len(codes) == 0:
        return 0.0
    g, counts = collision_groups(codes)
    return float((counts[g] > 1).mean())


def add_extra_level(codes: np.ndarray, min_size: int = 1) -> tuple[np.ndarray, int, int]:
    """Append a level numbering items within each shared tuple (in row order).

    Returns (codes (n, L+1), size of the new level, number of items in a collision).
    """
    g, counts = collision_groups(codes)
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    size = int(max(min_size, counts.max() if len(counts) else 1))
    return np.concatenate([codes, rank[:, None]], axis=1), size, int((counts[g] > 1).sum())


def sinkhorn(cost: np.ndarray, epsilon: float = 0.05, iters: int = 100) -> np.ndarray:
    """Entropic OT plan between uniform row and column marginals (log-domain Sinkhorn-Knopp)."""
    m, k = cost.shape
    scale = np.median(cost) if np.median(cost) > 0 else 1.0
    log_k = -cost / (epsilon * scale)
    log_a, log_b = np.full(m, -np.log(m)), np.full(k, -np.log(k))
    u, v = np.zeros(m), np.zeros(k)
    for _ in range(iters):
        u = log_a - _logsumexp(log_k + v[None, :], axis=1)
        v = log_b - _logsumexp(log_k + u[:, None], axis=0)
    return np.exp(log_k + u[:, None] + v[None, :])


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    mx = x.max(axis=axis, keepdims=True)
    return (mx + np.log(np.exp(x - mx).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_reassign(codes: np.ndarray, last_residual: np.ndarray, last_codebook: np.ndarray,
                      epsilon: float = 0.05, iters: int = 100) -> tuple[np.ndarray, int]:
    """Re-assign the last level of colliding items to free codes under their prefix.

    `last_residual` (n, d) is what entered the last level; `last_codebook` (K, d) its codes.
    Returns (unique codes, number of items moved). Raises when a prefix holds more items than
    the last level has codes (then only `extra_level` or a bigger codebook can separate them).
    """
    from scipy.optimize import linear_sum_assignment

    codes = np.array(codes, dtype=np.int64, copy=True)
    k = len(last_codebook)
    g, counts = collision_groups(codes)
    if (counts <= 1).all():
        return codes, 0
    prefix_ids, prefix_of = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    prefix_of = prefix_of.reshape(-1)
    dist = lambda rows, cols: ((last_residual[rows][:, None, :] - last_codebook[cols][None, :, :]) ** 2).sum(-1)
    moved = 0
    for p in np.unique(prefix_of[counts[g] > 1]):
        rows = np.flatnonzero(prefix_of == p)
        if len(rows) > k:
            raise ValueError(f"{len(rows)} items share the prefix {prefix_ids[p].tolist()} but the last level has only "
                             f"{k} codes: use tokenize.collision=extra_level or a larger codebook_size")
        last = codes[rows, -1]
        movers = []
        for c in np.unique(last):
            members = rows[last == c]
            if len(members) > 1:  # keep the member closest to the code, move the rest
                keep = members[dist(members, [c])[:, 0].argmin()]
                movers.extend(m for m in members if m != keep)
        movers = np.asarray(movers)
        free = np.setdiff1d(np.arange(k), last)
        cost = dist(movers, free)
        plan = sinkhorn(cost, epsilon, iters)
        r, c = linear_sum_assignment(-np.log(plan + 1e-300))
        codes[movers[r], -1] = free[c]
        moved += len(movers)
    return codes, moved
