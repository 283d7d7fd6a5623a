import numpy as np
import pytest

from negrec.llm.prompts import PromptBuilder, PromptConfig

DAY = 86400


@pytest.fixture()
def row(small_sid_tok):
    ids = small_sid_tok.item_ids
    cut = 100 * DAY
    return {"user_id": 1, "cut_ts": cut,
            "neg_items": ids[:6], "neg_ts": np.array([cut - d * DAY for d in (10, 8, 5, 2.5, 1, 0.5)]),
            "neg_kinds": np.array(["low rating", "hated", "skipped", "low rating", "hated", "skipped"], dtype=object),
            "pos_items": ids[10:30], "pos_ts": np.arange(20) + cut - 20 * DAY, "pos_kinds": np.array(["liked"] * 20, dtype=object),
            "mixed_items": ids[30:40], "mixed_feedback": np.array([-1, 0, 1, 0, 0, 1, -1, 0, 1, 1]), "mixed_ts": np.arange(10)}


def _n_items(segment):
    return sum(segment.count(f"({k})") for k in ("hated", "skipped", "low rating", "liked", "neutral", "negative", "positive"))


def _segments(text, cfg):
    lines = text.splitlines()
    neg = next(line for line in lines if line.startswith(cfg.neg_header))
    pos = next(line for line in lines if line.startswith(cfg.pos_header))
    return neg, pos


def test_negative_and_positive_segments_are_apart_with_kinds(small_sid_tok, row):
    cfg = PromptConfig(format="verbose", max_neg=4, max_pos=5)
    b = PromptBuilder(cfg, small_sid_tok)
    neg, pos = _segments(b.build(row), cfg)
    ids = small_sid_tok.item_ids
    # the last 4 negatives, oldest first, each with its kind
    assert _n_items(neg) == 4 and "(hated)" in neg and "(skipped)" in neg and "(low rating)" in neg
    assert small_sid_tok.tokens_for_item(ids[2]) in neg and small_sid_tok.tokens_for_item(ids[1]) not in neg
    assert neg.index(small_sid_tok.tokens_for_item(ids[2])) < neg.index(small_sid_tok.tokens_for_item(ids[5]))
    assert pos.count("(liked)") == 5 and small_sid_tok.tokens_for_item(ids[29]) in pos
    assert not any(small_sid_tok.tokens_for_item(i) in pos for i in ids[:6])


def test_context_mix_scales_positive_history(small_sid_tok, row):
    cfg = PromptConfig(format="verbose", max_neg=10, max_pos=10, max_mixed=4)
    b = PromptBuilder(cfg, small_sid_tok)
    only_neg = b.build(row, context_mix=0.0)
    half = b.build(row, context_mix=0.5)
    full = b.build(row, context_mix=1.0)
    assert _segments(only_neg, cfg)[1] == f"{cfg.pos_header} {cfg.empty}" and cfg.mixed_header not in only_neg
    assert _segments(half, cfg)[1].count("(liked)") == 5
    assert _segments(full, cfg)[1].count("(liked)") == 10
    assert cfg.mixed_header in full and "(neutral)" in full
    assert _segments(only_neg, cfg)[0] == _segments(full, cfg)[0]  # negatives never drop out
    with pytest.raises(ValueError):
        b.build(row, context_mix=1.5)


def test_neg_window_keeps_recent_negatives_only(small_sid_tok, row):
    cfg = PromptConfig(format="verbose")
    neg, _ = _segments(PromptBuilder(cfg, small_sid_tok).build(row, neg_window_days=3), cfg)
    assert _n_items(neg) == 3  # negatives 2.5, 1 and 0.5 days before the cut


def test_titles_order_and_plain_template(small_sid_tok, row):
    from tests.llm.conftest import synthetic_items

    items = synthetic_items(small_sid_tok)
    cfg = PromptConfig(format="verbose", show_titles=True, title_words=2, order="pos_first")
    text = PromptBuilder(cfg, small_sid_tok, items).build(row)
    first_title = " ".join(items.set_index("item_id").loc[int(row["neg_items"][-1]), "title"].split()[:2])
    assert first_title in text
    assert text.index(cfg.pos_header) < text.index(cfg.neg_header)
    assert text.startswith(cfg.system) and text.endswith(cfg.answer_prefix)


def test_chat_template_when_tokenizer_has_one(small_sid_tok, row):
    from negrec.llm.model import train_bpe_tokenizer

    hf = train_bpe_tokenizer(["hello world"] * 3, vocab_size=280, min_frequency=1)
    hf.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text = PromptBuilder(PromptConfig(format="verbose"), small_sid_tok, hf_tokenizer=hf).build(row)
    assert text.startswith("<|system|>") and text.endswith("<|assistant|>")
    plain = PromptBuilder(PromptConfig(format="verbose", use_chat_template=False), small_sid_tok, hf_tokenizer=hf).build(row)
    assert plain.endswith("Answer:")


def test_compact_prompts_go_without_the_system_line_unless_one_is_set(small_sid_tok):
    """The alignment prompts (`wrap`) carry the system line under the verbose format only, unless
    `system` is set: under compact it was the same 14 tokens in every example."""
    from negrec.llm.model import train_bpe_tokenizer
    from negrec.llm.prompts import VERBOSE_SYSTEM

    question = "Describe item <a_1><b_2>."
    assert PromptBuilder(PromptConfig(format="compact"), small_sid_tok).wrap(question) == f"{question}\nAnswer:"
    assert PromptBuilder(PromptConfig(format="verbose"), small_sid_tok).wrap(question) == f"{VERBOSE_SYSTEM}\n{question}\nAnswer:"
    own = PromptConfig(format="compact", system="Be brief.")
    assert PromptBuilder(own, small_sid_tok).wrap(question) == f"Be brief.\n{question}\nAnswer:"
    hf = train_bpe_tokenizer(["hello world"] * 3, vocab_size=280, min_frequency=1)
    hf.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert PromptBuilder(PromptConfig(format="compact"), small_sid_tok, hf_tokenizer=hf).wrap(question).startswith("<|user|>")


