"""`run_evaluate` end to end on a tiny synthetic run folder: CIs in metrics.json, eval/paired.json,
eval/slices.json, the CI table, and the report's tables and error-bar plot from those files."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from negrec.contract import mark_done
from negrec.eval.run import history_lengths, negative_ratios, resolve_pairs, run_evaluate, targets_frame

DAY = 86_400
CUT = 100 * DAY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """80 users with 5..150 events before one cut each, 1..4 negatives in the 7 days after it, and
    four methods that put a future negative in their top 10 with rising probability."""
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("eval_run")
    users = np.arange(1, 81) * 10
    hist = rng.integers(5, 150, len(users))
    log = pd.DataFrame({"user_id": np.repeat(users, hist),
                        "item_id": rng.integers(0, 300, hist.sum()),
                        "ts": CUT - rng.integers(1, 50 * DAY, hist.sum()),
                        "feedback": rng.choice([-1, 0, 1], hist.sum(), p=[0.25, 0.25, 0.5])})
    n_fut = rng.integers(1, 5, len(users))
    fut = pd.DataFrame({"user_id": np.repeat(users, n_fut), "item_id": 1000 + np.arange(n_fut.sum()),
                        "ts": CUT + rng.integers(0, 7 * DAY, n_fut.sum()), "feedback": -1})
    (run / "data").mkdir()
    pd.concat([log, fut]).to_parquet(run / "data" / "interactions.parquet")
    (run / "eval" / "predictions").mkdir(parents=True)
    targets = fut.assign(cut_ts=CUT, kind="hated")[["user_id", "cut_ts", "item_id", "ts", "kind"]]
    targets.to_parquet(run / "eval" / "targets.parquet")
    first_target = fut.groupby("user_id")["item_id"].min().reindex(users).to_numpy()
    for method, p in (("random", 0.0), ("popular_negatives", 0.2), ("sft_next", 0.3), ("grpo", 0.7)):
        items = 500 + rng.integers(0, 400, (len(users), 20))
        hit = rng.random(len(users)) < p
        items[hit, rng.integers(0, 10, hit.sum())] = first_target[hit]
        pd.DataFrame({"user_id": np.repeat(users, 20), "cut_ts": CUT, "rank": np.tile(np.arange(20), len(users)),
                      "item_id": items.ravel()}).to_parquet(run / "eval" / "predictions" / f"{method}.parquet")
    raw = {"eval": {"metrics": {"ks": [5, 10, 20, 50], "horizons": [1, 7], "main_horizon": 7, "bootstrap": 300,
                                "swing_top_n": 0}}}
    mark_done(raw, run, "data")  # assembled by hand: marked as the stage would have
    result = run_evaluate(raw, run)
    return run, result


def test_metrics_json_has_cis_around_each_value(run_dir):
    run, result = run_dir
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"random", "popular_negatives", "sft_next", "grpo"}
    for method, m in metrics.items():
        for key in ("recall@10_h7", "std_recall@10_h7", "ndcg@10_h7", "mrr@10_h7", "fhr@20_h7", "recall@50_h7",
                    "hit@5_h7", "next_hit@10"):
            assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"], (method, key)
        assert m["n_users"] == 80 and m["n_users_h7"] == 80 and m["ci_level"] == 0.95
    # grpo hits a target in its top 10 for ~70% of the users, random never
    assert metrics["random"]["fhr@20_h7_hi"] == 0.0 and metrics["grpo"]["fhr@20_h7_lo"] > 0.5
    assert "[" in (run / "eval" / "results_table.txt").read_text()
    md = (run / "eval" / "results_table.md").read_text()
    assert "| method | Recall@10 | Recall@50 | FHR@20 |" in md and " [" in md
    assert "Paired differences" in result["paired"]


def test_paired_json_compares_main_policy_with_its_rivals(run_dir):
    run, _ = run_dir
    pairs = json.loads((run / "eval" / "paired.json").read_text())
    # grpo_plain is missing: only grpo vs the best baseline (popular_negatives) and vs sft_next
    assert {(p["a"], p["b"]) for p in pairs} == {("grpo", "popular_negatives"), ("grpo", "sft_next")}
    assert {p["metric"] for p in pairs} == {"recall@10_h7", "fhr@20_h7", "recall@50_h7", "recall@5_h7"}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for p in pairs:
        assert p["diff"] == pytest.approx(metrics[p["a"]][p["metric"]] - metrics[p["b"]][p["metric"]])
        assert p["lo"] <= p["diff"] <= p["hi"] and 0 < p["p"] <= 1 and p["n"] == 80
    gap = next(p for p in pairs if p["b"] == "popular_negatives" and p["metric"] == "fhr@20_h7")
    assert gap["lo"] > 0 and gap["p"] < 0.01


def test_slices_json_bins_rows_by_history_and_negative_ratio(run_dir):
    run, _ = run_dir
    sl = json.loads((run / "eval" / "slices.json").read_text())
    assert set(sl["bins"]) == {"history_len", "neg_ratio"}
    grpo = [r for r in sl["rows"] if r["method"] == "grpo" and r["metric"] == "recall@10_h7"]
    for name in ("history_len", "neg_ratio"):
        assert sum(r["n"] for r in grpo if r["slice"] == name) == 80  # every row in exactly one bin
    for r in grpo:
        assert r["n"] == 0 or r["lo"] <= r["mean"] <= r["hi"]


def test_report_tables_and_error_bars(run_dir, tmp_path):
    from negrec.eval.report import paired_markdown, plot_recall_at_k, slice_markdown

    run, _ = run_dir
    pairs = json.loads((run / "eval" / "paired.json").read_text())
    md = paired_markdown(pairs)
    assert md.count("\n") == len(pairs) + 2 and "grpo | sft_next | recall@10_h7" in md
    sl = slice_markdown(json.loads((run / "eval" / "slices.json").read_text()))
    assert "**recall@10_h7**" in sl and "history_len <20" in sl
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert plot_recall_at_k(metrics, 7, [5, 10, 20, 50], tmp_path / "r.png") == "r.png"


def test_history_lengths_and_negative_ratios_match_a_direct_count():
    log = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "ts": [5, 10, 20, 1, 30, 7], "item_id": 0,
                        "feedback": [-1, 1, -1, 1, 1, -1]})
    keys = pd.DataFrame({"user_id": [1, 1, 2, 4], "cut_ts": [10, 21, 30, 5]})
    # an event at the cut is not before it; user 4 has none
    assert history_lengths(log, keys).tolist() == [1, 3, 1, 0]
    assert negative_ratios(log, keys).tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])


def test_validation_targets_end_at_the_users_test_cut():
    """A validation row's F_H and next negative stop at the user's test cut (as its sample columns do);
    a test row's do not."""
    from types import SimpleNamespace

    log = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 8, 9], "ts": [2 * DAY, 4 * DAY, 30 * DAY],
                        "feedback": [-1, -1, -1], "kind": ["hated"] * 3})
    data = SimpleNamespace(interactions=log, cuts=pd.DataFrame({"user_id": [1], "test_cut": [3 * DAY]}))
    rows = pd.DataFrame({"user_id": [1], "cut_ts": [DAY]})
    assert targets_frame(data, rows, [7], "valid")["item_id"].tolist() == [7]
    assert targets_frame(data, rows, [7], "test")["item_id"].tolist() == [7, 8]
    late = pd.DataFrame({"user_id": [1], "cut_ts": [5 * DAY]})  # nothing within 7 days: the next one, day 30
    assert targets_frame(data, late, [7], "test")["item_id"].tolist() == [9]
    assert targets_frame(data, pd.DataFrame({"user_id": [1], "cut_ts": [int(2.5 * DAY)]}), [7], "valid").empty


