import numpy as np
import pytest
import torch

from negrec.llm.constrained import SidConstraint, cached, constrained_beam_search, constrained_sample
from negrec.tokenizer import SemanticIdTokenizer


@pytest.fixture(scope="module")
def hand_trie():
    from negrec.llm.model import train_bpe_tokenizer

    # items 10..13 with SIDs a0b0c1, a0b1c0, a1b0c0, a0b0c2
    sid = SemanticIdTokenizer.from_codes([10, 11, 12, 13], [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 2]], [2, 2, 3])
    hf = train_bpe_tokenizer(["some words to train on"] * 4, vocab_size=300, min_frequency=1)
    sid.extend(hf)
    return sid, hf, SidConstraint(sid, hf)


def _ids(hf, *tokens):
    return [hf.convert_tokens_to_ids(t) for t in tokens]


def _allowed(c, hf, prefix_tokens, exclude=None):
    gen = torch.tensor([_ids(hf, *prefix_tokens)], dtype=torch.long).reshape(1, len(prefix_tokens))
    dead = c.dead_node_keys([exclude]) if exclude else None
    mask = c.allowed_mask(gen, torch.zeros(1, dtype=torch.long), dead)
    return set(hf.convert_ids_to_tokens(torch.nonzero(mask[0]).flatten().tolist()))


def test_mask_follows_hand_built_trie(hand_trie):
    sid, hf, c = hand_trie
    assert _allowed(c, hf, []) == {"<a_0>", "<a_1>"}
    assert _allowed(c, hf, ["<a_0>"]) == {"<b_0>", "<b_1>"}
    assert _allowed(c, hf, ["<a_0>", "<b_0>"]) == {"<c_1>", "<c_2>"}
    assert _allowed(c, hf, ["<a_0>", "<b_1>"]) == {"<c_0>"}
    assert _allowed(c, hf, ["<a_1>"]) == {"<b_0>"}
    assert _allowed(c, hf, ["<a_1>", "<b_0>"]) == {"<c_0>"}
    assert _allowed(c, hf, ["<a_1>", "<b_0>", "<c_0>"]) == {hf.eos_token}
    assert _allowed(c, hf, ["<a_1>", "<b_1>"]) == set()  # off the trie: nothing continues it
    assert _allowed(c, hf, ["<b_0>"]) == set()           # wrong level


def test_exclusion_prunes_dead_prefixes(hand_trie):
    sid, hf, c = hand_trie
    assert _allowed(c, hf, [], exclude=[12]) == {"<a_0>"}
    assert _allowed(c, hf, ["<a_0>", "<b_0>"], exclude=[10]) == {"<c_2>"}
    assert _allowed(c, hf, ["<a_0>"], exclude=[10, 13]) == {"<b_1>"}
    assert _allowed(c, hf, [], exclude=[10, 11, 13]) == {"<a_1>"}


def test_processor_never_leaves_a_row_all_inf(hand_trie):
    sid, hf, c = hand_trie
    prompt = torch.zeros(3, 2, dtype=torch.long)
    gen = torch.tensor([_ids(hf, "<a_0>"), _ids(hf, "<b_0>"), _ids(hf, "<a_1>")])
    proc = c.logits_processor(prompt_len=2, exclude_items=[[], [], [12]])  # row 3: only item under a_1 excluded
    out = proc(torch.cat([prompt, gen], 1), torch.zeros(3, len(hf)))
    assert torch.isfinite(out).any(dim=1).all()
    assert torch.isfinite(out[0]).sum() == 2
    assert torch.isfinite(out[1]).sum() == 1 and out[1, hf.eos_token_id] < -1e3  # dead rows may only end, ranked last
    assert torch.isfinite(out[2]).sum() == 1 and out[2, hf.eos_token_id] < -1e3


def test_items_for_token_ids_round_trip(hand_trie):
    sid, hf, c = hand_trie
    table = torch.as_tensor(sid.token_id_table(hf))
    assert c.items_for_token_ids(table).tolist() == sid.item_ids.tolist()
    bad = table.clone()
    bad[0, 2] = table[1, 2]  # a0 b0 c0 is not an item
    assert c.items_for_token_ids(bad)[0].item() == -1


def _sid_logprob(model, hf, sid_tok, prompt, item, eos=True):
    """Teacher-forced log p(SID tokens (+ EOS) | prompt)."""
    p = hf(prompt)["input_ids"]
    target = hf.convert_tokens_to_ids(sid_tok.token_list(item)) + ([hf.eos_token_id] if eos else [])
    ids = torch.tensor([p + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(target)))


