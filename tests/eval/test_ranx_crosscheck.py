"""Our per-row ranking metrics against the `ranx` package on random rankings and target sets.

Which definitions are the standard ones: std_recall@K (hits / |F|), ndcg@K (binary gains, ideal DCG
of min(K, |F|) hits: ranx's too), mrr@K and hit@K equal ranx's recall, ndcg, mrr and hit_rate
exactly. Our recall@K is capped (hits / min(K, |F|)): checked against ranx's hits@K."""
import numpy as np
import pytest

from negrec.eval.metrics import rank_metrics
from negrec.rewards.matching import ItemSets

ranx = pytest.importorskip("ranx")

KS = [1, 3, 5, 10]


def _random_case(seed: int, n_rows: int = 150, n_items: int = 40, width: int = 10):
    rng = np.random.default_rng(seed)
    rankings = np.stack([rng.choice(n_items, size=width, replace=False) for _ in range(n_rows)])
    sizes = rng.integers(0, 16, n_rows)  # 0: an empty F (NaN for us, absent from ranx's qrels)
    targets = [rng.choice(n_items, size=s, replace=False).tolist() for s in sizes]
    return rankings, targets


def _ranx_scores(rankings, targets, metrics):
    qrels = ranx.Qrels({f"q{r:04d}": {f"d{i}": 1 for i in t} for r, t in enumerate(targets) if t})
    # scores fall with the place, so ranx's order is ours (no ties)
    run = ranx.Run({f"q{r:04d}": {f"d{i}": float(len(row) - p) for p, i in enumerate(row)}
                    for r, row in enumerate(rankings) if targets[r]})
    ranx.evaluate(qrels, run, metrics, return_mean=False, save_results_in_run=True)
    return run.scores


@pytest.mark.parametrize("seed", [0, 1])
def test_standard_metrics_equal_ranx(seed):
    rankings, targets = _random_case(seed)
    ours = rank_metrics(rankings, ItemSets.from_lists(targets), KS)
    names = {"std_recall": "recall", "ndcg": "ndcg", "mrr": "mrr", "hit": "hit_rate"}
    scores = _ranx_scores(rankings, targets, [f"{m}@{k}" for m in [*names.values(), "hits"] for k in KS])
    rows = [r for r, t in enumerate(targets) if t]
    assert len(rows) < len(targets)  # the case has empty target sets: NaN for us
    for k in KS:
        for mine, theirs in names.items():
            want = np.array([scores[f"{theirs}@{k}"][f"q{r:04d}"] for r in rows])
            np.testing.assert_allclose(ours[f"{mine}@{k}"][rows], want, atol=1e-9, err_msg=f"{mine}@{k}")
            assert np.isnan(ours[f"{mine}@{k}"][[r for r, t in enumerate(targets) if not t]]).all()
        hits = np.array([scores[f"hits@{k}"][f"q{r:04d}"] for r in rows])
        capped = hits / np.minimum(k, [len(targets[r]) for r in rows])
        np.testing.assert_allclose(ours[f"recall@{k}"][rows], capped, atol=1e-9, err_msg=f"recall@{k}")