def test_training_log_bounds_users_outside_the_evaluated_rows():
    """User 1 is evaluated (cut at 10); user 2 is not (an eval.max_users sample left it out): its
    events stop at the run's own fit limit when one is known, else all are kept (an outside log)."""
    from negrec.eval.metrics import training_log

    log = pd.DataFrame({"user_id": [1, 1, 2, 2, 2], "item_id": [5, 6, 7, 8, 9], "ts": [5, 15, 5, 12, 30],
                        "feedback": -1})
    keys = pd.DataFrame({"user_id": [1], "cut_ts": [10]})
    assert training_log(log, keys)["item_id"].tolist() == [5, 7, 8, 9]
    assert training_log(log, keys, pd.Series({1: 99, 2: 12}))["item_id"].tolist() == [5, 7]


def test_resolve_pairs_defaults_and_config():
    metrics = {"random": {"recall@10_h7": 0.1}, "item_knn": {"recall@10_h7": 0.3}, "grpo": {}, "grpo_plain": {},
               "sft_next": {}}
    assert resolve_pairs(metrics, 7) == [("grpo", "item_knn"), ("grpo", "sft_next"), ("grpo", "grpo_plain")]
    wanted = ["sft_next:best_baseline", "grpo:missing", "grpo:grpo"]
    assert resolve_pairs(metrics, 7, wanted) == [("sft_next", "item_knn")]
    assert resolve_pairs({"random": {}}, 7) == []


