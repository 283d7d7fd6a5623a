"""Alignment / next-negative SFT of a tiny Qwen2 on a subset of ML-100K items (random unique SIDs,
so no RQ-VAE training is needed)."""
from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest
import torch

from negrec.llm.constrained import SidConstraint, constrained_beam_search, constrained_sample
from negrec.llm.model import ModelConfig, build_policy, load_policy, save_policy
from negrec.llm.prompts import PromptBuilder, PromptConfig
from negrec.tokenizer import SemanticIdTokenizer
from negrec.llm.evaluation import alignment_accuracy
from negrec.llm.prompts import alignment_examples, next_negative_examples
from negrec.contract import mark_done
from negrec.io import read_json
from negrec.train.sft import SFTStageConfig, run_sft, train_sft

N_ITEMS = 32
ROOT = Path(__file__).resolve().parents[2]
TINY = dict(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192, bpe_vocab_size=600)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_sids(item_ids, sizes=(8, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), len(item_ids), replace=False)
    return SemanticIdTokenizer.from_codes(item_ids, np.stack(np.unravel_index(flat, sizes), 1), list(sizes))


@pytest.fixture(scope="module")
def subset(ml100k_prepared):
    items = ml100k_prepared.items
    items = items[items.item_id <= N_ITEMS].reset_index(drop=True)
    return items, random_sids(items.item_id.to_numpy())


@pytest.fixture(scope="module")
def aligned(subset, tmp_path_factory):
    items, sid = subset
    model, hf, _ = build_policy(ModelConfig(**TINY), sid, items, PromptBuilder(PromptConfig(), sid, items).template_texts(), device="cpu")
    builder = PromptBuilder(PromptConfig(), sid, items, hf)
    examples = alignment_examples(builder, sid, items, tasks=["text_to_sid", "sid_to_text"], seed=0)
    cfg = SFTStageConfig(epochs=50, learning_rate=5e-3, batch_size=8, logging_steps=5, save_steps=10_000, resume=False)
    trainer = train_sft(model, hf, examples, cfg, tmp_path_factory.mktemp("sft_align"))
    return trainer, hf, sid, items, builder


def test_alignment_loss_falls(aligned):
    losses = [h["loss"] for h in aligned[0].state.log_history if "loss" in h]
    assert len(losses) >= 5 and losses[-1] < 0.3 * losses[0]


def test_alignment_accuracy_far_above_chance(aligned):
    trainer, hf, sid, items, builder = aligned
    acc = alignment_accuracy(trainer.model, hf, sid, items, n=N_ITEMS, builder=builder)
    print(f"alignment after SFT on {N_ITEMS} ML-100K items: {acc}")  # shown with -s
    assert acc["valid_sid_rate"] == 1.0, acc
    assert acc["title_to_sid"] >= 0.5 > 10 * acc["chance_title_to_sid"]  # chance 1/32
    assert acc["sid_to_title"] >= 0.3                                      # exact titles; chance ~0
    # 4-choice answered by likelihood (the lettered CoNRec form needs the choose_* tasks in training,
    # which this fixture leaves out to stay fast; bench_grpo_quality reports both forms)
    assert acc["choice_text_likelihood"] >= 0.6 and acc["choice_sid_likelihood"] >= 0.6  # chance 0.25


def test_every_constrained_completion_is_a_valid_item(aligned, ml100k_prepared):
    trainer, hf, sid, items, builder = aligned
    rows = ml100k_prepared.samples["test"].head(8)
    prompts = [builder.build(r) for _, r in rows.iterrows()]
    constraint = SidConstraint(sid, hf)
    exclude = [[int(i) for i in r["context_items"]] for _, r in rows.iterrows()]
    ranked = constrained_beam_search(trainer.model, hf, constraint, prompts, num_beams=12, top_k=5, exclude=exclude)
    for r, ex in zip(ranked, exclude):
        got = [i for i, _ in r]
        allowed = set(sid.item_ids.tolist()) - set(ex)
        assert len(got) == min(5, len(allowed)) and len(set(got)) == len(got) and set(got) <= allowed
    groups = constrained_sample(trainer.model, hf, constraint, prompts, num_generations=8, temperature=1.0, seed=0)
    assert all(c["item_id"] in sid and sid.item_for_tokens(c["completion"]) == c["item_id"] for g in groups for c in g)


