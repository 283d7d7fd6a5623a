"""Confidence intervals over users: a cluster bootstrap and paired comparisons (numpy, vectorised).

Why over users: one user may have several rows (cuts), and their values move together (the same
tastes, the same history). Resampling rows as if independent would understate the spread, so every
replicate draws the *users* with replacement and keeps all rows of a drawn user (cluster bootstrap).

A replicate is a weight per user, w_u = how often u was drawn (a bincount of n_users draws), and
its value is the row-weighted mean sum_u w_u s_u / sum_u w_u c_u, where s_u and c_u are the sum and
count of the user's non-NaN values: the same estimator as the point mean over rows. One (B x users)
weight matrix serves every metric column at once (a matrix product), in chunks that bound memory.

Paired comparisons resample one column d = a - b, NaN where either a or b is NaN (an empty F_H
leaves a row out of both methods alike), so both methods see the same users in every replicate.
Its p-value is the bootstrap's 2 * min(share <= 0, share >= 0), clipped to [1/B, 1]; a sign-flip
permutation test over users (flip the sign of each user's summed difference) is given beside it.

The same seed gives the same user weights for any column of the same rows, so CIs of different
methods computed in separate calls are computed on the same replicates.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import pandas as pd

N_BOOT = 1000
LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # weights held at once (replicates x users): ~32 MB of float64


def cluster_index(users) -> tuple[np.ndarray, int]:
    """(code of each row's user in 0..n_users-1, n_users)."""
    uniq, codes = np.unique(np.asarray(users), return_inverse=True)
    return codes.reshape(-1), len(uniq)


def _as_matrix(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[:, None] if v.ndim == 1 else v


def cluster_sums(values, codes: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user and column: the sum and the count of the non-NaN values, each (n_clusters, m)."""
    v = _as_matrix(values)
    ok = ~np.isnan(v)
    sums = np.empty((n_clusters, v.shape[1]))
    counts = np.empty((n_clusters, v.shape[1]))
    for j in range(v.shape[1]):  # one bincount per column: vectorised over rows
        sums[:, j] = np.bincount(codes, weights=np.where(ok[:, j], v[:, j], 0.0), minlength=n_clusters)
        counts[:, j] = np.bincount(codes, weights=ok[:, j].astype(float), minlength=n_clusters)
    return sums, counts


def resample_weights(n_clusters: int, n_boot: int = N_BOOT, seed: int = 0) -> Iterator[np.ndarray]:
    """The n_boot replicates' user weights, in (b, n_clusters) chunks: each row is how often each
    user was drawn in n_clusters draws with replacement (so every row sums to n_clusters)."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // max(n_clusters, 1))
    for start in range(0, n_boot if n_clusters else 0, step):  # no users: no replicates (all NaN)
        b = min(step, n_boot - start)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        flat = (draws + n_clusters * np.arange(b)[:, None]).ravel()  # replicate r's draws land in block r
        yield np.bincount(flat, minlength=b * n_clusters).reshape(b, n_clusters).astype(float)


def bootstrap_replicates(values, users, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(point means (m,), replicate means (n_boot, m)) of each column of `values` (n rows x m),
    resampling users (all rows of a user together); NaN values are left out of every mean."""
    codes, n_users = cluster_index(users)
    sums, counts = cluster_sums(values, codes, n_users)
    reps = np.full((n_boot, sums.shape[1]), np.nan)
    i = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for w in resample_weights(n_users, n_boot, seed):
            reps[i:i + len(w)] = (w @ sums) / (w @ counts)  # NaN where no drawn user has a value
            i += len(w)
        point = sums.sum(0) / counts.sum(0)
    return point, reps


def percentile_ci(reps: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of each column of the replicates (NaN replicates ignored)."""
    a = (1.0 - level) / 2
    with warnings.catch_warnings():  # an all-NaN column has no interval: NaN (-> None), not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [a, 1.0 - a], axis=0)
    return lo, hi


def bootstrap_p(reps: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of each column against 0: 2 * min(share <= 0, share >= 0),
    clipped to [1/B, 1] (B = non-NaN replicates; a p of 0 would claim more than B draws can show)."""
    reps = _as_matrix(reps)
    ok = ~np.isnan(reps)
    b = np.maximum(ok.sum(0), 1)
    le = ((reps <= 0) & ok).sum(0) / b
    ge = ((reps >= 0) & ok).sum(0) / b
    return np.clip(2 * np.minimum(le, ge), 1.0 / b, 1.0)


def sign_flip_p(values, users, n_perm: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Paired permutation p-value of each column of differences `values` (n x m) against 0.

    Under "no difference" a user's summed difference is as likely negative as positive, so each
    permutation flips the sign of every user's sum at random; p = (1 + #|perm| >= |obs|) / (1 + n_perm)."""
    codes, n_users = cluster_index(users)
    sums, counts = cluster_sums(values, codes, n_users)
    total = np.maximum(counts.sum(0), 1)
    obs = np.abs(sums.sum(0) / total)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // max(n_users, 1))
    extreme = np.zeros(sums.shape[1])
    for start in range(0, n_perm if n_users else 0, step):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(step, n_perm - start), n_users))
        extreme += (np.abs(signs @ sums / total) >= obs - 1e-12).sum(0)  # tolerance: float sums of ties
    return (1.0 + extreme) / (1.0 + n_perm)


def row_counts(frame: pd.DataFrame, users) -> tuple[np.ndarray, np.ndarray]:
    """(non-NaN rows, users with a non-NaN row) of each column."""
    ok = frame.notna().to_numpy()
    codes, n_users = cluster_index(users)
    per_user = cluster_sums(ok.astype(float), codes, n_users)[0]
    return ok.sum(0), (per_user > 0).sum(0)


def bootstrap_summary(frame: pd.DataFrame, users, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> dict[str, dict]:
    """Column -> {mean, lo, hi, n (non-NaN rows), n_users (users with one)} over the frame's columns."""
    point, reps = bootstrap_replicates(frame.to_numpy(dtype=float), users, n_boot, seed)
    lo, hi = percentile_ci(reps, level)
    n, n_users = row_counts(frame, users)
    return {col: {"mean": _num(point[j]), "lo": _num(lo[j]), "hi": _num(hi[j]), "n": int(n[j]),
                  "n_users": int(n_users[j])} for j, col in enumerate(frame.columns)}


def bootstrap_ci(values, users, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """{mean, lo, hi, n, n_users} of one column of per-row values, resampling users."""
    return bootstrap_summary(pd.DataFrame({"v": np.asarray(values, dtype=float)}), users, n_boot, seed, level)["v"]


def paired_differences(a, b) -> np.ndarray:
    """a - b per row, NaN where either is NaN (so both means use exactly the same rows)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.where(np.isnan(a) | np.isnan(b), np.nan, a - b)


def paired_summary(diffs: pd.DataFrame, users, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> dict[str, dict]:
    """Column of differences -> {diff, lo, hi, p (bootstrap), p_perm (sign flip), n, n_users}."""
    point, reps = bootstrap_replicates(diffs.to_numpy(dtype=float), users, n_boot, seed)
    lo, hi = percentile_ci(reps, level)
    p = bootstrap_p(reps)
    p_perm = sign_flip_p(diffs.to_numpy(dtype=float), users, n_boot, seed + 1)
    n, n_users = row_counts(diffs, users)
    return {col: {"diff": _num(point[j]), "lo": _num(lo[j]), "hi": _num(hi[j]), "p": _num(p[j]),
                  "p_perm": _num(p_perm[j]), "n": int(n[j]), "n_users": int(n_users[j])}
            for j, col in enumerate(diffs.columns)}


def paired_bootstrap(a, b, users, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """{diff, lo, hi, p, p_perm, n, n_users} of mean(a) - mean(b) over the rows where both are defined,
    resampling users, the same draw for both methods."""
    return paired_summary(pd.DataFrame({"d": paired_differences(a, b)}), users, n_boot, seed, level)["d"]


def format_ci(value, lo, hi) -> str:
    """"0.0812 [0.070, 0.093]" (the value alone without bounds, "-" without a value)."""
    if value is None:
        return "-"
    return f"{value:.4f}" if lo is None or hi is None else f"{value:.4f} [{lo:.3f}, {hi:.3f}]"


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)

