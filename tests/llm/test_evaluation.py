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
