import numpy as np
import pandas as pd
import pytest

from negrec.eval.baselines import (
    ItemKNN,
    NegativeRatio,
    PopularNegatives,
    RandomItems,
    SASRec,
    SASRecConfig,
    UserKNN,
)
from negrec.eval.metrics import MetricsConfig, evaluate_samples


def test_recommend_excludes_context_and_orders_by_score():
    log = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 12, 10], "ts": [1, 2, 3, 4, 5],
                        "feedback": [-1, -1, -1, -1, 1]})
    samples = pd.DataFrame({"user_id": [4, 5], "context_items": [[10], []], "neg_items": [[], []]})
    rec = PopularNegatives().fit(log, items=np.array([10, 11, 12, 13])).recommend(samples, 3)
    assert rec[0].tolist() == [11, 12, 13]  # 10 is in the context; 11 and 12 tie -> smaller id first
    assert rec[1].tolist() == [10, 11, 12]
    ratio = NegativeRatio(prior_weight=0.0).fit(log).recommend(samples, 3)
    assert ratio[1, 0] in (11, 12)  # disliked every time shown, while 10 is 2 of 3


def _sums(rec, samples):
    m = evaluate_samples(rec, samples, MetricsConfig(ks=[50], horizons=[7]))
    return m["recall@50_h7"]


@pytest.mark.parametrize("make", [
    PopularNegatives, NegativeRatio, ItemKNN, UserKNN,
    lambda: SASRec(SASRecConfig(sequence="negative", epochs=1, patience=1, hidden=32, max_len=20, batch_size=256)),
    lambda: SASRec(SASRecConfig(sequence="mixed", epochs=1, patience=1, hidden=32, max_len=20, batch_size=256)),
])
def test_baseline_beats_random_on_ml100k_valid(ml100k_prepared, make):
    valid = ml100k_prepared.samples["valid"]
    baseline = make().fit(ml100k_prepared, split="valid")
    rec = baseline.recommend(valid, 50)
    assert rec.shape == (len(valid), 50)
    ctx = [set(c) for c in valid["context_items"]]
    assert not any(i in ctx[r] for r in range(len(rec)) for i in rec[r])
    random = np.mean([_sums(RandomItems(seed).fit(ml100k_prepared, split="valid").recommend(valid, 50), valid)
                      for seed in range(3)])
    assert _sums(rec, valid) > random


def test_random_scores_are_per_row_not_per_chunk():
    """Each (user, cut) row gets its own scores, the same in any chunk: rows a chunk apart differ."""
    log = pd.DataFrame({"user_id": [1, 2], "item_id": [100, 101], "ts": [1, 2], "feedback": [-1, -1]})
    items = np.arange(100, 160)
    valid = pd.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "cut_ts": [10, 10, 20, 20, 30, 30],
                          "context_items": [[]] * 6, "neg_items": [[]] * 6})
    whole = RandomItems(0).fit(log, items=items)
    small = RandomItems(0).fit(log, items=items)
    small.chunk = 2
    assert np.array_equal(whole.recommend(valid, 20), small.recommend(valid, 20))
    rec = small.recommend(valid, 20)
    assert not np.array_equal(rec[0], rec[2]) and not np.array_equal(rec[1], rec[3])
    assert not np.array_equal(rec, RandomItems(1).fit(log, items=items).recommend(valid, 20))


def test_score_pairs_matches_dense_scores_and_unknown_items_score_minus_inf():
    log = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 12, 10], "ts": [1, 2, 3, 4, 5],
                        "feedback": [-1, -1, -1, -1, 1]})
    samples = pd.DataFrame({"user_id": [4, 5, 6], "context_items": [[], [], []], "neg_items": [[10], [11], []]})
    model = ItemKNN().fit(log)
    model.chunk = 2  # pairs spread over two score chunks
    dense = model.score(samples)
    rows, items = np.array([0, 1, 2, 2, 0]), np.array([11, 12, 10, 99, 10])
    got = model.score_pairs(samples, rows, items)
    want = [dense[r, model.index([i])[0]] for r, i in zip(rows[:4], items[:4])]
    assert got[[0, 1, 2, 4]].tolist() == pytest.approx([want[0], want[1], want[2], dense[0, model.index([10])[0]]])
    assert got[3] == -np.inf  # item 99 was never in the log


@pytest.mark.parametrize("sequence", ["negative", "mixed"])
def test_sasrec_fits_a_catalogue_smaller_than_its_validation_k(sequence):
    """8 items: SASRec's validation Recall@10 looked for a top 10 among 8 logits and crashed a valid log."""
    rng = np.random.default_rng(0)
    rows = [(u, int(rng.integers(8)), 100 * u + t, int(rng.choice([-1, 1]))) for u in range(30) for t in range(12)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "feedback"])
    model = SASRec(SASRecConfig(sequence=sequence, epochs=2, patience=1, hidden=16, max_len=10, batch_size=64))
    model.fit(log, items=np.arange(8))
    samples = pd.DataFrame({"user_id": [0, 1], "cut_ts": [10**6, 10**6], "context_items": [[0], []],
                            "neg_items": [[0], []], "mixed_items": [[0], []], "mixed_feedback": [[-1], []]})
    rec = model.recommend(samples, 10)
    assert rec.shape[0] == 2 and 0 not in rec[0][rec[0] >= 0]  # ranked, the context left out
