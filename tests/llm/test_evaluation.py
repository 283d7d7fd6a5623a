def test_stepwise_accuracy_tells_the_code_from_the_letter(monkeypatch):
    """A stepwise answer can know the item (its first code) and still miss the letter: both shares are
    reported, each over all questions."""
    import negrec.llm.evaluation as ev

    examples = [{"prompt": f"q{i}", "completion": f"<a_{i}> {letter}", "letter": letter}
                for i, letter in enumerate("ABCD")]
    answers = {"q0": "<a_0> A", "q1": "<a_1> C", "q2": "<a_7> C", "q3": "<a_3><b_1>"}
    monkeypatch.setattr(ev, "greedy_texts", lambda model, tok, prompts, **kw: [answers[p] for p in prompts])
    got = ev.stepwise_choice_accuracy(None, None, examples)
    assert got == {"letter": 0.5, "first_code": 0.75}


def test_a_trained_task_near_chance_is_named_beside_its_chance():
    """`unlearnt_tasks`: a trained task less than 0.10 above chance is named with its accuracy and
    chance; one 0.10 or more above, one that was not trained, or one the check does not measure, is not."""
    from negrec.llm.evaluation import unlearnt_tasks

    a = {"title_to_sid": 0.015, "chance_title_to_sid": 0.0006, "sid_to_title": 0.22, "choose_sid": 0.24,
         "choose_sid_stepwise": 0.34, "choose_text": 0.9, "chance_choice": 0.25}
    trained = ["text_to_sid", "sid_to_text", "choose_sid_stepwise", "features_to_sid", "text_to_sid"]
    assert unlearnt_tasks(a, trained) == ["text_to_sid 0.01 (chance 0.0006)", "choose_sid_stepwise 0.34 (chance 0.25)"]
    assert unlearnt_tasks({**a, "title_to_sid": 0.11, "choose_sid_stepwise": 0.36}, trained) == []
    assert unlearnt_tasks({**a, "choose_sid_stepwise": 70 / 200}, ["choose_sid_stepwise"]) == []  # 0.10 above: clear
    assert unlearnt_tasks(a, ["choose_text"]) == [] and unlearnt_tasks(a, ["choose_sid"]) == ["choose_sid 0.24 (chance 0.25)"]
    assert unlearnt_tasks({**a, "sid_to_title": 0.05}, ["sid_to_text"]) == ["sid_to_text 0.05 (chance 0)"]
