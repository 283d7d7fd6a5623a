import json


def test_report_says_which_policy_grpo_shipped():
    from negrec.eval.report import grpo_selection_text

    curve = [{"name": "sft", "step": 0, "val_recall@10": 0.129}, {"name": "neg_pos", "step": 24, "val_recall@10": 0.127}]
    text = grpo_selection_text({"kept": {"name": "sft"}, "validation": curve})
    assert "sft (step 0) 0.1290" in text and "is the SFT policy" in text
    text = grpo_selection_text({"kept": {"name": "neg_pos"}, "validation": curve[::-1]})
    assert "Shipped: **neg_pos**" in text and "SFT policy" not in text
    assert "no validation selection" in grpo_selection_text({"kept": {"name": "plain"}})


def test_report_says_what_the_policy_knows_of_its_items():
    from negrec.eval.report import alignment_text

    a = {"n": 200, "title_to_sid": 0.45, "chance_title_to_sid": 0.0006, "sid_to_title": 0.04, "choice_sid_likelihood": 0.975,
         "choice_text_likelihood": 0.96, "choose_sid": 0.19, "choose_text": 0.265, "chance_choice": 0.25}
    text = alignment_text(a)
    assert "title -> SID 0.45 (chance 0.0006)" in text and "0.97 (SID) / 0.96 (text)" in text and "lettered 0.19 / 0.27" in text
    stepwise = alignment_text({**a, "choose_sid_stepwise": 0.44, "stepwise_first_code": 0.7})
    assert "code then letter 0.44 (chance 0.25; first code right 0.70)" in stepwise


def test_report_states_the_new_item_cap(tmp_path):
    from negrec.eval.report import new_targets_text
    from negrec.io import write_json

    assert new_targets_text(tmp_path / "stats.json") == ""  # a run prepared before the figure existed
    write_json(tmp_path / "stats.json", {"test_targets_unlogged_share": 0.94, "test_logged_recall@10_ceiling": 0.083})
    assert "94% of the test targets" in new_targets_text(tmp_path / "stats.json")
    assert "at most Recall@10 0.083" in new_targets_text(tmp_path / "stats.json")


def test_report_plots_each_sft_stage_learning_curve(tmp_path):
    """The SFT stages' curves reach report.md: the alignment loss with its phases, the next-negative
    loss with validation Recall@10; a stage that trained nothing is not plotted."""
    from negrec.eval.report import _stage_sections

    align = {"task": "align", "mode": "timeline", "loss_curve": [4.8, 2.1, 0.4, 1.7, 0.5],
             "phases": [{"loss_curve": [4.8, 2.1, 0.4]}, {"loss_curve": [1.7, 0.5]}]}
    nxt = {"task": "next", "loss_curve": [2.3, 1.7, 1.5, 1.4], "kept_epoch": 4,
           "history": [{"epoch": 1, "train_loss": 2.3}, {"epoch": 2, "train_loss": 1.7, "val_recall@10": 0.10},
                       {"epoch": 3, "train_loss": 1.5}, {"epoch": 4, "train_loss": 1.4, "val_recall@10": 0.15}]}
    for stage, summary in (("sft_align", align), ("sft_next", nxt)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "summary.json").write_text(json.dumps(summary))
    md = "\n".join(_stage_sections({}, tmp_path, tmp_path / "plots"))
    assert "(plots/sft_align_curve.png)" in md and "(plots/sft_next_curve.png)" in md
    assert (tmp_path / "plots" / "sft_align_curve.png").stat().st_size > 1000
    # an older run's folder of a stage this run skips is not this run's: not shown
    md = "\n".join(_stage_sections({"pipeline": {"skip": ["sft-align"]}}, tmp_path, tmp_path / "plots3"))
    assert "sft_align_curve" not in md and "(plots/sft_next_curve.png)" in md
    (tmp_path / "sft_align" / "summary.json").write_text(json.dumps({"task": "align", "skipped": "nothing", "steps": 0}))
    md = "\n".join(_stage_sections({}, tmp_path, tmp_path / "plots2"))
    assert "sft_align_curve" not in md and "(plots/sft_next_curve.png)" in md


def test_report_says_what_each_grpo_stage_did_beside_its_plot(tmp_path):
    """Each stage's mean reward (and exact hit rate), first half of its steps against the second, under
    the GRPO plot, followed by which policy GRPO shipped, before the later sections."""
    from negrec.eval.report import _stage_sections, grpo_stage_text

    hit = "rewards/future_neg_hit/mean"
    log = [{"global_step": i + 1, "stage": i // 4, "stage_name": ["neg_recent", "neg_pos"][i // 4],
            "reward": r, hit: h} for i, (r, h) in enumerate(zip([0.2, 0.4, 0.6, 0.8, 0.5, 0.5, 0.1, 0.3],
                                                                [0.0, 0.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]))]
    text = grpo_stage_text(log)
    assert "neg_recent 0.300 -> 0.700 (hit 0.000 -> 0.500)" in text and "neg_pos 0.500 -> 0.200 (hit 0.250 -> 0.000)" in text
    assert "hit" not in grpo_stage_text([{k: v for k, v in r.items() if k != hit} for r in log]).split(":", 1)[1]
    assert grpo_stage_text([]) == ""
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (tmp_path / "grpo" / "summary.json").write_text(json.dumps({"kept": {"name": "sft"}, "validation": [
        {"name": "sft", "step": 0, "val_recall@10": 0.13}, {"name": "neg_pos", "step": 8, "val_recall@10": 0.12}]}))
    (tmp_path / "tokenize").mkdir()
    (tmp_path / "tokenize" / "metrics.json").write_text(json.dumps({"unique_fraction": 1.0, "levels": [
        {"level": 0, "used": 30, "perplexity": 25.0, "size": 32}]}))
    md = "\n".join(_stage_sections({}, tmp_path, tmp_path / "plots"))
    plot, stages, shipped = (md.index("(plots/grpo_reward.png)"), md.index("neg_recent 0.300 -> 0.700"),
                             md.index("Shipped: **sft**"))
    assert plot < stages < shipped
    assert md.index("## Semantic IDs") > shipped
