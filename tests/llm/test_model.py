import numpy as np
import pytest
import torch

from negrec.llm.model import (ModelConfig, build_policy, load_policy, pick_dtype, save_policy, sid_token_init,
                              training_autocast)


def test_sid_tokens_are_single_tokens_and_embeddings_resized(tiny_policy):
    model, hf, sid, _ = tiny_policy
    assert model.get_input_embeddings().weight.shape[0] >= len(hf)
    for item in sid.item_ids[:10]:
        ids = hf(sid.tokens_for_item(item), add_special_tokens=False)["input_ids"]
        assert hf.convert_ids_to_tokens(ids) == sid.token_list(item)
        assert sid.item_for_tokens(hf.decode(ids)) == item


def test_text_mean_init_follows_item_content(small_sid_tok):
    from tests.llm.conftest import synthetic_items

    items = synthetic_items(small_sid_tok)
    cfg = ModelConfig(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, bpe_vocab_size=300)
    model, hf, _ = build_policy(cfg, small_sid_tok, items, device="cpu")
    emb = model.get_input_embeddings().weight.detach()
    vocab = hf.get_vocab()
    # recompute the level-0 token vectors by hand: mean text embedding of the items holding each code
    texts = dict(zip(items.item_id, items.title))
    rows = []
    for c in range(small_sid_tok.codebook_sizes[0]):
        members = small_sid_tok.item_ids[small_sid_tok.codes[:, 0] == c]
        tok_ids = [torch.as_tensor(hf(texts[i], add_special_tokens=False)["input_ids"]) for i in members]
        rows.append(torch.stack([emb[t].mean(0) for t in tok_ids]).mean(0))
    expected = torch.stack(rows)
    expected = expected - expected.mean(0)
    got = torch.stack([emb[vocab[small_sid_tok.token(0, c)]] for c in range(small_sid_tok.codebook_sizes[0])])
    cos = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    assert bool((cos > 0.999).all())
    # all three methods give distinct, finite vectors of the vocabulary's scale
    norm = float(emb[: len(hf) - len(small_sid_tok.all_tokens())].norm(dim=1).mean())
    for method in ("text_mean", "centroid", "random"):
        vecs = torch.stack(list(sid_token_init(model, hf, small_sid_tok, texts, method).values()))
        assert torch.isfinite(vecs).all() and 0.2 * norm < float(vecs.norm(dim=1).mean()) < 5 * norm
        assert len(torch.unique(vecs, dim=0)) == len(vecs)


def test_save_and_load_round_trip(tiny_policy, tmp_path):
    model, hf, sid, _ = tiny_policy
    save_policy(model, hf, sid, tmp_path / "policy")
    model2, hf2, sid2 = load_policy(tmp_path / "policy", device="cpu")
    assert hf2.get_vocab() == hf.get_vocab() and np.array_equal(sid2.codes, sid.codes)
    ids = torch.as_tensor([hf("user dislikes " + sid.tokens_for_item(sid.item_ids[0]))["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits, atol=1e-5)


def test_llama_arch_and_bad_config(small_sid_tok):
    from tests.llm.conftest import synthetic_items

    cfg = ModelConfig(arch="llama", hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, bpe_vocab_size=300, sid_init="random")
    model, hf, info = build_policy(cfg, small_sid_tok, synthetic_items(small_sid_tok), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and info["sid_tokens_added"] == len(small_sid_tok.all_tokens())
    with pytest.raises(ValueError, match="sid_init"):
        ModelConfig(sid_init="zeros")


def test_training_holds_fp32_weights_under_auto_and_bf16_mixed():
    """`auto` loads bf16 on CUDA for inference but trains fp32 master weights there, in bf16 autocast
    (bf16 weights lose AdamW's small updates); `bf16-mixed` is that on any device; a named dtype is
    kept throughout; anything else is refused naming the field."""
    assert pick_dtype("auto", "cuda") == torch.bfloat16 and pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda", training=True) == torch.float32
    assert pick_dtype("bf16-mixed", "cpu") == torch.float32 == pick_dtype("bf16-mixed", "cuda", training=True)
    assert pick_dtype("bfloat16", "cpu", training=True) == torch.bfloat16
    assert training_autocast("bf16-mixed", "cpu") == torch.bfloat16
    assert training_autocast("auto", "cpu") is None and training_autocast("bfloat16", "cpu") is None
    assert training_autocast("float32", "cpu") is None
    with pytest.raises(ValueError, match="model.dtype: expected one of auto, bf16-mixed, float32"):
        ModelConfig(dtype="fp16")


def test_smollm2_policy_saves_reloads_and_trains(small_sid_tok, tmp_path, smollm2_gguf):
    """The pretrained path (GGUF dequantized by transformers): SID tokens added, saved as a plain HF
    folder, reloaded with the same logits, and fine-tunable (transformers tags GGUF models as
    quantized, which used to make save_pretrained and Trainer refuse them)."""
    from tests.llm.conftest import synthetic_items

    cfg = ModelConfig(source="smollm2", sid_init="text_mean")
    model, hf, info = build_policy(cfg, small_sid_tok, synthetic_items(small_sid_tok), device="cpu")
    assert info["chat_template"] and info["sid_tokens_added"] == len(small_sid_tok.all_tokens())
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    save_policy(model, hf, small_sid_tok, tmp_path / "policy")
    model2, hf2, _ = load_policy(tmp_path / "policy", device="cpu")
    ids = torch.as_tensor([hf("dislikes " + small_sid_tok.tokens_for_item(small_sid_tok.item_ids[0]))["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, model2.eval()(ids).logits, atol=1e-4)
    # a few optimizer steps on a SID completion lower its loss: the new rows train
    model2.train()
    opt = torch.optim.Adam([model2.get_input_embeddings().weight], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model2(ids, labels=ids).loss
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