def test_next_negative_examples_target_future_negatives(subset, ml100k_prepared):
    items, sid = subset
    builder = PromptBuilder(PromptConfig(format="verbose"), sid, items)
    samples = ml100k_prepared.samples["train"]
    h = ml100k_prepared.main_horizon
    ex = next_negative_examples(builder, samples, sid, h, context_mix=0.0, max_samples=50, targets_per_sample=2)
    assert ex and all(sid.item_for_tokens(e["completion"].strip()) is not None for e in ex)
    assert 50 <= len(ex) <= 2 * 50  # 50 rows, 1 or 2 targets each
    assert all(PromptConfig().pos_header + " (none)" in e["prompt"] for e in ex)  # context_mix 0: negatives only
    with pytest.raises(KeyError, match="future_neg_h999"):
        next_negative_examples(builder, samples, sid, 999)


def _tiny_run(subset, tmp_path, steps, resume):
    items, sid = subset
    torch.manual_seed(0)
    model, hf, _ = build_policy(ModelConfig(**{**TINY, "hidden_size": 32, "intermediate_size": 64}), sid, items, device="cpu")
    builder = PromptBuilder(PromptConfig(), sid, items, hf)
    ex = alignment_examples(builder, sid, items, tasks=["text_to_sid"], seed=0)
    cfg = SFTStageConfig(max_steps=steps, batch_size=4, learning_rate=1e-3, save_steps=2, logging_steps=1, resume=resume, lr_scheduler="constant")
    return train_sft(model, hf, ex, cfg, tmp_path, resume_key="k")


def test_resume_after_kill_matches_uninterrupted_run(subset, tmp_path):
    straight = _tiny_run(subset, tmp_path / "a", 4, resume=False)
    _tiny_run(subset, tmp_path / "b", 2, resume=True)          # "killed" after its step-2 checkpoint
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2").exists()
    resumed = _tiny_run(subset, tmp_path / "b", 4, resume=True)
    assert resumed.state.global_step == 4
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_run_sft_stage_end_to_end(subset, ml100k_prepared, tmp_path):
    items, sid = subset
    run = tmp_path / "run"
    ml100k_prepared.save(run / "data")
    model, hf, _ = build_policy(ModelConfig(**{**TINY, "hidden_size": 32, "intermediate_size": 64}), sid, items, device="cpu")
    save_policy(model, hf, sid, run / "model")
    raw = {"prompt": {"format": "verbose"},  # TRL's path (mode: prompt), as a pretrained LM may use it
           "sft_align": {"mode": "prompt", "phases": [], "max_steps": 3, "batch_size": 8, "max_items": 16,
                         "eval_items": 8, "save_steps": 2},
           "sft_next": {"mode": "prompt", "max_steps": 2, "batch_size": 4, "max_samples": 10, "eval_items": 0}}
    for stage in ("data", "build-model"):  # assembled by hand: marked as the stages would have
        mark_done(raw, run, stage)
    s1 = run_sft(raw, run, task="align")
    assert (run / "sft_align" / "final" / "config.json").exists() and (run / "sft_align" / "final" / "sid_tokenizer").exists()
    assert s1["steps"] == 3 and s1["alignment"]["valid_sid_rate"] == 1.0
    assert list((run / "tb" / "sft_align").glob("events.out.tfevents*"))
    s2 = run_sft(raw, run, task="next")
    assert s2["init_from"].endswith("sft_align/final") and s2["per_task"] == {"next_negative": s2["examples"]}
    assert run_sft(raw, run, task="next")["steps"] == 2  # up to date: read back, not retrained


def new_align_run(run, raw: dict, subset, prepared):
    """A run folder ready for `sft --task align`: the prepared data and a fresh tiny model (seed 0)."""
    items, sid = subset
    prepared.save(run / "data")
    torch.manual_seed(0)
    model, hf, _ = build_policy(ModelConfig(**TINY), sid, items, device="cpu")
    save_policy(model, hf, sid, run / "model")
    for stage in ("data", "build-model"):
        mark_done(raw, run, stage)
    return run


