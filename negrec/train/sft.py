"""Supervised stages on TRL's SFTTrainer: item-level alignment, then next-negative SFT.

Alignment teaches the new SID tokens with item-level tasks (no user history):
text -> SID, SID -> text, SID prefix -> genre words, features -> SID (for text-less data),
and the CoNRec 4-choice task (given a SID pick its description among 4, and the reverse).
Next-negative SFT maps a context-discerning history prompt to the SID of an item the user
negates within the horizon (F_H). Both use prompt/completion datasets, so the loss is on the
completion only, and the same `PromptBuilder` as GRPO and evaluation. The examples themselves
(`alignment_examples`, `next_negative_examples`) are built in `negrec.llm.prompts`; what alignment
taught is measured by `negrec.llm.evaluation.alignment_accuracy`.

`run_sft(raw, run_dir, task)` reads section `sft_align` / `sft_next`, resumes from the last
Trainer checkpoint after a kill, logs to run_dir/tb/sft_<task>, and writes the final policy
atomically to run_dir/sft_<task>/final.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from negrec.config import fill_cut_unit, section_config, to_dict
from negrec.contract import fingerprint, stage_folder, up_to_date, work_dir
from negrec.data.prepare import cuts_at_day_start
from negrec.io import read_json, write_json
from negrec.llm.evaluation import alignment_accuracy, alignment_line, unlearnt_tasks
from negrec.llm.model import ModelConfig, copy_sid_rows_to_like_tokens, load_policy, save_policy, training_autocast
from negrec.llm.peft import apply_peft, is_peft_model, load_token_rows, new_token_ids, token_rows, trainable_summary
from negrec.llm.prompts import (ALIGN_TASKS, PromptBuilder, aligned_item_ids, alignment_examples, can_align,
                                labelled_items, next_negative_examples, prompt_config)
from negrec.train.ranks import join_launch
from negrec.train.trainer_args import (build_trainer_config, check_trainer_overrides, checkpointing_setting, default_bf16,
                                       full_weights, is_main_process, main_print, ranks_meet, reports_to, train_or_take)

SFT_RESERVED = ("output_dir",)  # trl.SFTConfig fields negrec sets itself


@dataclass
class SFTStageConfig:
    init_from: str = ""          # model folder to start from; "" = previous stage (align: model/, next: sft_align/final)
    # alignment data
    tasks: list[str] = field(default_factory=lambda: ["text_to_sid", "sid_to_text"])
    max_items: int = 0           # 0 = every item with a SID
    item_repeats: int = 1        # copies of each item-level example per epoch (fresh distractors each copy)
    # next-negative data
    horizon: int = 0             # F_H horizon in days; 0 = data's main horizon
    context_mix: float = 1.0
    neg_window_days: float | None = None
    max_samples: int = 2000      # (user, cut) train rows used; 0 = all
    targets_per_sample: int = 2  # F_H items per row turned into examples
    # training
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 5e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 16         # tiny models learn the item vocabulary faster with more, smaller steps
    grad_accum: int = 1
    max_length: int = 384
    gradient_checkpointing: bool = True  # TRL's default; measured on the tiny CPU model: 1.7 s/step with, 4.8 s without
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    resume: bool = True
    eval_items: int = 200        # items for the closing alignment_accuracy (0 = skip)
    # next-negative training mode: "timeline" learns from every event of every user's timeline in
    # the compact prompt format (needs prompt.format: compact); "prompt" builds one prompt per
    # (user, cut) train sample and a completion per F_H target (any prompt format).
    # sft_align: "timeline" trains the alignment examples in that same token loop (fast on small
    # models; data-parallel under torchrun, `negrec.train.ranks`), "prompt" with TRL's SFTTrainer
    # (DeepSpeed, PEFT, any reporter)
    mode: str = "timeline"
    window_events: int = 100     # timeline: events per training window
    other_weight: float = 1.0    # timeline: loss weight of non-negative events' SIDs (negatives weigh 1)
    # timeline: each day's events in a fresh random order every epoch. Under day cuts the future is
    # a set of later days, predicted before they start; the order of events within a day (a burst's
    # sequence) is then never seen, and learning it cost recall. Unset (null): on under day cuts.
    shuffle_within_day: bool | None = None
    # sft_next, timeline: the softmax of the timeline windows' loss over "full" (the whole vocabulary) or "sid"
    # (the SID tokens and EOS: every target is one, and constrained decoding masks everything else).
    # "sid" skips the LM head's other rows: on a 150K-vocabulary LM most of its logits. On the tiny
    # default: SFT 186 s instead of 231 s, but test Recall@50 -0.027 [-0.048, -0.007] (R@10 a tie),
    # paired on the 663 test users, so the default stays "full"
    loss_vocab: str = "full"
    # timeline: loss weight of the item-level alignment examples (`tasks`, `max_items`, `item_repeats`)
    # trained in the same loop as the timelines, MiniOneRec-style co-training; 0 = timelines only
    align_weight: float = 0.0
    align_per_batch: int = 16    # timeline: alignment examples mixed into every batch of timeline windows
    # align, timeline mode: later phases of the stage, trained in order after the first (the settings
    # above), each {tasks, max_steps, learning_rate, item_repeats} with its own warm-up and cosine; a
    # curriculum, e.g. the stepwise 4-choice alone until the lookup forms, then every task again
    phases: list[dict] = field(default_factory=list)
    val_rows: int = 300          # timeline: validation users scored after a validated epoch (0 = none: last epoch kept)
    val_beams: int = 20          # timeline: beam width of the validation search
    val_every: int = 1           # timeline: validate after every n-th epoch and the last
    patience: int = 2            # timeline: validations in a row significantly below the best before stopping
    # timeline: whose events train. "test": every user's events before their test cut, except the
    # validation users, whose timelines stop at their validation cut (their F_H stays unseen, so the
    # epoch choice is clean); "valid": every user's events before their validation cut
    fit_until: str = "test"
    # TRL pass-through (prompt mode and alignment): any trl.SFTConfig field, set on top of the
    # settings above (report_to: [tensorboard, wandb], optim, bf16, push_to_hub, ...); unknown keys are
    # refused. report_to defaults to TensorBoard in run_dir/tb/sft_<task>; "none" turns it off.
    trainer: dict = field(default_factory=dict)
    deepspeed: str | None = None  # prompt mode: a DeepSpeed JSON (configs/deepspeed/zero2.json); launch with accelerate/torchrun

    def __post_init__(self):
        check_trainer_overrides("trl:SFTConfig", self.trainer, "sft", SFT_RESERVED)
        if self.fit_until not in ("valid", "test"):
            raise ValueError(f"sft_next.fit_until must be valid or test, got {self.fit_until!r}")
        if self.mode not in ("prompt", "timeline"):
            raise ValueError(f"sft mode must be prompt or timeline, got {self.mode!r}")
        if self.deepspeed and self.mode == "timeline":  # the timeline loop would train without it, silently
            raise ValueError(f"sft deepspeed {self.deepspeed!r} needs mode: prompt (TRL's SFTTrainer); "
                             "mode: timeline trains without DeepSpeed (data-parallel under torchrun, not sharded)")
        check_tasks(self.tasks, "sft tasks")
        if not 0.0 <= self.context_mix <= 1.0:
            raise ValueError("sft context_mix must be in [0, 1]")
        if self.loss_vocab not in ("full", "sid"):
            raise ValueError(f"sft loss_vocab must be full or sid, got {self.loss_vocab!r}")
        check_ranges(self)
        if self.align_weight > 0 and self.align_per_batch < 1:
            raise ValueError("sft align_per_batch must be at least 1 when align_weight > 0 (0 would train no alignment)")
        self.phases = [checked_phase(phase, k) for k, phase in enumerate(self.phases, 2)]


# The defaults of sections sft_align and sft_next are the recipe that learns on the tiny model
# (configs/ml100k.yaml sets the same values and says why each was chosen), so a config that leaves a
# section out, as configs/generic.yaml does, trains as the default run does. The base class's
# defaults are what the two sections share.
ALIGN_PHASES = (  # the stepwise 4-choice alone until the lookup forms, then all three tasks
    {"tasks": ["choose_sid_stepwise"], "max_steps": 1000, "learning_rate": 1e-3, "item_repeats": 2},
    {"tasks": ["text_to_sid", "sid_to_text", "choose_sid_stepwise"], "max_steps": 1000, "learning_rate": 1e-3,
     "item_repeats": 2},
)


@dataclass
class SFTAlignConfig(SFTStageConfig):
    """Section `sft_align`: item-level alignment in the timeline loop, budgets in steps."""
    max_steps: int = 3200
    learning_rate: float = 2e-3
    batch_size: int = 32
    phases: list[dict] = field(default_factory=lambda: [dict(p) for p in ALIGN_PHASES])


@dataclass
class SFTNextConfig(SFTStageConfig):
    """Section `sft_next`: the timeline SFT, the epoch picked on validation, alignment co-trained."""
    epochs: float = 10.0
    learning_rate: float = 5e-3
    window_events: int = 50
    val_rows: int = 200
    val_every: int = 2
    patience: int = 3
    align_weight: float = 1.0


SFT_SECTIONS = {"align": SFTAlignConfig, "next": SFTNextConfig}


def sft_config(raw: dict, task: str) -> SFTStageConfig:
    """The typed config of section `sft_<task>` (task: align or next), with that section's defaults."""
    if task not in SFT_SECTIONS:
        raise ValueError(f"sft task must be align or next, got {task!r}")
    cfg = section_config(SFT_SECTIONS[task], raw, f"sft_{task}")
    if cfg.shuffle_within_day is None:
        cfg = replace(cfg, shuffle_within_day=cuts_at_day_start(raw))
    return cfg