@pytest.mark.parametrize("eos", [True, False])
def test_beam_search_returns_k_distinct_valid_items(tiny_policy, eos):
    model, hf, sid_tok, items = tiny_policy
    c = SidConstraint(sid_tok, hf, eos=eos)
    prompts = [f"user {u} dislikes red night story" for u in range(6)]
    exclude = [list(sid_tok.item_ids[u * 3:(u + 1) * 3]) for u in range(6)]
    out = constrained_beam_search(model, hf, c, prompts, num_beams=20, top_k=10, exclude=exclude, batch_size=4)
    assert len(out) == len(prompts)
    valid = set(sid_tok.item_ids.tolist())
    for p, ranked in enumerate(out):
        got = [i for i, _ in ranked]
        assert len(got) == 10 and len(set(got)) == 10
        assert set(got) <= valid and not set(got) & set(exclude[p])
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
        # scores are the model's log-probability of the SID (+ EOS where answers end with it)
        for item, s in ranked[:3]:
            assert s == pytest.approx(_sid_logprob(model, hf, sid_tok, prompts[p], item, eos), abs=1e-3)
            if not eos:  # the EOS term is left out, not zero: the tiny random model gives it mass elsewhere
                assert s != pytest.approx(_sid_logprob(model, hf, sid_tok, prompts[p], item, True), abs=1e-3)


@pytest.mark.parametrize("eos", [True, False])
def test_cached_engine_matches_generate(tiny_policy, eos):
    """The prefill-once engine and `model.generate` + the LogitsProcessor rank the same items with
    the same scores, on prompts of different lengths (left padding) and with exclusions, whether
    answers end with EOS or not."""
    model, hf, sid_tok, _ = tiny_policy
    c = SidConstraint(sid_tok, hf, eos=eos)
    prompts = ["a user", "user 7 dislikes red night story and a much longer history of dark river items", "user 9"]
    exclude = [list(sid_tok.item_ids[:5]), [], list(sid_tok.item_ids[10:40])]
    fast = constrained_beam_search(model, hf, c, prompts, num_beams=12, top_k=12, exclude=exclude, batch_size=3)
    slow = constrained_beam_search(model, hf, c, prompts, num_beams=12, top_k=12, exclude=exclude, batch_size=3,
                                   engine="generate")
    for f, g in zip(fast, slow):
        assert len(f) == 12
        assert [i for i, _ in f] == [i for i, _ in g]
        assert [s for _, s in f] == pytest.approx([s for _, s in g], abs=1e-3)


@pytest.mark.parametrize("attention,eos", [("sdpa", True), ("eager", True), ("sdpa", False)])
def test_beams_sharing_the_prompt_cache_match_beams_with_copies_of_it(tiny_policy, attention, eos):
    """The tree steps (every beam's tokens in one pass over the shared prompt cache, a 4D mask
    keeping each beam to itself) give the beams, items and scores of the repeated-cache steps,
    with left padding, exclusions and more beams than the first level has codes."""
    from negrec.llm.constrained import _cached_beam_batch, encode_prompts

    model, hf, sid_tok, _ = tiny_policy
    c = SidConstraint(sid_tok, hf, eos=eos)
    prompts = ["a user", "user 7 dislikes red night story and a much longer history of dark river items", "user 9"]
    exclude = [list(sid_tok.item_ids[:5]), [], list(sid_tok.item_ids[10:40])]
    ids, attn = encode_prompts(hf, prompts, "cpu")
    saved = model.config._attn_implementation
    try:
        model.set_attn_implementation(attention)
        shared = _cached_beam_batch(model.eval(), c, ids, attn, 24, exclude, tree=True)
        copied = _cached_beam_batch(model, c, ids, attn, 24, exclude, tree=False)
        ranked = [constrained_beam_search(model, hf, c, prompts, num_beams=24, top_k=10, exclude=exclude, engine=e)
                  for e in ("cached", "repeated")]
    finally:
        model.set_attn_implementation(saved)
    assert torch.equal(shared[0], copied[0]) and (shared[0] >= 0).any()
    torch.testing.assert_close(shared[1], copied[1], atol=1e-4, rtol=0)
    assert [[i for i, _ in r] for r in ranked[0]] == [[i for i, _ in r] for r in ranked[1]]