def test_alignment_in_the_timeline_loop_teaches_titles_to_sids(subset, ml100k_prepared, tmp_path):
    """sft_align.mode: timeline (negrec's own token loop, not TRL) is a stage of its own: it writes
    sft_align/final, and on 32 items title -> SID ends far above chance (1/32)."""
    raw = {"sft_align": {"mode": "timeline", "tasks": ["text_to_sid"], "epochs": 40, "max_steps": -1, "phases": [],
                         "learning_rate": 5e-3, "batch_size": 8, "max_items": 0, "eval_items": N_ITEMS, "patience": 100}}
    run = new_align_run(tmp_path / "run", raw, subset, ml100k_prepared)
    s = run_sft(raw, run, task="align")
    assert s["mode"] == "timeline" and s["epochs_run"] == 40 and s["loss_curve"][-1] < 0.5 * s["loss_curve"][0]
    assert (run / "sft_align" / "final" / "config.json").exists()
    assert s["alignment"]["title_to_sid"] >= 0.5 > 10 * s["alignment"]["chance_title_to_sid"], s["alignment"]
    assert s["alignment"]["choice_sid_likelihood"] >= 0.6, s["alignment"]
    assert s["alignment_not_learnt"] == []  # no warning for a stage that taught


def test_items_of_bare_ids_pass_alignment_through(subset, ml100k_prepared, tmp_path, capsys):
    """A log of bare ids (no title, text or features): sft_align has nothing to teach, so it hands the
    model on unchanged and says so; the timeline SFT after it trains with nothing co-trained and
    nothing to measure alignment on, instead of failing on a valid log."""
    import pandas as pd

    items, sid = subset
    run = tmp_path / "run"
    ml100k_prepared.save(run / "data")
    path = run / "data" / "items.parquet"
    pd.read_parquet(path).assign(title="", text="", genres="").to_parquet(path)
    torch.manual_seed(0)
    # as build-model builds it for this config (day cuts by default: the <|day|> token added)
    model, hf, _ = build_policy(ModelConfig(**TINY), sid, items, device="cpu", day_token=True)
    save_policy(model, hf, sid, run / "model")
    raw = {"sft_next": {"max_steps": 2, "batch_size": 4, "val_rows": 0}}
    for stage in ("data", "build-model"):
        mark_done(raw, run, stage)
    s = run_sft(raw, run, task="align")
    assert s["skipped"] and s["steps"] == 0 and "nothing to align" in capsys.readouterr().out
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = load_policy(run / "sft_align" / "final")[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    nxt = run_sft(raw, run, task="next")
    assert nxt["steps"] == 2 and nxt["alignment_examples"] == 0 and "alignment" not in nxt


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    """A kill while the Trainer writes checkpoint-6 leaves it without (or with a torn)
    trainer_state.json: resume takes checkpoint-4 and removes the torn folder."""
    from negrec.train.sft import last_complete_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, None), (8, '{"global_st')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None


def test_alignment_phases_train_in_order_and_each_is_measured(subset, ml100k_prepared, tmp_path, capsys):
    """sft_align.phases: a curriculum in the timeline loop. Each phase trains its own tasks for its
    own step budget after the first, the summary keeps each phase's loss and alignment, the phase
    checkpoints go with the stage's end, a rerun reads the stage back, and a stage that taught nothing
    says so."""
    raw = {"sft_align": {"mode": "timeline", "tasks": ["text_to_sid"], "max_steps": 6, "batch_size": 8,
                         "eval_items": 8, "phases": [{"tasks": ["choose_sid_stepwise"], "max_steps": 4},
                                                     {"tasks": ["sid_to_text", "text_to_sid"], "max_steps": 3,
                                                      "learning_rate": 1e-3}]}}
    run = new_align_run(tmp_path / "run", raw, subset, ml100k_prepared)
    s = run_sft(raw, run, task="align")
    assert s["steps"] == 13 and [p["steps"] for p in s["phases"]] == [6, 4, 3]
    assert [p["tasks"] for p in s["phases"]] == [["text_to_sid"], ["choose_sid_stepwise"], ["sid_to_text", "text_to_sid"]]
    assert s["phases"][1]["per_task"] == {"choose_sid_stepwise": N_ITEMS} and s["phases"][2]["learning_rate"] == 1e-3
    assert all("title_to_sid" in p["alignment"] for p in s["phases"]) and s["alignment"] == s["phases"][-1]["alignment"]
    assert len(s["loss_curve"]) == sum(len(p["loss_curve"]) for p in s["phases"])
    assert not list((run / ".work").rglob("timeline_checkpoint*.pt"))
    assert list((run / "tb" / "sft_align" / "phase2").glob("events.out.tfevents*"))
    assert run_sft(raw, run, task="align")["steps"] == 13
    # 13 steps teach nothing: the summary and the log say so, naming the tasks
    assert "sid_to_text" in {x.split()[0] for x in s["alignment_not_learnt"]}, s["alignment"]
    assert "[sft_align] warning: not clearly above chance after training: " in capsys.readouterr().out