PHASE_KEYS = {"tasks": list, "max_steps": int, "learning_rate": float, "item_repeats": int}


# the SFT stages' numbers and the least each may be (`check_ranges`): caught when the config is read,
# before any stage runs, not as a division by zero or torch's "Invalid learning rate" stages later
MINIMUM = {"batch_size": 1, "grad_accum": 1, "item_repeats": 1, "targets_per_sample": 1, "window_events": 1,
           "val_beams": 1, "val_every": 1, "patience": 1, "max_items": 0, "max_samples": 0, "val_rows": 0, "align_per_batch": 0}
NON_NEGATIVE = ("weight_decay", "warmup_ratio", "other_weight", "align_weight")


def check_ranges(cfg: SFTStageConfig) -> None:
    """Refuse a stage's numbers out of range, naming the section and field."""
    section = {c: f"sft_{task}" for task, c in SFT_SECTIONS.items()}.get(type(cfg), "sft")
    for name, least in MINIMUM.items():
        if getattr(cfg, name) < least:
            raise ValueError(f"{section}.{name} must be at least {least}, got {getattr(cfg, name)}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{section}.{name} must not be negative, got {getattr(cfg, name)}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"{section}.learning_rate must be positive, got {cfg.learning_rate}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ValueError(f"{section}.max_steps must be at least 1, or -1 to train for `epochs`, got {cfg.max_steps}")
    if cfg.max_steps == -1 and not cfg.epochs > 0:
        raise ValueError(f"{section}.epochs must be positive (or set max_steps), got {cfg.epochs}")


def checked_phase(phase, k: int) -> dict:
    """One entry of `sft_align.phases` (phase k of the stage), its values typed as the stage's own
    fields are (YAML reads 3e-3 as text): known keys, known tasks, a positive step budget."""
    where = f"sft_align.phases: phase {k}"
    if not isinstance(phase, dict):
        raise ValueError(f"{where} must be a mapping of {list(PHASE_KEYS)}, got {phase!r}")
    unknown = sorted(set(phase) - set(PHASE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {list(PHASE_KEYS)}")
    if not isinstance(phase.get("tasks"), list) or not phase["tasks"]:
        raise ValueError(f"{where} needs tasks, a list of {list(ALIGN_TASKS)}; got {phase.get('tasks')!r}")
    check_tasks(phase["tasks"], f"{where}: tasks")
    out = {}
    for key, value in phase.items():
        kind = PHASE_KEYS[key]
        try:
            out[key] = value if kind is list else kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} must be {kind.__name__}, got {value!r}") from None
        if kind is int and out[key] != float(value):
            raise ValueError(f"{where}: {key} must be a whole number, got {value!r}")
    if out.get("max_steps", 0) < 1:
        raise ValueError(f"{where} needs max_steps of at least 1 (a budget in steps), got {phase.get('max_steps')!r}")
    if out.get("learning_rate", 1.0) <= 0:
        raise ValueError(f"{where}: learning_rate must be positive, got {phase['learning_rate']!r}")
    if out.get("item_repeats", 1) < 1:
        raise ValueError(f"{where}: item_repeats must be at least 1, got {phase['item_repeats']!r}")
    return out


def check_tasks(tasks, where: str) -> None:
    """Alignment task names: known, and not both forms of the SID 4-choice."""
    bad = sorted(set(tasks) - set(ALIGN_TASKS))
    if bad:
        raise ValueError(f"{where} {bad} unknown; known: {list(ALIGN_TASKS)}")
    if {"choose_sid", "choose_sid_stepwise"} <= set(tasks):
        raise ValueError(f"{where}: choose_sid and choose_sid_stepwise ask the same question with different "
                         "answers; train one of them")


# ---- timeline training ------------------------------------------------------------------
def _run_timeline(model, hf_tok, sid_tok, builder, data, cfg, run_dir: Path, raw: dict, init: str, t0: float,
                  autocast=None) -> dict:
    """`sft --task next` in timeline mode (see `negrec.train.timeline`)."""
    from negrec.llm.prompts import compact_codec
    from negrec.train.timeline import (example_windows, timeline_windows, train_timeline, training_log,
                                       validation_rows)

    if builder.cfg.format != "compact":
        raise ValueError("sft_next.mode: timeline trains on compact timelines; set prompt.format: compact")
    out = run_dir / "sft_next"
    horizon = cfg.horizon or data.main_horizon
    codec = compact_codec(sid_tok, hf_tok, builder.cfg)
    val = validation_rows(data.samples["valid"], horizon, cfg.val_rows, cfg.seed)
    log, limit = training_log(data, cfg.fit_until, [r["user_id"] for r in val])
    def windows_of(shuffle=None):  # shuffle: a generator, to order each day's events at random
        return timeline_windows(log, limit, codec, cfg.window_events, cfg.other_weight, shuffle)

    windows = windows_of()
    if not windows:
        raise ValueError(f"sft_next: no training events before the users' {cfg.fit_until} cuts")
    n_tok = sum(len(w) for w, _ in windows)
    main_print(f"[sft_next] timeline: {len(windows)} windows, {n_tok} tokens ({codec.tokens_per_event} per event), "
               f"{len(val)} validation users, from {init}")
    aligned = []
    if cfg.align_weight > 0:
        aligned = example_windows(alignment_examples(builder, sid_tok, data.items, cfg.tasks, cfg.max_items,
                                                     cfg.item_repeats, cfg.seed), hf_tok, cfg.align_weight)
        main_print(f"[sft_next] + {len(aligned)} alignment examples ({sum(len(w) for w, _ in aligned)} tokens, "
                   f"tasks {cfg.tasks}, weight {cfg.align_weight})")
    work = work_dir(run_dir, "sft-next")  # the checkpoint: outside the folder that is swapped
    if is_main_process():  # rank 0 writes it
        work.mkdir(parents=True, exist_ok=True)
    loss_ids = codec.target_ids() if cfg.loss_vocab == "sid" else None
    fit = train_timeline(model, hf_tok, sid_tok, windows, val, builder, cfg, horizon, extra=aligned, loss_ids=loss_ids,
                         reshuffle=windows_of if cfg.shuffle_within_day else None,
                         ckpt_path=work / "timeline_checkpoint.pt", resume_key=fingerprint(raw, run_dir, "sft-next"),
                         tb_dir=run_dir / "tb" / "sft_next", autocast=autocast)
    summary = {"task": "next", "mode": "timeline", "windows": len(windows), "tokens": n_tok,
               "alignment_examples": len(aligned),
               "tokens_per_event": codec.tokens_per_event, "window_events": cfg.window_events,
               "day_breaks": codec.day_breaks, "shuffle_within_day": cfg.shuffle_within_day,
               "prompt_events": builder.cfg.max_events, "init_from": init, **fit,
               "loss_curve": [h["train_loss"] for h in fit["history"]], "config": to_dict(cfg)}
    # what the policy knows of item titles, chance unless aligned: measured where it is written
    if _measures_alignment(cfg, data.items) and is_main_process():
        summary["alignment"] = _alignment_check(model, hf_tok, sid_tok, data.items, cfg, builder)
        _print_alignment(summary["alignment"])
        if aligned:
            summary["alignment_not_learnt"] = unlearnt_tasks(summary["alignment"], cfg.tasks)
            _warn_unlearnt("sft_next", summary["alignment_not_learnt"],
                           "the co-trained alignment did not hold: raise sft_next.align_per_batch or align_weight")
    summary["seconds"] = round(time.time() - t0, 1)
    if is_main_process():  # under a launcher the ranks hold the same weights (`negrec.train.ranks`)
        _save_loop_stage(raw, run_dir, "sft-next", model, hf_tok, sid_tok, summary)
    ranks_meet()
    curve = " ".join(f"{h['epoch']}:{h['val_recall@10']:.3f}" for h in fit["history"] if "val_recall@10" in h)
    validation = f"validation Recall@10 by epoch: {curve}" if curve else "no validation (val_rows: 0)"
    main_print(f"[sft_next] {fit['steps']} steps, {fit['epochs_run']} epochs, {validation}; "
               f"kept epoch {fit['kept_epoch']} (best {fit['best_epoch']}), {summary['seconds']}s -> {out / 'final'}")
    return summary


# ---- training ------------------------------------------------------------------------
def _run_align_loop(model, hf_tok, sid_tok, builder, data, cfg, run_dir: Path, raw: dict, init: str, t0: float,
                    autocast=None) -> dict:
    """`sft --task align` in timeline mode: the item-level alignment examples trained in the timeline
    SFT's own token loop (`train_timeline`, loss on the answer only, no validation: the last epoch is
    kept) instead of TRL's SFTTrainer. On the tiny from-scratch model that is what makes alignment fast
    enough to teach: 3,200 steps in 97 s took title -> SID from 0.00 to 0.75 (bench_align.py).
    `cfg.phases` train after the first phase, in order, each resumable from its own checkpoint."""
    work = work_dir(run_dir, "sft-align")
    if is_main_process():  # rank 0 writes the checkpoints
        work.mkdir(parents=True, exist_ok=True)
    main_print(f"[sft_align] from {init}")
    first = {"tasks": cfg.tasks, "max_steps": cfg.max_steps, "learning_rate": cfg.learning_rate,
             "item_repeats": cfg.item_repeats}
    key, phases = fingerprint(raw, run_dir, "sft-align"), []
    for k, phase in enumerate([first, *cfg.phases]):
        phases.append(_align_phase(model, hf_tok, sid_tok, builder, data, replace(cfg, **phase), k,
                                   len(cfg.phases) + 1, work, key, run_dir / "tb" / "sft_align", autocast))
    last = phases[-1]
    summary = {"task": "align", "mode": "timeline", "examples": last["examples"], "per_task": last["per_task"],
               "init_from": init, "steps": sum(p["steps"] for p in phases), "epochs_run": sum(p["epochs_run"] for p in phases),
               "loss_curve": [x for p in phases for x in p["loss_curve"]], "config": to_dict(cfg)}
    if len(phases) > 1:
        summary["phases"] = phases
    if _measures_alignment(cfg, data.items) and is_main_process():
        summary["alignment"] = last.get("alignment") or _alignment_check(model, hf_tok, sid_tok, data.items, cfg, builder)
        summary["alignment_not_learnt"] = unlearnt_tasks(summary["alignment"], [t for p in phases for t in p["tasks"]])
    summary["like_rows_copied"] = _copy_like_rows(model, hf_tok, sid_tok)
    summary["seconds"] = round(time.time() - t0, 1)
    if is_main_process():
        _save_loop_stage(raw, run_dir, "sft-align", model, hf_tok, sid_tok, summary)
    ranks_meet()
    main_print(f"[sft_align] {summary['steps']} steps, {summary['epochs_run']} epochs, loss "
               f"{summary['loss_curve'][0]:.3f} -> {summary['loss_curve'][-1]:.3f}, {summary['seconds']}s -> "
               f"{run_dir / 'sft_align' / 'final'}")
    if "alignment" in summary:
        _print_alignment(summary["alignment"])
        _warn_unlearnt("sft_align", summary["alignment_not_learnt"], ALIGN_HINT)
    return summary


def _nothing_to_align(raw: dict, run_dir: Path, model, hf_tok, sid_tok, init: str, t0: float) -> dict:
    """sft_align on items with no title, text or features (a log of bare ids): there is nothing to
    teach, so the stage hands the model on unchanged, says so, and the run goes on."""
    main_print("[sft_align] the items have no title, text or features: nothing to align; the model goes on "
               "unchanged (pipeline.skip: [sft-align] skips the stage)")
    summary = {"task": "align", "skipped": "no item title, text or features", "steps": 0, "epochs_run": 0,
               "init_from": init, "loss_curve": [], "seconds": round(time.time() - t0, 1)}
    _save_loop_stage(raw, run_dir, "sft-align", model, hf_tok, sid_tok, summary)
    return summary


def _align_phase(model, hf_tok, sid_tok, builder, data, cfg, k: int, n: int, work: Path, key: str, tb_dir: Path,
                 autocast=None) -> dict:
    """Phase k of the alignment loop: its tasks' examples (distractors drawn afresh per phase), trained
    for its step budget; with more than one phase, what the model then knows is measured after each."""
    from negrec.train.timeline import example_windows, train_timeline

    # every phase teaches the same items (`max_items` drawn with the stage's seed, as the alignment
    # check draws them); distractors and order are drawn afresh per phase
    examples = alignment_examples(builder, sid_tok, data.items, cfg.tasks, cfg.max_items, cfg.item_repeats, cfg.seed + k,
                                  item_seed=cfg.seed)
    if not examples:
        raise ValueError("sft_align: no alignment examples (the items need titles or text)")
    windows = example_windows(examples, hf_tok)
    counts = dict(Counter(e["task"] for e in examples))
    name = "" if n == 1 else f"phase {k + 1}/{n}: "
    main_print(f"[sft_align] {name}timeline loop: {len(examples)} examples {counts}, "
               f"{sum(len(w) for w, _ in windows)} tokens per epoch")
    suffix = "" if k == 0 else f"_{k + 1}"  # phase 1 keeps the one-phase stage's checkpoint name
    fit = train_timeline(model, hf_tok, sid_tok, windows, [], builder, cfg, horizon=0,
                         ckpt_path=work / f"timeline_checkpoint{suffix}.pt", resume_key=f"{key}{suffix}",
                         tb_dir=tb_dir / f"phase{k + 1}" if n > 1 else tb_dir, autocast=autocast)
    out = {"tasks": list(cfg.tasks), "examples": len(examples), "per_task": counts, "steps": fit["steps"],
           "epochs_run": fit["epochs_run"], "learning_rate": cfg.learning_rate,
           "loss_curve": [h["train_loss"] for h in fit["history"]]}
    if n > 1 and _measures_alignment(cfg, data.items) and is_main_process():
        out["alignment"] = _alignment_check(model, hf_tok, sid_tok, data.items, cfg, builder)
        main_print(f"  after {name[:-2]}: {alignment_line(out['alignment'])}")
    return out


def _copy_like_rows(model, hf_tok, sid_tok) -> int:
    """After alignment: the like tokens (`prompt.like_tokens`) take the SID tokens' aligned rows
    (`copy_sid_rows_to_like_tokens`); under PEFT the token rows live in the base weights, under
    ZeRO-3 they are gathered (a collective: every rank calls this)."""
    with full_weights(model, writable=True):
        return copy_sid_rows_to_like_tokens(model.get_base_model() if is_peft_model(model) else model, hf_tok, sid_tok)


def _save_loop_stage(raw: dict, run_dir: Path, stage: str, model, hf_tok, sid_tok, summary: dict) -> None:
    """A timeline-loop stage's folder (final/ and summary.json, swapped in whole; its checkpoint goes then)."""
    with stage_folder(raw, run_dir, stage) as tmp:
        save_policy(model, hf_tok, sid_tok, tmp / "final",
                    extra={"stage": stage.replace("-", "_"), "steps": summary["steps"]})
        write_json(tmp / "summary.json", summary)


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


CHECKPOINT_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest `checkpoint-N` folder the Trainer finished writing (trainer_state.json, which it
    writes after the weights, and the weights), or None. A folder cut short by a kill is deleted
    (rank 0), so a rerun resumes from the checkpoint before it instead of failing on it."""
    found = sorted((int(p.name.split("-")[1]), p) for p in Path(ckpt_dir).glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        if _readable_json(path / "trainer_state.json") and any((path / w).exists() for w in CHECKPOINT_WEIGHTS):
            return str(path)
        if is_main_process():
            print(f"[sft] {path.name} is incomplete (cut short by a kill?): removed, resuming from the one before")
            shutil.rmtree(path, ignore_errors=True)
    return None


def sft_trainer_args(cfg: SFTStageConfig, out_dir: Path, tb_dir: Path | None = None, bf16: bool | None = None):
    """(trl.SFTConfig, reporters): negrec's settings with the `trainer` pass-through on top; `bf16`
    (TRL's autocast; None: where CUDA has it) is what `run_sft` reads off model.dtype.

    Built before the model is loaded: with a ZeRO-3 `deepspeed` config it makes from_pretrained
    shard the weights at load, and it starts the process group a launcher set up."""
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    pinned = dict(
        output_dir=str(Path(out_dir) / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio
        weight_decay=cfg.weight_decay, max_length=cfg.max_length, packing=False, completion_only_loss=True,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, report_to="none",
        bf16=default_bf16() if bf16 is None else bf16, use_cpu=not on_gpu, dataloader_num_workers=0,
        disable_tqdm=False, dataset_num_proc=None, deepspeed=cfg.deepspeed,
        **checkpointing_setting(SFTConfig, cfg.gradient_checkpointing),
    )
    overrides = dict(cfg.trainer)
    # report_to: TensorBoard goes to tb_dir through negrec's own callback; every other reporter is TRL's
    reporters = reports_to(overrides.pop("report_to", ["tensorboard"] if tb_dir else "none"))
    overrides["report_to"] = [r for r in reporters if r != "tensorboard"] or "none"
    return build_trainer_config(SFTConfig, pinned, overrides), reporters


def _prepare_checkpoints(ckpt_dir: Path, cfg: SFTStageConfig, resume_key: str | None) -> str | None:
    """The checkpoint to resume from, or None. Rank 0 alone clears checkpoints written for another
    key (or all, without `resume`) and records the key; the others wait for it, then look."""
    key_file = ckpt_dir / "_resume_key"
    if is_main_process():
        if ckpt_dir.exists() and (not cfg.resume or (resume_key and (not key_file.exists() or key_file.read_text() != resume_key))):
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_key:
            key_file.write_text(resume_key)
    ranks_meet()
    last = last_complete_checkpoint(ckpt_dir) if cfg.resume and ckpt_dir.exists() else None
    ranks_meet()  # rank 0 may have removed a checkpoint cut short by a kill
    return last


def train_sft(model, hf_tok, examples: list[dict], cfg: SFTStageConfig, out_dir: Path, tb_dir: Path | None = None,
              resume_key: str | None = None, trainer_args=None):
    """Fine-tune `model` on prompt/completion `examples` with TRL's SFTTrainer; returns the trainer.

    Checkpoints go to out_dir/checkpoints; with `cfg.resume` the last one is resumed when it was
    written for the same `resume_key` (else the folder is cleared and training starts over).
    `trainer_args`: `sft_trainer_args(cfg, out_dir, tb_dir)` when the caller built it before loading the model.
    """
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from trl import SFTTrainer

    args, reporters = trainer_args or sft_trainer_args(cfg, out_dir, tb_dir)
    last = _prepare_checkpoints(Path(args.output_dir), cfg, resume_key)
    columns = {k: [e[k] for e in examples] for k in ("prompt", "completion")}
    tensorboard = tb_dir and "tensorboard" in reporters and is_main_process()
    callbacks = [TensorBoardCallback(SummaryWriter(log_dir=str(tb_dir)))] if tensorboard else []
    if getattr(model, "negrec_new_tokens", None):  # PEFT: the trained token rows are no adapter weight
        callbacks.append(_token_rows_callback())
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                         processing_class=hf_tok, callbacks=callbacks)
    if last:
        main_print(f"[sft] resuming from {last}")
        if (Path(last) / TOKEN_ROWS_FILE).exists():
            load_token_rows(model, torch.load(Path(last) / TOKEN_ROWS_FILE))
    train_or_take(trainer, last)  # the TensorBoard callback closes (flushes) its writer at the end
    return trainer


TOKEN_ROWS_FILE = "negrec_token_rows.pt"


def _token_rows_callback():
    """Writes the PEFT-trained token rows into every Trainer checkpoint (resume reads them back)."""
    from transformers import TrainerCallback

    class TokenRows(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and model is not None:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.exists():
                    torch.save(token_rows(model), path / TOKEN_ROWS_FILE)

    return TokenRows()


def _loss_curve(trainer) -> list[float]:
    return [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]


def _warn_pretrained_rate(model_cfg: ModelConfig, cfg: SFTStageConfig, task: str) -> None:
    """The shipped configs' rates (1e-3 to 5e-3) suit the tiny model trained from scratch; at them a
    pretrained LM's loss rises (SmolLM2: 21 -> 38 in 3 steps), so say so before the stage runs
    (not when only the new token rows train: sid_embeddings_only)."""
    rate = max([cfg.learning_rate] + [float(p.get("learning_rate", cfg.learning_rate)) for p in cfg.phases])
    source = model_cfg.source
    if source != "tiny" and model_cfg.peft.mode != "sid_embeddings_only" and rate > 1e-3:
        main_print(f"[sft_{task}] warning: learning rate {rate:g} is for the tiny model trained from scratch; "
                   f"a pretrained LM ({source}) is usually fine-tuned at 1e-5 to 1e-4 "
                   f"(--set sft_{task}.learning_rate=..., and each of sft_{task}.phases)")


def run_sft(raw: dict, run_dir, task: str = "align") -> dict:
    """Stage `sft --task align|next`: writes run_dir/sft_<task>/{final/, summary.json}; Trainer
    checkpoints go to run_dir/.work/sft-<task>/checkpoints (outside the folder that is swapped)."""
    from negrec.data import Prepared

    run_dir, name = Path(run_dir), f"sft-{task}"  # the stage (negrec.stages)
    fill_cut_unit(raw, run_dir)  # `cut_unit: auto`: the day breaks and the day shuffle follow the unit chosen
    cfg = sft_config(raw, task)
    pcfg = prompt_config(raw)
    out = run_dir / f"sft_{task}"
    init = _init_dir(cfg, task, run_dir)
    if cfg.phases and not (task == "align" and cfg.mode == "timeline"):
        raise ValueError(f"sft_{task}.phases: only the alignment stage in mode: timeline trains in phases")
    model_cfg = section_config(ModelConfig, raw, "model")
    peft = model_cfg.peft
    if up_to_date(raw, run_dir, name):
        return read_json(out / "summary.json")
    _warn_pretrained_rate(model_cfg, cfg, task)
    t0 = time.time()
    data = Prepared.load(run_dir / "data")
    tb_dir = run_dir / "tb" / f"sft_{task}"
    work = work_dir(run_dir, name)  # checkpoints in <run>/.work/sft-<task>: outside the folder that is swapped
    autocast = training_autocast(model_cfg.dtype)  # model.dtype's bf16 autocast (auto: on CUDA), TRL's and the loop's
    # the TRL config before the model (ZeRO-3 shards at load); the timeline loop has its own
    trainer_args = None if task == "next" and cfg.mode == "timeline" else sft_trainer_args(cfg, work, tb_dir, autocast is not None)
    join_launch()  # under torchrun each rank then loads onto its own GPU (for TRL its config did so above)
    model, hf_tok, sid_tok = load_policy(init, dtype=model_cfg.dtype, training=True)  # auto: fp32 master weights
    model = apply_peft(model, peft, new_token_ids(hf_tok, sid_tok))  # the same wrapping for TRL and the timeline loop
    if peft.enabled:
        t = trainable_summary(model)
        main_print(f"[sft_{task}] PEFT {peft.mode}: {t['trainable_params']:,} of {t['all_params']:,} parameters train")
    builder = PromptBuilder(pcfg, sid_tok, data.items, hf_tok)
    if task == "align" and not can_align(data.items):
        return _nothing_to_align(raw, run_dir, model, hf_tok, sid_tok, str(init), t0)
    if task == "next" and cfg.mode == "timeline":
        return _run_timeline(model, hf_tok, sid_tok, builder, data, cfg, run_dir, raw, str(init), t0, autocast)
    if task == "align" and cfg.mode == "timeline":
        return _run_align_loop(model, hf_tok, sid_tok, builder, data, cfg, run_dir, raw, str(init), t0, autocast)
    return _run_prompt_sft(model, hf_tok, sid_tok, builder, data, cfg, task, run_dir, raw, init, t0, tb_dir, work,
                           trainer_args, peft)


def _init_dir(cfg: SFTStageConfig, task: str, run_dir: Path) -> Path:
    """The model the stage starts from: `init_from`, else (next) the alignment stage's, else the built model."""
    if cfg.init_from:
        return Path(cfg.init_from)
    if task == "next" and (run_dir / "sft_align" / "final").exists():
        return run_dir / "sft_align" / "final"
    return run_dir / "model"


def _run_prompt_sft(model, hf_tok, sid_tok, builder, data, cfg: SFTStageConfig, task: str, run_dir: Path, raw: dict,
                    init: Path, t0: float, tb_dir: Path, work: Path, trainer_args, peft) -> dict:
    """`sft --task align|next` in `mode: prompt`: prompt/completion examples through TRL's SFTTrainer."""
    name, out = f"sft-{task}", run_dir / f"sft_{task}"
    if task == "align":
        examples = alignment_examples(builder, sid_tok, data.items, cfg.tasks, cfg.max_items, cfg.item_repeats, cfg.seed)
    else:
        horizon = cfg.horizon or data.main_horizon
        examples = next_negative_examples(builder, data.samples["train"], sid_tok, horizon, cfg.context_mix,
                                          cfg.neg_window_days, cfg.max_samples, cfg.targets_per_sample, cfg.seed)
    if not examples:
        raise ValueError(f"sft_{task}: no training examples (check the items' titles / the train samples' F_H)")
    counts = dict(Counter(e["task"] for e in examples))
    main_print(f"[sft_{task}] {len(examples)} examples {counts} from {init}")
    trainer = train_sft(model, hf_tok, examples, cfg, work, tb_dir=tb_dir, resume_key=fingerprint(raw, run_dir, name),
                        trainer_args=trainer_args)
    model = trainer.model
    summary = {"task": task, "examples": len(examples), "per_task": counts, "init_from": str(init),
               "steps": trainer.state.global_step, "loss_curve": _loss_curve(trainer),
               "train_loss": next((round(float(h["train_loss"]), 4) for h in reversed(trainer.state.log_history)
                                   if "train_loss" in h), None),  # mean over the run, logged even when steps < logging_steps
               "config": to_dict(cfg)}
    if task == "align":
        summary["like_rows_copied"] = _copy_like_rows(model, hf_tok, sid_tok)
    if _measures_alignment(cfg, data.items):
        summary["alignment"] = _alignment_check(model, hf_tok, sid_tok, data.items, cfg, builder)
        if task == "align":
            summary["alignment_not_learnt"] = unlearnt_tasks(summary["alignment"], cfg.tasks)
            _warn_unlearnt("sft_align", summary["alignment_not_learnt"], ALIGN_HINT_PROMPT)
    summary["seconds"] = round(time.time() - t0, 1)
    with full_weights(model):  # ZeRO-3: every rank joins the gather, rank 0 saves the whole model
        if is_main_process():
            info = {"stage": f"sft_{task}", "steps": summary["steps"], "base_model": str(init), "config": to_dict(cfg),
                    "data": {"examples": len(examples), **counts}, "metrics": _card_metrics(summary),
                    **({"peft": to_dict(peft)} if peft.enabled else {})}
            with stage_folder(raw, run_dir, name) as tmp:
                save_policy(model, hf_tok, sid_tok, tmp / "final", extra=info)
                write_json(tmp / "summary.json", summary)
    ranks_meet()
    _print_sft(task, summary, out)
    return summary


def _card_metrics(summary: dict) -> dict:
    """The model card's metrics: training loss (first and last logged, mean) and alignment accuracy."""
    curve = summary["loss_curve"]
    metrics = {"loss_first": curve[0], "loss_last": curve[-1]} if curve else {}
    metrics["train_loss"] = summary["train_loss"]
    for k in ("title_to_sid", "sid_to_title", "valid_sid_rate"):
        if k in summary.get("alignment", {}):
            metrics[f"alignment_{k}"] = round(summary["alignment"][k], 4)
    return metrics


def _print_sft(task: str, summary: dict, out: Path) -> None:
    curve = summary["loss_curve"]
    loss = (f"loss {curve[0]:.3f} -> {curve[-1]:.3f}" if curve else
            f"mean loss {summary['train_loss']:.3f} (fewer steps than logging_steps)" if summary["train_loss"] is not None else "no loss logged")
    main_print(f"[sft_{task}] {summary['steps']} steps, {loss}, {summary['seconds']}s -> {out / 'final'}")
    if "alignment" in summary:
        _print_alignment(summary["alignment"])


def _measures_alignment(cfg: SFTStageConfig, items) -> bool:
    """Whether to measure what the model knows of its items: `eval_items` set, and at least 4 items
    with a title or text, which `alignment_accuracy` asks about (a log of bare ids has none)."""
    return bool(cfg.eval_items) and labelled_items(items) >= 4


def _alignment_check(model, hf_tok, sid_tok, items, cfg: SFTStageConfig, builder) -> dict:
    """`alignment_accuracy` on the items alignment taught (a `max_items` subset when set)."""
    taught = items[items["item_id"].isin(aligned_item_ids(sid_tok, items, cfg.max_items, cfg.seed))]
    return alignment_accuracy(model, hf_tok, sid_tok, taught, n=cfg.eval_items, builder=builder)


ALIGN_HINT = ("raise sft_align.max_steps (and the phases' max_steps): the tiny model learnt title -> SID for "
              "ML-100K's 1,682 items in 3,200 steps of 32, about 30 passes, and not in 1,600")
ALIGN_HINT_PROMPT = ("raise sft_align.epochs (or max_steps), or use mode: timeline: on the tiny model TRL's stage "
                     "stayed at chance after 2 epochs of ML-100K")


def _warn_unlearnt(stage: str, unlearnt: list[str], hint: str) -> None:
    """Say so when alignment did not teach what it trained (`unlearnt_tasks`): a stage at chance
    would otherwise pass unnoticed into the next one."""
    if unlearnt:
        main_print(f"[{stage}] warning: not clearly above chance after training: {', '.join(unlearnt)}; {hint}")


def _print_alignment(a: dict) -> None:
    main_print(f"  alignment on {a['n']} items: {alignment_line(a)}, valid SIDs {a['valid_sid_rate']:.0%}")
