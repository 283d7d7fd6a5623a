import math

import numpy as np
import pandas as pd
import pytest

from negrec.eval.metrics import (
    DAY,
    MetricsConfig,
    candidate_accuracy,
    candidate_sets,
    evaluate_arrays,
    evaluate_predictions,
    rank_metrics,
)
from negrec.rewards.matching import ItemSets, clean_rankings


def test_rank_metrics_hand_computed():
    rankings = np.array([[5, 1, 2, 9], [4, 8, 7, 6], [1, 2, 3, 4]])
    targets = ItemSets.from_lists([[1, 9], [3], []])
    m = rank_metrics(rankings, targets, ks=[1, 2, 4])
    # row 0: hits at positions 2 and 4; |F| = 2
    assert m["recall@1"][0] == 0.0 and m["recall@2"][0] == 0.5 and m["recall@4"][0] == 1.0
    assert m["ndcg@2"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["ndcg@4"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert m["hit@1"][0] == 0.0 and m["hit@2"][0] == 1.0
    assert m["recall@4"][1] == 0.0
    assert np.isnan(m["recall@4"][2])  # empty F_H: left out


def test_k_larger_than_target_set():
    # |F| = 1 < K = 4: one hit is full recall (denominator min(K, |F|))
    m = rank_metrics(np.array([[7, 3, -1, -1]]), ItemSets.from_lists([[3]]), ks=[4])
    assert m["recall@4"][0] == 1.0
    assert m["ndcg@4"][0] == pytest.approx(1 / math.log2(3))


def test_context_items_are_never_counted_and_do_not_take_slots():
    rankings = np.array([[1, 2, 3]])
    future = {7: ItemSets.from_lists([[2, 3]])}
    context = ItemSets.from_lists([[1, 2]])
    out = evaluate_arrays(rankings, future, MetricsConfig(ks=[1, 2], horizons=[7], fhr_k=1), context=context)
    # 2 is in the context: not a target and not a hit; 1 is dropped so 3 moves to rank 1
    assert out["recall@1_h7"] == 1.0 and out["recall@2_h7"] == 1.0
    # a user whose whole F_H lies in the context has an empty F_H
    out = evaluate_arrays(rankings, {7: ItemSets.from_lists([[2]])}, MetricsConfig(ks=[1], horizons=[7], fhr_k=1),
                          context=context)
    assert out["n_empty_h7"] == 1 and out["recall@1_h7"] is None


def test_evaluate_predictions_ties_empty_and_horizons():
    preds = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 3],
        "cut_ts": [0] * 6,
        # user 1: two items tied at rank 1 -> higher score first, then smaller item id
        "rank": [1, 1, 2, 1, 2, 1],
        "item_id": [12, 11, 10, 20, 21, 30],
        "score": [0.5, 0.9, 0.1, 1, 1, 1],
    })
    targets = pd.DataFrame({
        "user_id": [1, 1, 2, 4],
        "cut_ts": [0, 0, 0, 0],
        "item_id": [12, 10, 21, 40],
        "ts": [100, 2 * DAY + 5, 8 * DAY, 100],  # user 2's negative is beyond 7 days
        "kind": ["hated", "low rating", "hated", "skipped"],
    })
    cfg = MetricsConfig(ks=[1, 2, 3], horizons=[1, 3, 7], fhr_k=2)
    out = evaluate_predictions(preds, targets, cfg=cfg)
    # rows: users 1, 2, 3 (predictions) and 4 (targets only, scored as a miss)
    assert out["n_rows"] == 4 and out["n_rows_without_predictions"] == 1
    # H=1: user 1 F={12}, ranking [11, 12, 10]; user 4 F={40}; users 2, 3 empty
    assert out["n_empty_h1"] == 2
    assert out["recall@1_h1"] == 0.0
    assert out["recall@2_h1"] == pytest.approx(0.5)
    # H=3: user 1 F={12, 10}: recall@2 = 1/2, recall@3 = 2/2
    assert out["recall@3_h3"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["fhr@2_h3"] == pytest.approx(0.5)
    # next negative: user 1 -> 12, user 2 -> 21 (no horizon), user 4 -> 40
    assert out["next_hit@2"] == pytest.approx(2 / 3)


def test_evaluate_predictions_with_log_context_and_long_tail():
    log = pd.DataFrame({
        "user_id": [1, 1, 2, 2, 2, 1, 1, 1],
        "item_id": [50, 51, 50, 51, 52, 60, 61, 62],
        "ts": [-10, -9, -10, -9, -8, 10, 20, 30],
        "feedback": [-1, -1, -1, -1, -1, -1, 1, 0],
    })
    preds = pd.DataFrame({"user_id": [1, 1, 1, 2], "cut_ts": [0] * 4, "rank": [0, 1, 2, 0],
                          "item_id": [50, 61, 60, 99], "score": [3, 2, 1, 1]})
    targets = pd.DataFrame({"user_id": [1, 1, 2], "cut_ts": [0, 0, 0], "item_id": [60, 50, 70], "ts": [10, 11, 12],
                            "kind": ["hated", "hated", "hated"]})
    cfg = MetricsConfig(ks=[1, 2], horizons=[7], fhr_k=1, swing_top_n=1, long_tail_user_negatives=3,
                        long_tail_item_negatives=2)
    out = evaluate_predictions(preds, targets, log, cfg)
    # user 1: 50 is in the context (dropped from targets and ranking) -> ranking [61, 60], F={60}
    assert out["recall@1_h7"] == pytest.approx(0.0) and out["recall@2_h7"] == pytest.approx(0.5)
    # training negatives: user 1 has 2 (< 3, long-tail), user 2 has 3
    assert out["n_long_tail_user_rows"] == 1 and out["lt_user/recall@2_h7"] == pytest.approx(1.0)
    # long-tail items (< 2 training negatives): 60 and 70 (0 each)
    assert out["lt_item/recall@2_h7"] == pytest.approx(0.5)
    # collaborative: Swing widens 50 -> 51..., user 1's GTS = {60}; user 2's = {70}
    assert out["coll_recall@2_h7"] == pytest.approx(0.5)
    # candidates: user 1's first negative after the cut is 60; same day others: 61, 62 -> 3 candidates.
    # ranking [61, 60]: 61 outranks 60 -> 0
    assert out["n_candidate_rows"] == 1 and out["candidate_acc"] == 0.0 and out["candidate_chance"] == pytest.approx(1 / 3)


def test_candidate_sets_and_accuracy_ties():
    log = pd.DataFrame({
        "user_id": [1] * 5 + [2, 2],
        "item_id": [1, 2, 3, 4, 5, 6, 7],
        "ts": [DAY + 10, DAY + 20, DAY + 30, 2 * DAY + 1, DAY + 40, DAY + 1, DAY + 2],
        "feedback": [0, -1, 1, 0, -1, -1, -1],
    })
    keys = pd.DataFrame({"user_id": [1, 2], "cut_ts": [DAY, DAY]})
    target, cands = candidate_sets(log, keys, size=3)
    # user 1: target 2; same-day non-negatives 1 and 3 (4 is another day, 5 is a negative)
    assert target.tolist() == [2, -1] and cands.to_lists() == [[1, 2, 3], []]
    rows, items = cands.rows, cands.indices
    acc, chance = candidate_accuracy(np.array([-np.inf, -np.inf, -np.inf]), items == 2, rows, 2)
    assert acc[0] == pytest.approx(1 / 3) and np.isnan(acc[1])  # all tied: 1/3 credit
    acc, _ = candidate_accuracy(np.array([0.0, 1.0, 1.0]), items == 2, rows, 2)
    assert acc[0] == pytest.approx(0.5)


def test_an_item_also_disliked_that_day_is_no_candidate():
    """Item 3 is met without a negative, then disliked the same day: it is neither a "not disliked"
    candidate nor the target (the first negative, item 2)."""
    log = pd.DataFrame({"user_id": [1] * 4, "item_id": [1, 2, 3, 3],
                        "ts": [DAY + 10, DAY + 20, DAY + 30, DAY + 40], "feedback": [0, -1, 0, -1]})
    target, cands = candidate_sets(log, pd.DataFrame({"user_id": [1], "cut_ts": [DAY]}), size=5)
    assert target.tolist() == [2] and cands.to_lists() == [[1, 2]]


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="predictions: missing column"):
        evaluate_predictions(pd.DataFrame({"user_id": [1]}), pd.DataFrame({"user_id": [1]}))
    with pytest.raises(ValueError, match="unknown kind"):
        evaluate_predictions(pd.DataFrame({"user_id": [1], "cut_ts": [0], "rank": [0], "item_id": [1]}),
                             pd.DataFrame({"user_id": [1], "cut_ts": [0], "item_id": [1], "ts": [1], "kind": ["meh"]}))