def test_report_md_shows_cis_pairs_and_slices(run_dir, tmp_path):
    import shutil

    from negrec.eval.report import run_report

    run, _ = run_dir
    shutil.copytree(run / "eval", tmp_path / "eval")  # no data/: the report skips the example users
    (tmp_path / "eval" / "_DONE.evaluate").unlink()  # its marker names the other run's data: outputs only
    run_report({"eval": {"metrics": {"ks": [5, 10, 20, 50], "horizons": [1, 7]}}}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Paired comparisons" in md and "| grpo | popular_negatives | recall@10_h7 |" in md
    assert "## By user slice" in md and "**fhr@20_h7**" in md
    assert re.search(r"\| \d\.\d{4} \[\d\.\d{3}, \d\.\d{3}\] \|", md)  # the results table's CI cells
    assert (tmp_path / "plots" / "recall_at_k.png").exists()


def test_the_table_shows_fhr_at_the_configured_k(run_dir):
    from negrec.eval.run import results_table, results_table_ci

    run, _ = run_dir
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "FHR@20" in results_table_ci(metrics, 7).columns
    m = {"grpo": {"fhr@10_h7": 0.5, "fhr@10_h7_lo": 0.4, "fhr@10_h7_hi": 0.6, "fhr@20_h7": 0.9}}
    table = results_table_ci(m, 7, fhr_k=10)
    assert "FHR@20" not in table.columns and table["FHR@10"].iloc[0].startswith("0.5") and "[0.4" in table["FHR@10"].iloc[0]
    assert results_table(m, 7, fhr_k=10)["FHR@10"].iloc[0] == 0.5


def test_max_users_keeps_whole_users_with_all_their_rows():
    """`eval.max_users` samples users, not rows: with rolling cuts every row of a kept user stays."""
    from types import SimpleNamespace

    from negrec.eval.run import EvalConfig, _eval_samples

    rows = pd.DataFrame({"user_id": np.repeat(np.arange(10), 3), "cut_ts": np.tile([100, 200, 300], 10)})
    prepared = SimpleNamespace(samples={"test": rows.sample(frac=1.0, random_state=1)})
    s = _eval_samples(prepared, EvalConfig(max_users=4))
    assert s["user_id"].nunique() == 4 and len(s) == 12
    assert s.groupby("user_id")["cut_ts"].apply(list).map(lambda c: c == [100, 200, 300]).all()
    assert len(_eval_samples(prepared, EvalConfig(max_users=0))) == 30


def test_the_grpo_row_is_named_plain_grpo_when_it_ran_without_progression(tmp_path):
    from negrec.eval.run import POLICY_LABELS, policy_labels

    assert policy_labels(tmp_path)["grpo"] == POLICY_LABELS["grpo"] == "negrec (progressive GRPO)"
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({"progressive": False}))
    assert policy_labels(tmp_path)["grpo"] == "negrec (plain GRPO)"


@pytest.mark.parametrize("progressive", [True, False])
def test_the_grpo_row_says_when_validation_kept_the_sft_start(tmp_path, progressive):
    from negrec.eval.run import policy_labels

    (tmp_path / "grpo").mkdir()
    summary = {"progressive": progressive, "kept": {"name": "neg_pos"}}
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps(summary))
    assert "SFT start" not in policy_labels(tmp_path)["grpo"]
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({**summary, "kept": {"name": "sft", "step": 8}}))
    assert "SFT start" not in policy_labels(tmp_path)["grpo"]  # a stage its user named "sft"
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({**summary, "kept": {"name": "sft", "step": 0}}))
    kind = "progressive" if progressive else "plain"
    assert policy_labels(tmp_path)["grpo"] == f"negrec ({kind} GRPO, validation kept its SFT start)"


