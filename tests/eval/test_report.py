

def test_report_says_which_policy_grpo_shipped():
    from negrec.eval.report import grpo_selection_text

    curve = [{"name": "sft", "step": 0, "val_recall@10": 0.129}, {"name": "neg_pos", "step": 24, "val_recall@10": 0.127}]
    text = grpo_selection_text({"kept": {"name": "sft"}, "validation": curve})
    assert "sft (step 0) 0.1290" in text and "is the SFT policy" in text
    text = grpo_selection_text({"kept": {"name": "neg_pos"}, "validation": curve[::-1]})
    assert "Shipped: **neg_pos**" in text and "SFT policy" not in text
    assert "no validation selection" in grpo_selection_text({"kept": {"name": "plain"}})
