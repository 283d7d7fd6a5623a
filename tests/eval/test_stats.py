"""Confidence intervals over users (negrec.eval.stats): paired differences of known size, identical
rankers, the cluster bootstrap keeping a user's rows together, and coverage."""
import numpy as np
import pandas as pd
import pytest

from negrec.eval.metrics import MetricsConfig, evaluate_arrays
from negrec.eval.stats import (
    bootstrap_ci,
    bootstrap_p,
    bootstrap_summary,
    paired_bootstrap,
    percentile_ci,
    resample_weights,
    sign_flip_p,
)
from negrec.rewards.matching import ItemSets

K = 10


def _ranker(rng, n_rows: int, p_hit: float) -> tuple[np.ndarray, ItemSets]:
    """Rows with F = 2 row-own items (ids >= 10_000); each lands in the top K with probability p_hit,
    the other slots are filler items (< 1000, never targets)."""
    targets = 10_000 + 2 * np.arange(n_rows)[:, None] + np.arange(2)[None, :]
    rankings = np.stack([rng.choice(1000, size=K, replace=False) for _ in range(n_rows)])
    placed = rng.random((n_rows, 2)) < p_hit
    for r in range(n_rows):
        slots = rng.choice(K, size=2, replace=False)
        rankings[r, slots[placed[r]]] = targets[r, placed[r]]
    return rankings, ItemSets.from_lists(targets.tolist())


def _per_row(rankings: np.ndarray, targets: ItemSets, users: np.ndarray) -> pd.DataFrame:
    cfg = MetricsConfig(ks=[K], horizons=[7], fhr_k=K)
    out = evaluate_arrays(rankings, {7: targets}, cfg, per_row=True, row_users=users)
    # the per-row values are the summary's rows: their mean is the reported metric
    assert out["per_row"][f"recall@{K}_h7"].mean() == pytest.approx(out[f"recall@{K}_h7"])
    return out["per_row"]


def test_paired_ci_covers_a_known_difference_and_excludes_zero():
    """B = A with one of its hits removed on a known 30% of rows (where A has a hit). With |F| = 2 and
    each target in A's top 10 with probability 0.4, the true Recall@10 gap is 0.3 * (1 - 0.6**2) / 2."""
    rng = np.random.default_rng(0)
    n_users, rows_per_user = 1200, 2
    users = np.repeat(np.arange(n_users) * 7 + 3, rows_per_user)
    a_rank, targets = _ranker(rng, len(users), 0.4)
    b_rank = a_rank.copy()
    hit = np.isin(a_rank, targets.indices)
    chosen = (rng.random(len(users)) < 0.3) & hit.any(1)
    first_hit = hit.argmax(1)
    b_rank[chosen, first_hit[chosen]] = 5000 + np.arange(chosen.sum())  # a filler that is no target
    a = _per_row(a_rank, targets, users)[f"recall@{K}_h7"]
    b = _per_row(b_rank, targets, users)[f"recall@{K}_h7"]
    true_gap = 0.3 * (1 - 0.6**2) / 2
    pair = paired_bootstrap(a, b, users)
    assert pair["lo"] <= true_gap <= pair["hi"]
    assert pair["lo"] > 0 and pair["p"] <= 0.01 and pair["p_perm"] <= 0.01
    assert pair["n"] == len(users) and pair["n_users"] == n_users
    # pairing is what makes the gap visible: the paired interval (sd of a - b: ~0.20 per row) is narrower
    # than one method's (sd ~0.35); resampling the two methods apart would give ~1.4x wider than one method's
    ci_a = bootstrap_ci(a, users)
    assert pair["hi"] - pair["lo"] < 0.75 * (ci_a["hi"] - ci_a["lo"])


def test_identical_rankers_overlap_and_paired_ci_covers_zero():
    rng = np.random.default_rng(1)
    users = np.arange(1500)
    a_rank, targets = _ranker(rng, len(users), 0.3)
    b_rank, _ = _ranker(rng, len(users), 0.3)  # same distribution, drawn independently
    a = _per_row(a_rank, targets, users)[f"recall@{K}_h7"]
    b = _per_row(b_rank, targets, users)[f"recall@{K}_h7"]
    ci_a, ci_b = bootstrap_ci(a, users), bootstrap_ci(b, users)
    assert ci_a["lo"] <= ci_b["hi"] and ci_b["lo"] <= ci_a["hi"]
    pair = paired_bootstrap(a, b, users)
    assert pair["lo"] <= 0 <= pair["hi"] and pair["p"] > 0.05 and pair["p_perm"] > 0.05