@pytest.mark.parametrize("dtype, saved, autocast", [("bfloat16", "bfloat16", None), ("bf16-mixed", "float32", "bfloat16")])
def test_the_stage_trains_in_the_configured_model_dtype(subset, ml100k_prepared, tmp_path, monkeypatch, dtype, saved,
                                                        autocast):
    """model.dtype is the precision the SFT trains in, not only the one build-model writes: a GPU user
    who names bfloat16 gets pure bf16 (the stage once loaded with `auto` whatever was set); bf16-mixed
    (what `auto` is on CUDA) trains fp32 weights with the forward in bf16 autocast."""
    import negrec.train.sft as sft_module
    import negrec.train.timeline as timeline_module

    loaded, autocasts = [], []
    train_timeline = timeline_module.train_timeline

    def recording_load(path, device=None, dtype="auto", training=False):
        loaded.append((dtype, training))
        return load_policy(path, device="cpu", dtype=dtype, training=training)

    def recording_train(*args, autocast=None, **kw):
        autocasts.append(None if autocast is None else str(autocast).removeprefix("torch."))
        return train_timeline(*args, autocast=autocast, **kw)

    monkeypatch.setattr(sft_module, "load_policy", recording_load)
    monkeypatch.setattr(timeline_module, "train_timeline", recording_train)
    raw = {"model": {"dtype": dtype},
           "sft_align": {"mode": "timeline", "tasks": ["text_to_sid"], "max_steps": 2, "batch_size": 8, "phases": [],
                         "eval_items": 0}}
    run = new_align_run(tmp_path / "run", raw, subset, ml100k_prepared)
    run_sft(raw, run, task="align")
    assert loaded == [(dtype, True)] and autocasts == [autocast]
    assert read_json(run / "sft_align" / "final" / "config.json")["dtype"] == saved


@pytest.mark.parametrize("dtype, bf16", [("bf16-mixed", True), ("float32", False)])
def test_trl_autocast_in_prompt_mode_follows_model_dtype(subset, ml100k_prepared, tmp_path, monkeypatch, dtype, bf16):
    """mode: prompt (TRL's SFTTrainer) takes its bf16 autocast from model.dtype as the timeline loop
    does: bf16-mixed asks for it on any device, float32 runs without it (it was on whenever CUDA was)."""
    import negrec.train.sft as sft_module

    seen, trainer_args = [], sft_module.sft_trainer_args

    def recording(cfg, out_dir, tb_dir=None, bf16=None):
        seen.append(bf16)
        return trainer_args(cfg, out_dir, tb_dir, bf16)

    monkeypatch.setattr(sft_module, "sft_trainer_args", recording)
    raw = {"model": {"dtype": dtype}, "sft_align": {"mode": "prompt", "phases": [], "tasks": ["text_to_sid"], "max_steps": 1,
                                                    "batch_size": 4, "max_items": 8, "eval_items": 0}}
    run_sft(raw, new_align_run(tmp_path / "run", raw, subset, ml100k_prepared), task="align")
    assert seen == [bf16]


@pytest.mark.parametrize("phase, message", [
    ({"tasks": ["text_to_sid"], "max_steps": 5, "epochs": 2}, "unknown keys"),
    ({"tasks": ["text_to_sid"]}, "max_steps"),
    ({"max_steps": 5}, "needs tasks"),
    ({"tasks": "text_to_sid", "max_steps": 5}, "needs tasks, a list"),
    ({"tasks": ["text_to_title"], "max_steps": 5}, r"\['text_to_title'\] unknown; known"),
    ({"tasks": ["choose_sid", "choose_sid_stepwise"], "max_steps": 5}, "same question"),
    ("choose_sid_stepwise", "mapping"),
])
def test_a_bad_alignment_phase_is_refused_naming_it(phase, message):
    with pytest.raises(ValueError, match=f"phase 2.*{message}|{message}.*phase 2"):
        SFTStageConfig(mode="timeline", phases=[phase])


def test_phases_outside_the_alignment_loop_are_refused(tmp_path):
    raw = {"sft_align": {"mode": "prompt", "phases": [{"tasks": ["text_to_sid"], "max_steps": 5}]}}
    with pytest.raises(ValueError, match="only the alignment stage in mode: timeline"):
        run_sft(raw, tmp_path, task="align")