def test_stepwise_choice_answers_with_the_first_code_then_the_letter(small_sid_tok):
    """`choose_sid_stepwise`: choose_sid's question, answered as the item's first code and then its
    letter; the distractors' first codes differ from the item's and from each other, so the first
    code is enough to find the option."""
    from negrec.llm.prompts import ALIGN_INSTRUCTIONS, CHOICE_LETTERS, alignment_examples, first_code
    from tests.llm.conftest import synthetic_items

    sid = small_sid_tok
    items = synthetic_items(sid)
    builder = PromptBuilder(PromptConfig(), sid, items)
    examples = alignment_examples(builder, sid, items, tasks=["choose_sid_stepwise"], seed=0)
    assert len(examples) == len(items) and {e["task"] for e in examples} == {"choose_sid_stepwise"}
    question = ALIGN_INSTRUCTIONS["choose_sid"].split("{options}")[-1]
    for e in examples:
        assert question.strip() in e["prompt"]
        options = dict(line.split(") ", 1) for line in e["prompt"].splitlines() if line[:3] in {f"{L}) " for L in CHOICE_LETTERS})
        assert sorted(options) == list(CHOICE_LETTERS)
        assert len({sid.codes_for_item(sid.item_for_tokens(t))[0] for t in options.values()}) == 4
        assert options[e["letter"]] == sid.tokens_for_item(e["item_id"])
        assert e["completion"] == f"{first_code(sid, e['item_id'])} {e['letter']}"
    assert len({e["letter"] for e in examples}) == 4


def test_stepwise_choice_with_fewer_first_codes_than_options_still_asks_four():
    from negrec.llm.prompts import alignment_examples
    from negrec.tokenizer import SemanticIdTokenizer
    from tests.llm.conftest import synthetic_items

    ids = np.arange(1, 13)
    codes = np.stack([ids % 2, ids // 2, np.zeros_like(ids)], 1)  # 2 first codes among 12 items
    sid = SemanticIdTokenizer.from_codes(ids, codes, [2, 7, 1])
    items = synthetic_items(sid)
    examples = alignment_examples(PromptBuilder(PromptConfig(), sid, items), sid, items, tasks=["choose_sid_stepwise"], seed=0)
    for e in examples:
        options = [line for line in e["prompt"].splitlines() if line[:3] in ("A) ", "B) ", "C) ", "D) ")]
        assert len(options) == 4 and len({o[3:] for o in options}) == 4


def test_the_default_alignment_tasks_ask_the_sid_question_once(small_sid_tok):
    """Called without `tasks`, the examples hold choose_sid and not its stepwise twin (the same
    prompt with another answer)."""
    from negrec.llm.prompts import alignment_examples
    from tests.llm.conftest import synthetic_items

    items = synthetic_items(small_sid_tok)
    tasks = {e["task"] for e in alignment_examples(PromptBuilder(PromptConfig(), small_sid_tok, items), small_sid_tok, items)}
    assert "choose_sid" in tasks and "choose_sid_stepwise" not in tasks


def test_one_of_the_two_answers_to_the_sid_question():
    from negrec.train.sft import SFTStageConfig

    with pytest.raises(ValueError, match="same question"):
        SFTStageConfig(tasks=["text_to_sid", "choose_sid", "choose_sid_stepwise"])
    SFTStageConfig(tasks=["text_to_sid", "choose_sid_stepwise"])


@pytest.mark.parametrize("text, letter", [("<a_3> C", "C"), ("<a_3>C", "C"), (" B", "B"), ("<a_3><b_1> A.", "A"),
                                          ("<a_3><b_1><c_2>", None), ("<a_3> Drama", None), ("<a_3> AB", None)])
def test_the_letter_of_a_stepwise_answer(text, letter):
    from negrec.llm.evaluation import stepwise_letter

    assert stepwise_letter(text) == letter


def test_event_eos_is_a_compact_setting(small_sid_tok):
    """Leaving out the EOS after every event's SID (`event_eos: false`) is the compact format's
    choice: a verbose answer always ends with EOS, so asking for none there is refused, and the
    builder says which it is."""
    assert PromptBuilder(PromptConfig(format="compact"), small_sid_tok).answer_eos
    assert not PromptBuilder(PromptConfig(format="compact", event_eos=False), small_sid_tok).answer_eos
    assert PromptBuilder(PromptConfig(format="verbose"), small_sid_tok).answer_eos
    with pytest.raises(ValueError, match="event_eos: false needs format: compact"):
        PromptConfig(format="verbose", event_eos=False)


def test_item_labels_are_cut_to_a_few_words_and_characters():
    """A catalogue's run-on titles or descriptions would make every alignment example thousands of
    tokens long (the timeline loop does not truncate): labels are cut, short titles kept as written."""
    from negrec.data.schema import LABEL_CHARS, LABEL_WORDS
    from negrec.llm.prompts import item_label

    title = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)"
    assert item_label({"title": f"  {title} ", "text": "x"}) == title
    assert item_label({"title": "", "text": "a b c"}) == "a b c"
    long = item_label({"title": " ".join(f"word{i}" for i in range(5000))})
    assert long.split() == [f"word{i}" for i in range(LABEL_WORDS)]
    assert len(item_label({"title": "x" * 10_000})) == LABEL_CHARS
