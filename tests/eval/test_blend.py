"""The policy re-ranked with a baseline (`negrec.eval.blend`): the fusion itself, and the row of its
own that `negrec evaluate` adds beside the policy's."""
import json

import numpy as np
import pandas as pd
import pytest

from negrec.contract import mark_done
from negrec.eval.blend import is_blend, rerank
from negrec.eval.run import resolve_pairs, run_evaluate

DAY = 86_400
CUT = 100 * DAY


def _frame(rows: dict[int, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([(u, CUT, r, i, -float(r)) for u, items in rows.items() for r, i in enumerate(items)],
                        columns=["user_id", "cut_ts", "rank", "item_id", "score"])


def test_rerank_keeps_the_policys_items_and_moves_those_the_baseline_ranks_high():
    policy = _frame({1: [10, 11, 12, 13, 14], 2: [20, 21, 22]})
    baseline = _frame({1: [14, 99, 12], 3: [30]})
    out = rerank(policy, baseline, weight=0.5, rrf_k=60)
    got = {u: g.sort_values("rank")["item_id"].tolist() for u, g in out.groupby("user_id")}
    # user 1: 12 (policy rank 2, baseline 2) 1.5/63 = 0.0238 and 14 (4, 0) 1/65 + 0.5/61 = 0.0236 pass
    # 10 (0, none) 1/61 = 0.0164; 99 is the baseline's only: never a candidate. User 2: no baseline
    # row, the policy's order
    assert got == {1: [12, 14, 10, 11, 13], 2: [20, 21, 22]}
    assert out.groupby("user_id")["rank"].apply(list).tolist() == [[0, 1, 2, 3, 4], [0, 1, 2]]
    assert list(out.columns) == ["user_id", "cut_ts", "rank", "item_id", "score"]
    # weight 0: the policy's own order; a small weight moves only near-ties
    same = rerank(policy, baseline, weight=0.0)
    assert same.groupby("user_id")["item_id"].apply(list).to_dict() == {1: [10, 11, 12, 13, 14], 2: [20, 21, 22]}
    small = rerank(policy, baseline, weight=0.01)
    assert small[small.user_id == 1]["item_id"].tolist() == [10, 11, 12, 13, 14]
    with pytest.raises(ValueError, match="blend.weight"):
        rerank(policy, baseline, weight=-1.0)


def test_the_blend_section_is_checked_with_the_config():
    from negrec.config import ConfigError, check_config

    check_config({"blend": {"baselines": ["item_knn"], "weight": 1.0}})
    for bad in ({"baselines": "user_knn"}, {"weight": -2}, {"with": ["user_knn"]}):
        with pytest.raises((ConfigError, ValueError), match="blend"):
            check_config({"blend": bad})


@pytest.fixture(scope="module")
def blended_run(tmp_path_factory):
    """60 users, each with one future negative: the policy has it at rank 8 of 20, user-kNN at rank
    0 of 20 (its other items unrelated), popularity never."""
    rng = np.random.default_rng(1)
    run = tmp_path_factory.mktemp("blend_run")
    users = np.arange(1, 61)
    log = pd.DataFrame({"user_id": np.repeat(users, 10), "item_id": rng.integers(0, 100, 600),
                        "ts": CUT - rng.integers(1, 30 * DAY, 600), "feedback": -1})
    fut = pd.DataFrame({"user_id": users, "item_id": 1000 + users, "ts": CUT + DAY, "feedback": -1})
    (run / "data").mkdir()
    pd.concat([log, fut]).to_parquet(run / "data" / "interactions.parquet")
    (run / "eval" / "predictions").mkdir(parents=True)
    fut.assign(cut_ts=CUT, kind="hated")[["user_id", "cut_ts", "item_id", "ts", "kind"]].to_parquet(
        run / "eval" / "targets.parquet")
    lists = {"grpo": lambda u: [500 + j for j in range(8)] + [1000 + u] + [600 + j for j in range(11)],
             "user_knn": lambda u: [1000 + u] + [700 + j for j in range(19)],
             "popular_negatives": lambda u: [800 + j for j in range(20)]}
    for method, items_of in lists.items():
        _frame({int(u): items_of(int(u)) for u in users}).to_parquet(run / "eval" / "predictions" / f"{method}.parquet")
    raw = {"eval": {"metrics": {"ks": [5, 10, 20], "horizons": [7], "main_horizon": 7, "bootstrap": 200,
                                "swing_top_n": 0}}, "blend": {"baselines": ["user_knn", "sasrec_neg"]}}
    (run / "eval" / "blends").mkdir()
    pd.DataFrame({"user_id": [1]}).to_parquet(run / "eval" / "blends" / "grpo+item_knn.parquet")  # an earlier config's
    mark_done(raw, run, "data")
    return run, run_evaluate(raw, run)


def test_evaluate_adds_the_blend_as_a_row_of_its_own(blended_run, capsys):
    run, result = blended_run
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"grpo", "user_knn", "popular_negatives", "grpo+user_knn"}
    # the policy's own row is untouched: its target at rank 8 is out of its top 5
    assert metrics["grpo"]["recall@5_h7"] == 0.0 and metrics["grpo"]["recall@10_h7"] == 1.0
    # re-ranked, user-kNN's first item (the policy's 9th) comes first
    assert metrics["grpo+user_knn"]["recall@5_h7"] == 1.0 and metrics["grpo+user_knn"]["mrr@10_h7"] == 1.0
    assert sorted(p.name for p in (run / "eval" / "blends").iterdir()) == ["grpo+user_knn.parquet"]  # sasrec_neg: not run
    blend = pd.read_parquet(run / "eval" / "blends" / "grpo+user_knn.parquet")
    policy = pd.read_parquet(run / "eval" / "predictions" / "grpo.parquet")
    assert sorted(blend["item_id"]) == sorted(policy["item_id"])  # the candidates stay the LLM's
    assert "re-ranked by user_knn" in result["table"]


def test_a_blend_is_compared_with_its_policy_and_never_counted_as_a_baseline(blended_run):
    run, _ = blended_run
    pairs = {(p["a"], p["b"]) for p in json.loads((run / "eval" / "paired.json").read_text())}
    assert pairs == {("grpo", "user_knn"), ("grpo+user_knn", "grpo"), ("grpo+user_knn", "user_knn")}
    assert is_blend("grpo+user_knn") and not is_blend("user_knn")
    metrics = {"user_knn": {"recall@10_h7": 0.1}, "grpo+user_knn": {"recall@10_h7": 0.9}, "grpo": {}}
    assert resolve_pairs(metrics, 7)[0] == ("grpo", "user_knn")