@pytest.mark.parametrize("case", ["in_order", "shuffled", "rank_ties", "float_ranks", "no_score"])
def test_rankings_from_frame_orders_like_a_full_sort(case):
    """The packed-key fast path and the lexsort fallback give the order of a full
    (row, rank, -score, item) sort, whatever the file's row order and rank type."""
    from negrec.eval.metrics import rankings_from_frame

    rng = np.random.default_rng(7)
    n_users, k = 40, 6
    preds = pd.DataFrame({"user_id": np.repeat(np.arange(n_users) * 3 + 1, k), "cut_ts": 86400 * 5,
                          "rank": np.tile(np.arange(1, k + 1), n_users),
                          "item_id": rng.integers(0, 1000, n_users * k), "score": rng.normal(size=n_users * k)})
    if case == "rank_ties":  # pairs share a rank: higher score first, then smaller item
        preds["rank"] = preds["rank"] // 2
        preds.loc[::7, "score"] = 0.0
    if case == "float_ranks":
        preds["rank"] = preds["rank"].astype(float) / 10
    if case == "no_score":
        preds = preds.drop(columns="score")
    if case != "in_order":
        preds = preds.sample(frac=1.0, random_state=3).reset_index(drop=True)
    keys = pd.DataFrame({"user_id": np.arange(n_users + 2) * 3 + 1, "cut_ts": 86400 * 5})  # 2 rows with no predictions
    got = rankings_from_frame(preds, keys)
    ref = preds.assign(neg=-preds["score"] if "score" in preds else 0.0)
    ref = ref.sort_values(["user_id", "rank", "neg", "item_id"], kind="stable")
    for row, (user, cut) in enumerate(keys[["user_id", "cut_ts"]].itertuples(index=False)):
        want = ref[ref["user_id"] == user]["item_id"].tolist()
        assert got[row][: len(want)].tolist() == want and (got[row][len(want):] == -1).all()