def test_alignment_phases_resume_after_a_kill_as_if_never_stopped(subset, ml100k_prepared, tmp_path, monkeypatch,
                                                                   capsys):
    """A kill in phase 2, after its first epoch's checkpoint, loses nothing: the rerun takes phase 1
    from its checkpoint (not retrained), phase 2 from its first epoch, and trains every step once."""
    import negrec.train.timeline as timeline

    raw = {"sft_align": {"mode": "timeline", "tasks": ["text_to_sid"], "max_steps": 5, "batch_size": 8,
                         "eval_items": 0, "phases": [{"tasks": ["sid_to_text"], "max_steps": 8}]}}
    run = new_align_run(tmp_path / "run", raw, subset, ml100k_prepared)
    real, saves = timeline._save_checkpoint, []

    def dies_after_phase_2_epoch_1(path, state):
        real(path, state)
        saves.append(path.name)
        if path.name == "timeline_checkpoint_2.pt":
            raise KeyboardInterrupt("killed in phase 2")

    monkeypatch.setattr(timeline, "_save_checkpoint", dies_after_phase_2_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_sft(raw, run, task="align")
    assert saves == ["timeline_checkpoint.pt"] * 2 + ["timeline_checkpoint_2.pt"] and not (run / "sft_align").exists()
    monkeypatch.setattr(timeline, "_save_checkpoint", real)
    capsys.readouterr()
    s = run_sft(raw, run, task="align")
    out = capsys.readouterr().out
    assert "[timeline] resuming after epoch 2 (step 5)" in out and "[timeline] resuming after epoch 1 (step 4)" in out
    assert s["steps"] == 13 and [p["steps"] for p in s["phases"]] == [5, 8]
    assert [p["epochs_run"] for p in s["phases"]] == [2, 2]


def test_a_section_left_out_trains_as_the_default_run():
    """A config without sft_align / sft_next / prompt sections (configs/generic.yaml, or no config)
    gets the recipe of configs/ml100k.yaml: compact timelines, the alignment curriculum, the
    validated timeline SFT with alignment co-trained. (Before, it got TRL's one-prompt-per-cut SFT,
    which the default run had left behind because it did not learn.)"""
    from dataclasses import asdict

    from negrec.config import load_config, section_config
    from negrec.llm.prompts import prompt_config
    from negrec.train.sft import sft_config

    shipped = load_config(ROOT / "configs" / "ml100k.yaml")
    by_cut = {"shuffle_within_day": None}  # follows data.split.cut_unit (day here, event in ml100k.yaml)
    # generic.yaml's `auto` is chosen from the log by the data stage (tests/test_cli.py); day here.
    # Its SFT trains 20 epochs, not the default run's 10 (sized for 10 minutes): the one value it sets
    generic = load_config(ROOT / "configs" / "generic.yaml", ["data.split.cut_unit=day"])
    assert generic["sft_next"] == {"epochs": 20} and "sft_align" not in generic
    for raw in ({}, generic):
        for task in ("align", "next"):
            assert sft_config(raw, task).shuffle_within_day and not sft_config(shipped, task).shuffle_within_day
            ours = asdict(sft_config(raw, task)) | by_cut | ({"epochs": 10.0} if raw is generic and task == "next" else {})
            assert ours == asdict(sft_config(shipped, task)) | by_cut, task
        assert section_config(PromptConfig, raw, "prompt") == section_config(PromptConfig, shipped, "prompt")
        assert prompt_config(raw).day_breaks and not prompt_config(shipped).day_breaks
    off = load_config(ROOT / "configs" / "generic.yaml", ["prompt.day_breaks=false", "sft_next.shuffle_within_day=false"])
    assert not prompt_config(off).day_breaks and not sft_config(off, "next").shuffle_within_day  # a set value wins
    verbose = load_config(ROOT / "configs" / "generic.yaml", ["prompt.format=verbose"])
    assert not prompt_config(verbose).day_breaks  # verbose prompts have no day tokens
    align, nxt = sft_config({}, "align"), sft_config({}, "next")
    assert (align.mode, nxt.mode, PromptConfig().format) == ("timeline", "timeline", "compact")
    assert align.phases and nxt.align_weight > 0 and nxt.val_rows > 0
    with pytest.raises(ValueError, match="align or next"):
        sft_config({}, "nxt")


def test_alignment_phase_values_are_typed_as_the_stage_fields():
    """YAML reads 3e-3 as text and a user may write 1500.0: each phase's values are typed as the
    stage's own fields, and a fraction of a step is refused."""
    cfg = SFTStageConfig(mode="timeline", phases=[{"tasks": ["text_to_sid"], "max_steps": "1500",
                                                   "learning_rate": "3e-3", "item_repeats": 2.0}])
    assert cfg.phases == [{"tasks": ["text_to_sid"], "max_steps": 1500, "learning_rate": 0.003, "item_repeats": 2}]
    with pytest.raises(ValueError, match="phase 2: max_steps must be a whole number"):
        SFTStageConfig(phases=[{"tasks": ["text_to_sid"], "max_steps": 10.5}])
    with pytest.raises(ValueError, match="phase 2: learning_rate must be float"):
        SFTStageConfig(phases=[{"tasks": ["text_to_sid"], "max_steps": 10, "learning_rate": "fast"}])


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_like_tokens_take_the_aligned_sid_rows(tmp_path, peft):
    """`prompt.like_tokens`: build-model starts each like token as a copy of its SID token; alignment
    trains the SID rows alone and ends by copying them over, so the SFT starts the like tokens from
    what alignment taught. Under LoRA the token rows live in the base weights (merged on save)."""
    from negrec.config import load_config
    from negrec.llm.prompts import like_token
    from negrec.pipeline import run_pipeline
    from tests._tiny_run import CONFIG, tiny_overrides

    run = tmp_path / "run"
    over = [*tiny_overrides(), "prompt.like_tokens=true", "sft_align.max_steps=6", "sft_align.phases=[]",
            "sft_align.eval_items=0", f"model.peft.mode={peft}"]
    run_pipeline(load_config(str(CONFIG), [*over, "pipeline.stop_after=build-model"]), run)
    summary = run_sft(load_config(str(CONFIG), over), run, "align")
    built, hf, sid = load_policy(run / "model", device="cpu")
    aligned, _, _ = load_policy(run / "sft_align" / "final", device="cpu")
    assert summary["like_rows_copied"] == len(sid.all_tokens())
    vocab = hf.get_vocab()
    sid_ids = torch.as_tensor([vocab[t] for t in sid.all_tokens()])
    like_ids = torch.as_tensor([vocab[like_token(t)] for t in sid.all_tokens()])
    before, after = built.get_input_embeddings().weight, aligned.get_input_embeddings().weight
    assert torch.equal(before[like_ids], before[sid_ids])                   # built as copies
    assert not torch.allclose(after[sid_ids], before[sid_ids])              # alignment trained the SID rows
    assert torch.equal(after[like_ids], after[sid_ids])                     # and the like tokens took them


def test_a_pretrained_lm_at_the_tiny_models_learning_rate_is_warned_about(capsys):
    from negrec.llm.model import ModelConfig
    from negrec.llm.peft import PeftSettings
    from negrec.train.sft import _warn_pretrained_rate

    _warn_pretrained_rate(ModelConfig(source="tiny"), SFTStageConfig(learning_rate=5e-3), "align")
    _warn_pretrained_rate(ModelConfig(source="/models/Qwen2.5-0.5B"), SFTStageConfig(learning_rate=1e-4), "next")
    rows_only = ModelConfig(source="smollm2", peft=PeftSettings(mode="sid_embeddings_only"))
    _warn_pretrained_rate(rows_only, SFTStageConfig(learning_rate=5e-3), "next")  # only new rows train
    assert capsys.readouterr().out == ""
    phases = [{"tasks": ["text_to_sid"], "max_steps": 5, "learning_rate": 3e-3}]
    _warn_pretrained_rate(ModelConfig(source="smollm2"), SFTStageConfig(learning_rate=1e-4, phases=phases), "align")
    out = capsys.readouterr().out
    assert "warning: learning rate 0.003" in out and "smollm2" in out


@pytest.mark.parametrize("checkpointing", [True, False])
def test_trl_args_set_checkpointing_under_this_versions_name(tmp_path, checkpointing):
    """`gradient_checkpointing` reaches TRL's SFTConfig under the name this transformers has (5 renamed
    it `activation_checkpointing` and warned at every stage given the old one)."""
    import warnings

    from negrec.train.sft import SFTNextConfig, sft_trainer_args

    cfg = SFTNextConfig(mode="prompt", gradient_checkpointing=checkpointing)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient_checkpointing.*deprecated")
        args, _ = sft_trainer_args(cfg, tmp_path)
    assert args.gradient_checkpointing is checkpointing
    assert getattr(args, "activation_checkpointing", checkpointing) is checkpointing