def _stage_writes(raw, run, stage, methods):
    """Write `methods`' predictions as stage `stage` would (the fixture's files, rewritten)."""
    from negrec.contract import shared_stage_files
    from negrec.io import write_json, write_parquet

    with shared_stage_files(raw, run, stage):
        for m in methods:
            write_parquet(run / "eval" / "predictions" / f"{m}.parquet",
                          pd.read_parquet(run / "eval" / "predictions" / f"{m}.parquet"))
        write_json(run / "eval" / f"{stage}_summary.json", {m: {} for m in methods})


def test_evaluate_scores_what_the_stages_wrote_and_refuses_a_deleted_file(run_dir, tmp_path, capsys):
    """A predictions file no stage of this run wrote (a method the config dropped) is not scored; a
    file a stage wrote and someone deleted is refused in one line, not left out of the table."""
    import shutil

    from negrec.cli import main
    from negrec.config import check_config
    from negrec.contract import state
    from negrec.io import write_yaml

    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    raw = {"eval": {"metrics": {"ks": [5, 10, 20, 50], "horizons": [1, 7], "main_horizon": 7, "bootstrap": 50,
                                "swing_top_n": 0}}}
    write_yaml(run / "config.yaml", raw)
    check_config(raw)  # resolved as every command resolves it (prompt.day_breaks under the default day cuts)
    _stage_writes(raw, run, "baselines", ["random", "popular_negatives"])
    _stage_writes(raw, run, "predict", ["grpo"])  # sft_next: left by an older config
    capsys.readouterr()
    metrics = run_evaluate(raw, run)["metrics"]
    assert set(metrics) == {"random", "popular_negatives", "grpo"}
    assert "sft_next.parquet: not written by this run's baselines or predict stage" in capsys.readouterr().out

    # a baselines marker from before markers recorded files (an upgraded run folder): its files
    # are those no other marker names, the stray one included (nothing tells them apart)
    marker = run / "eval" / "_DONE.baselines"
    recorded = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in recorded.items() if k != "files"}))
    (run / "eval" / "_DONE.evaluate").unlink()  # evaluate again
    assert set(run_evaluate(raw, run)["metrics"]) == {"random", "popular_negatives", "grpo", "sft_next"}
    marker.write_text(json.dumps(recorded))

    (run / "eval" / "predictions" / "popular_negatives.parquet").unlink()
    assert state(raw, run, "baselines")["state"] == "missing"
    assert "popular_negatives.parquet is gone" in state(raw, run, "baselines")["why"]
    assert main(["evaluate", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "popular_negatives.parquet: missing (`negrec baselines` wrote it)" in err[0]


def test_a_split_without_future_dislikes_is_said_and_not_scored_silently(run_dir, tmp_path, capsys):
    """No test row with a dislike in its F_H (a log whose futures hold none): every metric is empty,
    and evaluate and the report say so, where the table used to be dashes without a word."""
    import shutil

    from negrec.eval.report import run_report

    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    pd.read_parquet(run / "eval" / "targets.parquet").iloc[:0].to_parquet(run / "eval" / "targets.parquet")
    raw = {"eval": {"metrics": {"ks": [5, 10], "horizons": [1, 7], "main_horizon": 7, "bootstrap": 50,
                                "swing_top_n": 0}}}
    capsys.readouterr()
    run_evaluate(raw, run)
    assert "[evaluate] warning: no test row has a dislike in the 7 days after its cut: every metric is empty" \
        in capsys.readouterr().err
    report = tmp_path / "report"
    shutil.copytree(run / "eval", report / "eval")  # no data/: the report skips the example users
    (report / "eval" / "_DONE.evaluate").unlink()  # its marker names the other run's data: outputs only
    run_report(raw, report)
    assert "**Warning: no test row has a dislike in the 7 days after its cut" in (report / "report.md").read_text()


def test_few_scored_users_are_warned_of():
    """One test user gives every bootstrap CI zero width: evaluate and the report say the intervals
    understate the uncertainty below FEW_USERS users; none at the fixture's 80."""
    from negrec.eval.run import FEW_USERS, scored_rows_warning

    assert scored_rows_warning({"n_eval_h7": 80, "n_users_h7": 80}, 7, "test") == ""
    one = scored_rows_warning({"n_eval_h7": 3, "n_users_h7": 1}, 7, "test")
    assert "only 1 test user(s)" in one and "zero width" in one
    assert scored_rows_warning({"n_eval_h7": FEW_USERS, "n_users_h7": FEW_USERS}, 7, "test") == ""
    assert "every metric is empty" in scored_rows_warning({"n_eval_h7": 0, "n_users_h7": 0}, 7, "test")