def test_long_tail_item_recall_matches_a_direct_computation():
    """evaluate_arrays reuses the F_H hit matrix for the long-tail-item variant; it must equal
    rank_metrics on the long-tail target sets computed from scratch."""
    rng = np.random.default_rng(11)
    n, n_items = 300, 80
    rankings = rng.integers(-1, n_items + 5, size=(n, 12))  # padding and ids beyond the count table
    rows = rng.integers(0, n, 900)
    future = {7: ItemSets.from_pairs(rows, rng.integers(0, n_items + 5, 900), n)}
    item_negs = rng.integers(0, 10, n_items)
    cfg = MetricsConfig(ks=[5, 10], fhr_k=10, horizons=[7])
    out = evaluate_arrays(rankings, future, cfg, item_train_negatives=item_negs)
    ranked = clean_rankings(rankings, None, k=10)
    t = future[7]
    counts = np.array([item_negs[i] if i < n_items else 0 for i in t.indices])
    lt = t.drop(counts >= cfg.long_tail_item_negatives)
    direct = rank_metrics(ranked, lt, [5, 10])
    for k in (5, 10):
        v = direct[f"recall@{k}"]
        assert out[f"lt_item/recall@{k}_h7"] == pytest.approx(float(v[~np.isnan(v)].mean()))


def test_standard_recall_and_mrr_hand_computed():
    rankings = np.array([[5, 1, 2, 9], [4, 8, 7, 6], [3, 1, 2, 4]])
    targets = ItemSets.from_lists([[1, 9, 40, 41, 42], [3], [3]])
    m = rank_metrics(rankings, targets, ks=[1, 2, 4])
    # row 0: hits at places 2 and 4 of |F| = 5: standard recall divides by 5, ours by min(K, 5)
    assert m["std_recall@4"][0] == pytest.approx(2 / 5) and m["recall@4"][0] == pytest.approx(2 / 4)
    assert m["std_recall@2"][0] == pytest.approx(1 / 5) and m["recall@2"][0] == pytest.approx(1 / 2)
    assert m["mrr@1"][0] == 0.0 and m["mrr@2"][0] == pytest.approx(0.5) and m["mrr@4"][0] == pytest.approx(0.5)
    assert m["mrr@4"][1] == 0.0 and m["std_recall@4"][1] == 0.0  # no hit
    assert m["mrr@1"][2] == 1.0 and m["std_recall@1"][2] == 1.0


def test_per_row_values_average_to_the_reported_metrics():
    """per_row=True: one row per (user, cut) with its user_id; the mean of each column over its
    non-NaN rows is the reported metric, and the summary keys stay what they were."""
    rng = np.random.default_rng(5)
    n = 120
    rankings = rng.integers(0, 60, size=(n, 20))
    future = {h: ItemSets.from_pairs(rng.integers(0, n, 150 * h), rng.integers(0, 60, 150 * h), n) for h in (1, 7)}
    next_neg = ItemSets.from_pairs(rng.integers(0, n, 80), rng.integers(0, 60, 80), n)
    cfg = MetricsConfig(ks=[5, 10], horizons=[1, 7], fhr_k=20)
    users = np.repeat(np.arange(n // 3), 3)
    plain = evaluate_arrays(rankings, future, cfg, next_neg=next_neg)
    out = evaluate_arrays(rankings, future, cfg, next_neg=next_neg, per_row=True, row_users=users)
    rows = out.pop("per_row")
    assert out == plain  # asking for rows changes no summary value
    assert rows["user_id"].tolist() == users.tolist() and len(rows) == n
    expected = {f"{m}@{k}_h{h}" for m in ("recall", "std_recall", "hit", "ndcg", "mrr") for k in (5, 10)
                for h in (1, 7)} | {"fhr@20_h1", "fhr@20_h7", "next_hit@5", "next_hit@10", "next_hit@20"}
    assert expected <= set(rows.columns)
    for col in expected:
        assert rows[col].mean() == pytest.approx(out[col]), col  # pandas' mean skips NaN rows, as the metric does
    assert rows["recall@10_h1"].isna().sum() == out["n_empty_h1"]