def test_cluster_bootstrap_keeps_a_users_rows_together():
    """Five identical rows per user carry one user's information, not five: resampling users gives
    the interval of the deduplicated data, resampling rows as if independent a ~sqrt(5) narrower one."""
    rng = np.random.default_rng(2)
    per_user = (rng.random(400) < 0.3).astype(float)
    users = np.repeat(np.arange(400), 5)
    values = np.repeat(per_user, 5)
    cluster = bootstrap_ci(values, users)
    rows_as_users = bootstrap_ci(values, np.arange(len(values)))
    once = bootstrap_ci(per_user, np.arange(400))
    width = lambda c: c["hi"] - c["lo"]
    assert width(cluster) > 1.8 * width(rows_as_users)
    assert width(cluster) == pytest.approx(width(once), rel=0.15)
    assert cluster["n"] == 2000 and cluster["n_users"] == 400


def test_resample_weights_draw_users_with_replacement():
    chunks = list(resample_weights(50, n_boot=300, seed=5))
    w = np.vstack(chunks)
    assert w.shape == (300, 50) and (w.sum(1) == 50).all() and (w >= 0).all()
    assert w.mean() == pytest.approx(1.0) and (w == 0).mean() == pytest.approx((1 - 1 / 50) ** 50, abs=0.03)
    assert np.array_equal(w, np.vstack(list(resample_weights(50, n_boot=300, seed=5))))  # fixed seed: same draws


def test_ci_coverage_of_the_cluster_bootstrap():
    """Users with 1-3 rows and their own hit rate: the 95% interval covers the true mean about 95% of the time."""
    rng = np.random.default_rng(3)
    covered = []
    for trial in range(150):
        p_user = rng.beta(1, 3, 200)  # true mean 0.25
        n_rows = rng.integers(1, 4, 200)
        users = np.repeat(np.arange(200), n_rows)
        values = (rng.random(len(users)) < p_user[users]).astype(float)
        ci = bootstrap_ci(values, users, n_boot=400, seed=trial)
        covered.append(ci["lo"] <= 0.25 <= ci["hi"])
    assert 0.88 <= np.mean(covered) <= 0.99


def test_nan_rows_are_left_out_of_both_methods():
    a = np.array([1.0, np.nan, 0.0, 1.0, 0.5])
    b = np.array([0.0, 0.0, np.nan, 0.0, 0.5])
    pair = paired_bootstrap(a, b, np.array([1, 1, 2, 3, 4]), n_boot=200)
    assert pair["diff"] == pytest.approx((1 + 1 + 0) / 3) and pair["n"] == 3 and pair["n_users"] == 3
    s = bootstrap_summary(pd.DataFrame({"a": a, "b": b}), np.arange(5), n_boot=50)
    assert s["a"]["mean"] == pytest.approx(2.5 / 4) and s["a"]["n"] == 4
    assert s["a"]["lo"] <= s["a"]["mean"] <= s["a"]["hi"]


def test_percentile_interval_is_the_central_level_share():
    reps = np.arange(1001, dtype=float)[:, None] / 1000
    lo, hi = percentile_ci(reps, 0.95)
    assert lo[0] == pytest.approx(0.025) and hi[0] == pytest.approx(0.975)
    lo, hi = percentile_ci(np.full((10, 1), np.nan))
    assert np.isnan(lo[0]) and np.isnan(hi[0])  # no replicate: no interval (None in the JSON)


def test_p_values():
    reps = np.array([[0.1, -0.1], [0.2, 0.1], [0.3, 0.0], [0.4, -0.2]])
    p = bootstrap_p(reps)
    assert p[0] == pytest.approx(1 / 4)  # never <= 0: clipped to 1/B, not 0
    assert p[1] == pytest.approx(1.0)  # 3 of 4 <= 0, 2 of 4 >= 0 -> 2 * 0.5
    zero = sign_flip_p(np.zeros(30), np.arange(30), n_perm=99)
    assert zero[0] == pytest.approx(1.0)
    strong = sign_flip_p(np.full(30, 0.2) + np.linspace(-0.05, 0.05, 30), np.arange(30), n_perm=99)
    assert strong[0] == pytest.approx(1 / 100)
