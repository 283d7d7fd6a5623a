"""PEFT (model.peft) on tiny Qwen2 policies: LoRA + trainable SID rows under TRL's SFTTrainer,
the frozen-LLM SID-embeddings-only mode under the timeline trainer, saved policies (merged and
unmerged) reloading with the same logits, the TRL pass-through sections, and GRPO with LoRA."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from negrec.config import ConfigError, from_dict
from negrec.llm.model import ModelConfig, build_policy, load_policy, save_policy
from negrec.llm.peft import PeftSettings, apply_peft, new_token_ids, trainable_summary
from negrec.llm.prompts import CompactCodec, PromptBuilder, PromptConfig, alignment_examples
from negrec.train.sft import SFTStageConfig, train_sft
from tests.llm.conftest import random_sid_tokenizer, synthetic_items

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, bpe_vocab_size=300)


def _policy(tie=True, n_items=24, sizes=(4, 3, 3)):
    sid = random_sid_tokenizer(n_items, sizes, seed=2)
    items = synthetic_items(sid)
    model, hf, _ = build_policy(ModelConfig(**TINY, tie_embeddings=tie), sid, items, [], device="cpu")
    return model, hf, sid, items


def _frozen_unchanged(peft_model, before: dict) -> int:
    """Every frozen parameter of the PEFT model equals the base weight it wraps; returns how many."""
    n = 0
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            continue
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(p.detach(), before[key]), key
        n += 1
    return n


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_adapters_and_sid_rows_only_and_reloads_merged(tmp_path, tie):
    model, hf, sid, items = _policy(tie)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    new = new_token_ids(hf, sid)
    pm = apply_peft(model, PeftSettings(mode="lora", r=4, alpha=8, dropout=0.0), new)
    ex = alignment_examples(PromptBuilder(PromptConfig(), sid, items, hf), sid, items, tasks=["text_to_sid"], seed=0)
    cfg = SFTStageConfig(max_steps=4, batch_size=4, learning_rate=5e-2, logging_steps=1, save_steps=100, resume=False,
                         lr_scheduler="constant", warmup_ratio=0.0)
    trainer = train_sft(pm, hf, ex, cfg, tmp_path / "sft")
    pm = trainer.model
    trained = {n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {"base_model.model.model.embed_tokens.weight"} | (set() if tie else {"base_model.model.lm_head.weight"})
    assert _frozen_unchanged(pm, before) == len(before) - len(trained)  # every other base weight: frozen, unchanged
    ids = torch.as_tensor([[hf.bos_token_id] + new[:6] + [new[-1]] * 2])
    adapter_logits = _logits(pm, ids)
    save_policy(pm, hf, sid, tmp_path / "final", extra={"stage": "sft_align", "steps": 4})
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "final" / "peft.json").exists() and "sft_align" in (tmp_path / "final" / "README.md").read_text()
    merged, _, _ = load_policy(tmp_path / "final", device="cpu")
    assert torch.allclose(_logits(merged, ids), adapter_logits, atol=1e-4)
    emb = merged.get_input_embeddings().weight.detach()
    old = before["model.embed_tokens.weight"]
    assert not torch.allclose(emb[new], old[new])                       # the SID / feedback rows trained
    rest = torch.ones(len(emb), dtype=torch.bool)
    rest[new] = False
    assert torch.equal(emb[rest], old[rest])                             # no other row moved
    if not tie:
        assert not torch.allclose(merged.lm_head.weight.detach()[new], before["lm_head.weight"][new])


def _perturbed_unmerged_lora(model, hf, sid, scale: float = 0.05):
    """A LoRA policy saved with merge: false that looks trained without training: its LoRA weights perturbed."""
    pm = apply_peft(model, PeftSettings(mode="lora", r=4, alpha=8, dropout=0.0, merge=False), new_token_ids(hf, sid))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(scale * torch.randn_like(p))
    return pm


def test_unmerged_adapter_policy_loads_with_the_same_logits(tmp_path):
    model, hf, sid, items = _policy()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new = new_token_ids(hf, sid)
    pm = _perturbed_unmerged_lora(model, hf, sid)
    ids = torch.as_tensor([[hf.bos_token_id] + new[:5]])
    want = _logits(pm, ids)
    save_policy(pm, hf, sid, tmp_path / "final", extra={"stage": "sft_next"})
    from safetensors.torch import load_file

    top = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(torch.equal(top[k], before[k]) for k in top)              # top level: the untouched base
    loaded, _, _ = load_policy(tmp_path / "final", device="cpu")
    assert torch.allclose(_logits(loaded, ids), want, atol=1e-4)


def test_sid_embeddings_only_leaves_the_llm_frozen_in_the_timeline_trainer(tmp_path):
    from negrec.train.timeline import timeline_windows, train_timeline
    from tests.train.test_timeline import planted_log

    model, hf, sid, items = _policy(n_items=48, sizes=(6, 4, 4))  # planted_log needs 48 items
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    new = new_token_ids(hf, sid)
    pm = apply_peft(model, PeftSettings(mode="sid_embeddings_only"), new)
    assert {n for n, p in pm.named_parameters() if p.requires_grad} == {"model.embed_tokens.weight"}
    assert trainable_summary(pm)["trainable_params"] == len(new) * TINY["hidden_size"]  # the rows that train
    log = planted_log(np.asarray(sid.item_ids))
    log = log[log.user_id <= 8]
    builder = PromptBuilder(PromptConfig(format="compact", max_events=20), sid, items, hf)
    windows = timeline_windows(log, None, CompactCodec(sid, hf), 20, other_weight=1.0)
    cfg = SFTStageConfig(mode="timeline", max_steps=3, epochs=1, learning_rate=5e-2, batch_size=4, resume=False)
    train_timeline(pm, hf, sid, windows, [], builder, cfg, horizon=7)
    save_policy(pm, hf, sid, tmp_path / "final", extra={"stage": "sft_next"})
    merged, _, _ = load_policy(tmp_path / "final", device="cpu")
    after = dict(merged.named_parameters())
    for k, v in before.items():
        if k != "model.embed_tokens.weight":
            assert torch.equal(after[k].detach(), v), k                    # every non-embedding weight
    emb = after["model.embed_tokens.weight"].detach()
    assert not torch.allclose(emb[new], before["model.embed_tokens.weight"][new])
    rest = torch.ones(len(emb), dtype=torch.bool)
    rest[new] = False
    assert torch.equal(emb[rest], before["model.embed_tokens.weight"][rest])


def test_peft_settings_are_checked():
    with pytest.raises(ConfigError, match="model.peft.mode"):
        from_dict(ModelConfig, {"peft": {"mode": "qlora"}}, "cfg: model")
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        from_dict(ModelConfig, {"peft": {"alpah": 8}}, "cfg: model")
    assert from_dict(ModelConfig, {"peft": {"mode": "lora", "r": 8}}).peft.r == 8


def test_trainer_pass_through_refuses_unknown_keys_and_reaches_trl(tmp_path):
    from negrec.train.grpo import ProgressiveGRPOConfig, grpo_args

    with pytest.raises(ConfigError, match="'report_too' is not a field of SFTConfig .did you mean 'report_to'"):
        from_dict(SFTStageConfig, {"trainer": {"report_too": "wandb"}}, "cfg: sft_next")
    with pytest.raises(ConfigError, match="did you mean 'lr_scheduler_type'"):
        from_dict(ProgressiveGRPOConfig, {"trainer": {"lr_schedular_type": "cosine"}}, "cfg: grpo")
    with pytest.raises(ConfigError, match="'beta' is set by negrec"):
        from_dict(ProgressiveGRPOConfig, {"trainer": {"beta": 0.1}}, "cfg: grpo")
    cfg = ProgressiveGRPOConfig(num_generations=2, per_device_train_batch_size=4,
                                trainer={"optim": "sgd", "report_to": ["tensorboard"], "max_grad_norm": 0.5})
    args = grpo_args(cfg, cfg.stages[0], tmp_path, 3, 4, seed=0)
    assert args.optim == "sgd" and args.max_grad_norm == 0.5 and args.report_to in ([], "none", ["none"])
    assert args.bf16 is False  # CPU default

    model, hf, sid, items = _policy()
    ex = alignment_examples(PromptBuilder(PromptConfig(), sid, items, hf), sid, items, tasks=["text_to_sid"], seed=0)
    sft = SFTStageConfig(max_steps=1, batch_size=4, logging_steps=1, save_steps=100, resume=False,
                         trainer={"optim": "sgd", "report_to": ["tensorboard"], "weight_decay": 0.1})
    trainer = train_sft(model, hf, ex, sft, tmp_path / "sft", tb_dir=tmp_path / "tb")
    assert trainer.args.optim == "sgd" and trainer.args.weight_decay == 0.1
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))


def test_cli_refuses_an_unknown_trainer_field_before_the_run_starts(tmp_path, capsys):
    from negrec.cli import main

    run = tmp_path / "run"
    rc = main(["grpo", "--run-dir", str(run), "--set", "grpo.trainer.report_too=[tensorboard]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("negrec grpo: error:"), err
    assert "'report_too' is not a field of GRPOConfig" in err[-1] and "did you mean 'report_to'" in err[-1]
    assert not run.exists()  # refused before the run folder is made


def test_grpo_starts_an_unmerged_sft_policy_from_its_merged_copy(tmp_path):
    """`model.peft.merge: false` saves SFT as base weights + adapter/; GRPO (which refuses such a
    folder as its start) gets a merged copy with the same logits, written once."""
    from negrec.llm.peft import unmerged_adapter
    from negrec.train.grpo import merged_start

    model, hf, sid, items = _policy()
    new = new_token_ids(hf, sid)
    pm = _perturbed_unmerged_lora(model, hf, sid)
    ids = torch.as_tensor([[hf.bos_token_id] + new[:5]])
    want = _logits(pm, ids)
    save_policy(pm, hf, sid, tmp_path / "sft", extra={"stage": "sft_next"})
    start = merged_start(tmp_path / "sft", tmp_path / "merged")
    assert start == tmp_path / "merged" and unmerged_adapter(start) is None
    loaded, _, loaded_sid = load_policy(start, device="cpu")
    assert torch.allclose(_logits(loaded, ids), want, atol=1e-4)
    assert loaded_sid.all_tokens() == sid.all_tokens()
    written = (start / "model.safetensors").stat().st_mtime_ns
    assert merged_start(tmp_path / "sft", tmp_path / "merged") == start
    assert (start / "model.safetensors").stat().st_mtime_ns == written  # not rewritten
    assert merged_start(start, tmp_path / "again") == start             # a merged policy is its own start
    import json

    assert "peft" not in json.loads((start / "negrec_model.json").read_text())  # no adapter here to claim
    pm2 = _perturbed_unmerged_lora(_policy()[0], hf, sid, scale=0.1)
    want2 = _logits(pm2, ids)
    save_policy(pm2, hf, sid, tmp_path / "sft", extra={"stage": "sft_next"})  # SFT retrained: merged again
    again, _, _ = load_policy(merged_start(tmp_path / "sft", tmp_path / "merged"), device="cpu")
    assert torch.allclose(_logits(again, ids), want2, atol=1e-4) and not torch.allclose(want2, want, atol=1e-3)


def test_grpo_with_lora_runs_two_stages_and_writes_a_merged_policy(tmp_path):
    from _grpo_tiny import LEVELS, RecordingPrompts, hit_reward, make_constraint, tiny_hf_tokenizer, tiny_policy, \
        tiny_samples, tiny_sid_tokenizer

    from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, train_progressive_grpo

    sid = tiny_sid_tokenizer()
    hf = tiny_hf_tokenizer(sid)
    sft = tiny_policy(tmp_path / "sft", hf)
    stages = [GRPOStageConfig("a", context_mix=0.0, neg_window_days=None, max_steps=1, beta=0.1),
              GRPOStageConfig("b", context_mix=1.0, neg_window_days=None, max_steps=1, beta=0.1)]
    cfg = ProgressiveGRPOConfig(stages=stages, num_generations=2, per_device_train_batch_size=4, learning_rate=1e-2,
                                save_steps=100, logging_steps=1, seed=0, trainer={"report_to": ["tensorboard"]})
    out = tmp_path / "grpo"
    summary = train_progressive_grpo(
        cfg, sft_dir=sft, samples=tiny_samples(), build_prompt=RecordingPrompts(sid), reward_funcs=[hit_reward(sid)],
        sid_constraint=make_constraint(sid, hf), completion_length=LEVELS + 1, out_dir=out, tb_dir=tmp_path / "tb",
        peft=PeftSettings(mode="lora", r=4, alpha=8, dropout=0.0))
    assert summary["total_steps"] == 2
    assert list((tmp_path / "tb" / "trainer").glob("events.out.tfevents*"))  # grpo.trainer.report_to: [tensorboard]
    for d in (out / "stage0_a" / "final", out / "final"):
        assert (d / "adapter" / "adapter_model.safetensors").exists() and (d / "peft.json").exists()
        assert (d / "README.md").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    base = AutoModelForCausalLM.from_pretrained(sft)
    changed = [n for (n, a), (_, b) in zip(merged.named_parameters(), base.named_parameters()) if not torch.equal(a, b)]
    assert changed  # the merged adapter moved the policy away from the SFT weights


def test_run_sft_with_lora_writes_merged_policy_and_card(ml100k_prepared, tmp_path, monkeypatch):
    items = ml100k_prepared.items
    items = items[items.item_id <= 24].reset_index(drop=True)
    sid = random_sid_tokenizer(len(items), (4, 3, 3), seed=2)
    sid = type(sid).from_codes(items.item_id.to_numpy(), sid.codes, list(sid.codebook_sizes))
    run = tmp_path / "run"
    ml100k_prepared.save(run / "data")
    model, hf, _ = build_policy(ModelConfig(**TINY), sid, items, device="cpu")
    save_policy(model, hf, sid, run / "model")
    from negrec import contract
    from negrec.contract import mark_done, work_dir
    from negrec.train.sft import run_sft

    monkeypatch.setattr(contract, "drop_work", lambda run_dir, name: None)  # keep the checkpoints to look into

    raw = {"model": {"peft": {"mode": "lora", "r": 4}},
           "prompt": {"format": "verbose"},
           "sft_align": {"mode": "prompt", "phases": [], "max_steps": 2, "batch_size": 8, "max_items": 16,
                         "eval_items": 0, "save_steps": 1, "trainer": {"optim": "sgd"}}}
    for stage in ("data", "build-model"):  # assembled by hand: marked as the stages would have
        mark_done(raw, run, stage)
    s = run_sft(raw, run, task="align")
    final = run / "sft_align" / "final"
    assert s["steps"] == 2 and (final / "adapter" / "adapter_config.json").exists()
    card = (final / "README.md").read_text()
    assert "sft_align" in card and "PEFT: `lora`" in card and str(run / "model") in card
    assert "- data: examples " in card and f"train_loss {s['train_loss']}" in card  # fewer steps than logging_steps
    load_policy(final, device="cpu")
    # the trained SID rows are no adapter weight: each checkpoint carries them for resume
    assert list((work_dir(run, "sft-align") / "checkpoints").glob("checkpoint-*/negrec_token_rows.pt"))


@pytest.mark.timeout(900)
def test_lora_and_sid_rows_train_on_smollm2_and_reload_merged_and_unmerged(smollm2_gguf, tmp_path):
    """The pretrained path: SmolLM2-135M (the packaged GGUF, through negrec's loader) with LoRA and
    trainable SID rows, a few TRL steps on short sequences."""
    import copy
    import dataclasses

    sid = random_sid_tokenizer(24, (4, 3, 3), seed=2)
    items = synthetic_items(sid)
    model, hf, _ = build_policy(ModelConfig(source="smollm2", sid_init="text_mean"), sid, items, device="cpu")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    new = new_token_ids(hf, sid)
    settings = PeftSettings(mode="lora", r=4, alpha=8, dropout=0.0, merge=True)
    pm = apply_peft(model, settings, new)
    ex = alignment_examples(PromptBuilder(PromptConfig(), sid, items, hf), sid, items, tasks=["text_to_sid"], seed=0)
    cfg = SFTStageConfig(max_steps=3, batch_size=2, learning_rate=1e-2, max_length=64, logging_steps=1,
                         save_steps=100, resume=False, lr_scheduler="constant", warmup_ratio=0.0)
    pm = train_sft(pm, hf, ex, cfg, tmp_path / "sft").model

    trained = {n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {"base_model.model.model.embed_tokens.weight"}     # SmolLM2 ties its output to it
    assert _frozen_unchanged(pm, before) == len(before) - 1               # every other base weight: frozen, unchanged
    lora_b = [p for n, p in pm.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.detach().abs().sum() > 0 for p in lora_b)   # the adapters (B starts at zero) trained
    emb = pm.get_input_embeddings().weight.detach()
    old = before["model.embed_tokens.weight"]
    assert not torch.allclose(emb[new], old[new])                         # the SID rows trained
    rest = torch.ones(len(emb), dtype=torch.bool)
    rest[new] = False
    assert torch.equal(emb[rest], old[rest])                              # no text row moved

    ids = torch.as_tensor([[hf.bos_token_id or 0] + new[:6]])
    want = _logits(pm, ids)
    unmerged = copy.deepcopy(pm)  # save_policy unloads a PEFT model in place
    unmerged.negrec_peft = dataclasses.replace(settings, merge=False)
    save_policy(unmerged, hf, sid, tmp_path / "unmerged", extra={"stage": "sft_align"})
    save_policy(pm, hf, sid, tmp_path / "merged", extra={"stage": "sft_align"})
    for folder in ("unmerged", "merged"):
        loaded, _, _ = load_policy(tmp_path / folder, device="cpu")
        assert torch.allclose(_logits(loaded, ids), want, atol=1e-4), folder


def test_grpo_with_sid_embeddings_only_trains_the_new_token_rows_alone(tmp_path):
    """`model.peft.mode: sid_embeddings_only` under GRPO: no adapter; every weight but the new
    (SID) token rows stays the SFT policy's."""
    from _grpo_tiny import LEVELS, RecordingPrompts, make_constraint, tiny_hf_tokenizer, tiny_policy, \
        tiny_samples, tiny_sid_tokenizer
    from transformers import AutoModelForCausalLM

    from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, train_progressive_grpo

    sid = tiny_sid_tokenizer()
    hf = tiny_hf_tokenizer(sid)
    sft = tiny_policy(tmp_path / "sft", hf)
    stages = [GRPOStageConfig("a", context_mix=1.0, neg_window_days=None, max_steps=2, beta=0.1)]
    cfg = ProgressiveGRPOConfig(stages=stages, num_generations=4, per_device_train_batch_size=8, learning_rate=5e-2,
                                save_steps=100, logging_steps=1, seed=0)
    out = tmp_path / "grpo"

    def first_code_zero(prompts, completions, **kwargs):  # a reward that differs within every group
        return [float(c.startswith("<a_0>")) for c in completions]

    summary = train_progressive_grpo(
        cfg, sft_dir=sft, samples=tiny_samples(), build_prompt=RecordingPrompts(sid), reward_funcs=[first_code_zero],
        sid_constraint=make_constraint(sid, hf), completion_length=LEVELS + 1, out_dir=out,
        peft=PeftSettings(mode="sid_embeddings_only"))
    assert summary["total_steps"] == 2 and not (out / "final" / "adapter").exists()
    after = dict(AutoModelForCausalLM.from_pretrained(out / "final").named_parameters())
    before = dict(AutoModelForCausalLM.from_pretrained(sft).named_parameters())
    new = torch.as_tensor(new_token_ids(hf, sid))
    old = torch.as_tensor(sorted(set(range(len(hf))) - set(new.tolist())))
    emb = "model.embed_tokens.weight"
    assert [n for n in before if n != emb and not torch.equal(before[n], after[n])] == []  # the LLM frozen
    assert torch.equal(before[emb][old], after[emb][old])                                  # the text rows too
    assert not torch.equal(before[emb][new], after[emb][new])                              # the SID rows trained


def test_token_rows_alone_are_refused_under_zero3_partitioning():
    """ZeRO-3 leaves each rank an empty shard of the embedding: the row mask cannot be built."""
    from negrec.llm.peft import train_token_rows

    model, hf, sid, _ = _policy()
    model.get_input_embeddings().weight.ds_id = 0  # what deepspeed.zero.Init marks a partitioned parameter with
    with pytest.raises(ValueError, match="ZeRO-3"):
        train_token_rows(model, new_token_ids(hf, sid))