def test_the_shared_cache_is_left_to_models_it_suits(tiny_policy, monkeypatch):
    """A sliding window or flash attention would see the 4D mask differently: those models keep
    copies of the cache. A forward without `logits_to_keep` gets the same beams from all logits."""
    import negrec.llm.constrained as C

    model, hf, sid_tok, _ = tiny_policy
    c = SidConstraint(sid_tok, hf)
    ids, attn = C.encode_prompts(hf, ["a user", "user 7 dislikes red night story"], "cpu")
    cache = model.eval()(input_ids=ids, attention_mask=attn, use_cache=True).past_key_values
    assert C._shares_prompt_cache(model, cache) and C._keeps_logits(model)
    for change in ({"use_sliding_window": True, "sliding_window": 4}, {"_attn_implementation": "flash_attention_2"}):
        with monkeypatch.context() as m:
            for k, v in change.items():
                m.setattr(model.config, k, v)
            assert not C._shares_prompt_cache(model, cache)
    shared = C._cached_beam_batch(model, c, ids, attn, 16, None, tree=True)
    monkeypatch.setattr(C, "_keeps_logits", lambda model: False)
    all_logits = C._cached_beam_batch(model, c, ids, attn, 16, None, tree=True)
    assert torch.equal(shared[0], all_logits[0])
    torch.testing.assert_close(shared[1], all_logits[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ["cached", "generate"])
def test_beam_search_ignores_model_generation_defaults(tiny_policy, engine):
    model, hf, sid_tok, _ = tiny_policy
    c = SidConstraint(sid_tok, hf)
    prompts = ["user dislikes dark river"]
    ref = constrained_beam_search(model, hf, c, prompts, num_beams=8, top_k=5, engine=engine)
    saved = model.generation_config
    try:
        model.generation_config = type(saved)(repetition_penalty=3.0, no_repeat_ngram_size=1, length_penalty=5.0,
                                              max_new_tokens=1, num_beams=2, top_k=2, temperature=0.1)
        again = constrained_beam_search(model, hf, c, prompts, num_beams=8, top_k=5, engine=engine)
    finally:
        model.generation_config = saved
    assert again == ref


@pytest.mark.parametrize("eos", [True, False])
def test_sampling_gives_valid_items_only(tiny_policy, eos):
    model, hf, sid_tok, _ = tiny_policy
    c = SidConstraint(sid_tok, hf, eos=eos)
    prompts = ["a user", "another user with a longer history text"]
    exclude = [list(sid_tok.item_ids[:30]), []]
    groups = constrained_sample(model, hf, c, prompts, num_generations=16, temperature=1.5, exclude=exclude, seed=0)
    assert [len(g) for g in groups] == [16, 16]
    valid = set(sid_tok.item_ids.tolist())
    for g, ex in zip(groups, exclude):
        for comp in g:
            assert comp["item_id"] in valid and comp["item_id"] not in ex
            assert sid_tok.item_for_tokens(comp["completion"]) == comp["item_id"]
    assert len({comp["item_id"] for comp in groups[1]}) > 1  # it samples, it does not repeat one answer


def test_score_items_reproduces_beam_scores(tiny_policy):
    """The candidate scorer (one prefill per prompt) gives each item the score beam search gave it,
    prompts of different lengths in one batch, items unknown to the trie score -inf; with or without
    the EOS after a SID."""
    model, hf, sid_tok, _ = tiny_policy
    for c in (SidConstraint(sid_tok, hf), SidConstraint(sid_tok, hf, eos=False)):
        _scores_match_beam_search(model, hf, c)


def _scores_match_beam_search(model, hf, c):
    from negrec.llm.evaluation import score_items

    prompts = ["a user", "another user with a much longer history text than the first one", "dark river"]
    ranked = constrained_beam_search(model, hf, c, prompts, num_beams=12, top_k=6)
    rows = [p for p, lst in enumerate(ranked) for _ in lst] + [1]
    items = [i for lst in ranked for i, _ in lst] + [-5]
    got = score_items(model, hf, c, prompts, rows, items, batch_size=2)
    want = [s for lst in ranked for _, s in lst]
    assert got[:-1] == pytest.approx(want, abs=1e-4)
    assert got[-1] == -np.inf


def test_the_kv_cache_goes_under_the_name_the_forward_takes(tiny_policy):
    """transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns on
    every decode and goes in 5.40): the decoder passes the cache under the name the model's forward
    has, the new one on the pinned transformers and the old one for a forward that predates it."""
    class OldForward(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None):
            return None

    assert list(cached(tiny_policy[0], "kv")) == ["cache"]
    assert cached(OldForward(), "kv") == {"past_key_values": "kv"}


def test_prompts_hand_their_decoders_the_constraint_of_their_answers(tiny_policy):
    """Every decoder of next-negative prompts (predict, the SFT's validation, GRPO) takes its trie
    from the prompt builder: answers end with EOS unless compact events go without it."""
    from negrec.llm.prompts import PromptBuilder, PromptConfig

    _, hf, sid_tok, _ = tiny_policy
    for cfg, eos in ((PromptConfig(format="compact"), True), (PromptConfig(format="verbose"), True),
                     (PromptConfig(format="compact", event_eos=False), False)):
        c = PromptBuilder(cfg, sid_tok, None, hf).sid_constraint(hf)
        assert c.eos == eos and c.new_tokens == sid_tok.levels + eos
