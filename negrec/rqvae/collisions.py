"""Make semantic IDs unique when several items land on the same code tuple.

- `extra_level` (TIGER): append a level that numbers the items sharing a tuple 0, 1, 2, ...
- `sinkhorn` (LC-Rec): keep the item best explained by the shared SID and move the others to
  free last-level codes under the same prefix (then, only if a prefix is full, to free codes of
  the last two levels, ...). The move is an entropic optimal transport (Sinkhorn-Knopp, uniform
  marginals, so movers spread over free codes instead of piling onto the nearest one) rounded
  to a one-to-one assignment with the Hungarian method.
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


def sinkhorn_reassign(codes: np.ndarray, level_residuals, codebooks: list[np.ndarray], epsilon: float = 0.05,
                      iters: int = 100, max_candidates: int = 1 << 18) -> tuple[np.ndarray, dict]:
    """Move colliding items to free SIDs, changing as few trailing levels as possible.

    In each colliding group the item best explained by the shared SID keeps it; the others
    ("movers") get free last-level codes under their own prefix (depth 1, LC-Rec). Movers
    left over because a prefix ran out of last-level codes try free (second-last, last) pairs
    under a shorter prefix (depth 2), and so on.
    `level_residuals(rows) -> list of (len(rows), d)`: the residual entering each level.
    Returns (unique codes, {"moved": n, "moved_at_depth": {depth: n}}).
    """
    from scipy.optimize import linear_sum_assignment

    codes = np.array(codes, dtype=np.int64, copy=True)
    n, levels = codes.shape
    sizes = [len(c) for c in codebooks]
    stats = {"moved": 0, "moved_at_depth": {}}
    g, counts = collision_groups(codes)
    if (counts <= 1).all():
        return codes, stats
    # keepers: in every colliding group the item with the smallest final quantisation error stays
    rows = np.flatnonzero(counts[g] > 1)
    res = level_residuals(rows)
    final_err = ((res[-1] - codebooks[-1][codes[rows, -1]]) ** 2).sum(1)
    order = np.lexsort((final_err, g[rows]))
    first_in_group = np.ones(len(order), dtype=bool)
    first_in_group[1:] = g[rows][order][1:] != g[rows][order][:-1]
    movers = np.sort(rows[order][~first_in_group])
    moved_total = np.zeros(0, dtype=np.int64)
    for depth in range(1, levels + 1):
        if len(movers) == 0:
            break
        tail = list(range(levels - depth, levels))
        n_cand = int(np.prod([sizes[lvl] for lvl in tail]))
        if n_cand > max_candidates:
            break
        # every tail tuple as one integer (mixed radix), its centroid sum, and the residual it must explain
        grids = np.stack(np.meshgrid(*[np.arange(sizes[lvl]) for lvl in tail], indexing="ij"), -1).reshape(-1, depth)
        cand_vec = sum(codebooks[lvl][grids[:, j]] for j, lvl in enumerate(tail))
        radix = np.cumprod([1] + [sizes[lvl] for lvl in tail[:0:-1]])[::-1]
        tail_key = codes[:, tail] @ radix
        prefix = codes[:, : levels - depth]
        _, prefix_id = np.unique(prefix, axis=0, return_inverse=True)
        prefix_id = prefix_id.reshape(-1)
        mover_res = level_residuals(movers)[levels - depth]
        still = []
        for p in np.unique(prefix_id[movers]):
            group_movers = np.flatnonzero(prefix_id[movers] == p)
            members = np.flatnonzero(prefix_id == p)
            stay = np.setdiff1d(members, movers[group_movers])
            free = np.setdiff1d(np.arange(n_cand), tail_key[stay])
            if len(free) == 0:
                still.extend(movers[group_movers])
                continue
            r = mover_res[group_movers]
            cost = (r ** 2).sum(1)[:, None] - 2 * r @ cand_vec[free].T + (cand_vec[free] ** 2).sum(1)[None, :]
            plan = sinkhorn(np.maximum(cost, 0), epsilon, iters)
            ri, ci = linear_sum_assignment(-np.log(plan + 1e-300))
            done = movers[group_movers[ri]]
            codes[np.ix_(done, tail)] = grids[free[ci]]
            still.extend(np.setdiff1d(movers[group_movers], done))
            stats["moved_at_depth"][depth] = stats["moved_at_depth"].get(depth, 0) + len(done)
            moved_total = np.concatenate([moved_total, done])
        movers = np.sort(np.asarray(still, dtype=np.int64))
    if len(movers):
        raise ValueError(f"{len(movers)} items could not be given a free SID by re-assignment (codebooks too small for "
                         f"{n} items): use tokenize.collision=extra_level or a larger codebook_size")
    stats["moved"] = int(len(np.unique(moved_total)))
    return codes, stats
