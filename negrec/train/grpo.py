"""Progressive GRPO on TRL's GRPOTrainer, with groups generated under the SID constraint.

The paper's progression: after SFT, GRPO first sees only the negatives of the last few days,
then all negatives, then negatives and positives (long positive histories drown the sparse
negatives). Each stage is a `context_mix` / `neg_window_days` setting of the prompt builder with
its own step budget and KL weight (beta, KL to the SFT reference). A stage may advance early when
its mean reward plateaus ("dynamic balance"); `progressive: false` runs plain GRPO on the final
stage's context for the same total number of steps.

Design (resume-safe): one `SidGRPOTrainer` per stage. The driver `train_progressive_grpo` is a
loop over three named steps: `ProgressStore` (`.work/grpo/progress.json`, written atomically, records
the finished stages and the last *committed* checkpoint of the running stage; a checkpoint folder
only counts once progress.json names it, so a kill during a save resumes from the previous one),
`run_stage` (build the stage's trainer, train, save its final model with `negrec.io.atomic_dir`,
record it) and `finalize` (the summary). Stage k starts from stage k-1's final model; the KL
reference is always the SFT policy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from negrec.config import fill_cut_unit, section_config, to_dict
from negrec.contract import copy_tree, fingerprint, stage_folder, up_to_date, work_dir
from negrec.io import atomic_dir, config_hash, read_json, read_jsonl, write_json, write_text
from negrec.train.trainer_args import (build_trainer_config, check_trainer_overrides, checkpointing_setting, default_bf16,
                                       is_main_process, main_print, ranks_meet, reports_to, train_or_take)

GRPO_ROWS = ("train", "sft_validation")
GRPO_SELECT = ("validation", "last")
GENERATION_MODES = ("sample", "beam")  # also in grpo_trainer (which imports TRL)
GRPO_RESERVED = ("output_dir", "max_steps", "beta")  # trl.GRPOConfig fields negrec sets per stage


def use_bf16(cfg) -> bool:
    return default_bf16() if cfg.bf16 is None else bool(cfg.bf16)


def hash_view(cfg) -> dict:
    """`cfg` as hashed into the GRPO progress fingerprint, with bf16 resolved for this device."""
    view = to_dict(cfg)
    view["bf16"] = use_bf16(cfg)
    return view


@dataclass
class GRPOStageConfig:
    name: str = "neg_recent"
    context_mix: float = 0.0  # prompt builder: 0 = negatives only, 1 = negatives + positives
    neg_window_days: float | None = 3.0  # only the negatives of the last N days (None = all)
    max_steps: int = 20
    beta: float = 0.04  # KL weight to the SFT reference
    plateau_window: int = 0  # dynamic balance: 0 = off; else compare the mean reward of the last two windows
    plateau_min_improvement: float = 0.01  # advance when the last window improves by less than this


def default_stages() -> list[GRPOStageConfig]:
    return [
        GRPOStageConfig("neg_recent", context_mix=0.0, neg_window_days=3.0, max_steps=20, beta=0.04, plateau_window=5),
        GRPOStageConfig("neg_all", context_mix=0.0, neg_window_days=None, max_steps=20, beta=0.04, plateau_window=5),
        GRPOStageConfig("neg_pos", context_mix=1.0, neg_window_days=None, max_steps=20, beta=0.04),
    ]


@dataclass
class ProgressiveGRPOConfig:
    stages: list[GRPOStageConfig] = field(default_factory=default_stages)
    progressive: bool = True  # false: plain GRPO on the final stage's context, same total steps
    policy: str | None = None  # None: run_dir/sft_next/final, else run_dir/sft_align/final
    generation: str = "sample"  # sample: G sampled SIDs per prompt; beam: the top-G constrained beams (MiniOneRec)
    num_generations: int = 8  # G, the group size
    per_device_train_batch_size: int = 32  # completions per device and step (TRL semantics); multiple of G
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"  # constant: every stage gets the same step size
    max_grad_norm: float = 1.0
    max_completion_length: int | None = None  # None: the SID's levels (+ 1 for EOS where answers end with it)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    loss_type: str = "grpo"  # TRL's default is dapo: pin it
    scale_rewards: str = "group"
    num_iterations: int = 1
    epsilon: float = 0.2
    bf16: bool | None = None  # None: bf16 where CUDA supports it, fp32 on CPU
    deepspeed: str | None = None  # path to a DeepSpeed JSON (configs/deepspeed/zero2.json)
    gradient_checkpointing: bool = True  # TRL's default (on the tiny CPU model SFT steps were 2.8x slower without it)
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 10
    max_samples: int | None = None  # cap the training rows (smoke runs)
    # which rows GRPO trains on. "train": the train split's cuts (their futures are events the
    # timeline SFT with fit_until: test already fit); "sft_validation": the valid-split rows of the
    # users whose validation picked the SFT epoch, the only futures before the test cut the SFT never saw
    rows: str = "train"
    # which policy the stage ships. "validation": the SFT start, unless a stage's end beats it on
    # validation Recall@10 (the timeline SFT's validation users) by more than the noise (one SE of
    # the paired difference): then the best such stage (`pick_policy`); "last": the last stage's
    select: str = "validation"
    carry_over_steps: bool = True  # steps a stage leaves by advancing early go to the next stage
    # TRL pass-through: any trl.GRPOConfig field, set on top of the settings above (report_to:
    # [tensorboard, wandb], optim, push_to_hub, ...); unknown keys are refused with the nearest field.
    # TensorBoard (when asked) writes TRL's metrics to run_dir/tb/grpo/trainer.
    trainer: dict = field(default_factory=dict)

    def __post_init__(self):
        check_trainer_overrides("trl:GRPOConfig", self.trainer, "grpo", GRPO_RESERVED)
        if self.rows not in GRPO_ROWS:
            raise ValueError(f"grpo.rows: {self.rows!r} is not one of {GRPO_ROWS}")
        if self.select not in GRPO_SELECT:
            raise ValueError(f"grpo.select: {self.select!r} is not one of {GRPO_SELECT}")
        if self.select == "validation" and self.rows == "sft_validation":
            raise ValueError("grpo.select: validation picks on the SFT validation users' rows, which "
                             "grpo.rows: sft_validation trains on; set grpo.select: last")
        if self.generation not in GENERATION_MODES:
            raise ValueError(f"grpo.generation: {self.generation!r} is not one of {GENERATION_MODES}")
        if not self.stages:
            raise ValueError("grpo.stages: at least one stage is needed")
        if not self.learning_rate > 0:
            raise ValueError(f"grpo.learning_rate must be positive, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError(f"grpo.num_generations: GRPO needs groups of 2 or more, got {self.num_generations}")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"grpo.per_device_train_batch_size ({self.per_device_train_batch_size}) must be a "
                             f"multiple of grpo.num_generations ({self.num_generations})")
        for i, s in enumerate(self.stages):
            if s.max_steps < 1:
                raise ValueError(f"grpo.stages[{i}].max_steps must be >= 1, got {s.max_steps}")


def stage_plan(cfg: ProgressiveGRPOConfig) -> list[GRPOStageConfig]:
    """The stages to run: the configured ones, or one plain stage with the same total steps."""
    if cfg.progressive:
        return list(cfg.stages)
    last = cfg.stages[-1]
    total = sum(s.max_steps for s in cfg.stages)
    return [dataclasses.replace(last, name="plain", max_steps=total, plateau_window=0)]


# --------------------------------------------------------------------------------------
# The driver: stages, progress.json, resume
# --------------------------------------------------------------------------------------
def grpo_args(cfg: ProgressiveGRPOConfig, stage: GRPOStageConfig, output_dir: Path, max_steps: int,
              completion_length: int, seed: int, reward_weights: list[float] | None = None):
    """TRL GRPOConfig with every setting that matters pinned (TRL's defaults are not ours)."""
    import torch
    from trl import GRPOConfig

    checkpointing = checkpointing_setting(GRPOConfig, cfg.gradient_checkpointing)
    overrides = dict(cfg.trainer)
    reporters = reports_to(overrides.pop("report_to", "none"))  # TensorBoard: a callback into run_dir/tb (_stage_trainer)
    overrides["report_to"] = [r for r in reporters if r != "tensorboard"] or "none"
    pinned = dict(
        output_dir=str(output_dir), max_steps=max_steps, seed=seed, data_seed=seed,
        beta=stage.beta, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, reward_weights=reward_weights,
        num_generations=cfg.num_generations, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=0, max_grad_norm=cfg.max_grad_norm, weight_decay=0.0,
        max_completion_length=completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        min_p=None, repetition_penalty=1.0,  # generation itself is pinned by SidGRPOTrainer
        mask_truncated_completions=False, shuffle_dataset=True, disable_dropout=True,
        bf16=use_bf16(cfg), fp16=False, deepspeed=cfg.deepspeed, **checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=None,
        restore_callback_states_from_checkpoint=True, report_to="none", log_completions=False,
        remove_unused_columns=False, dataloader_num_workers=0, pad_to_multiple_of=None,
    )
    return build_trainer_config(GRPOConfig, pinned, overrides)


def _stage_dirname(i: int, stage: GRPOStageConfig) -> str:
    return f"stage{i}_{stage.name}"


class ProgressStore:
    """`out_dir/progress.json` and `out_dir/log.jsonl` of one GRPO run.

    progress.json (written atomically) holds the run's fingerprint, the records of the finished
    stages and the last *committed* checkpoint of the running stage; a checkpoint folder only
    counts once progress.json names it, so a kill during a save resumes from the previous one.
    Progress written under another fingerprint (config, policy, data, rewards) starts over.
    Only the main process writes.
    """

    def __init__(self, out_dir: Path, fingerprint: str):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "progress.json"
        self.log_path = self.out_dir / "log.jsonl"
        progress = read_json(self.path) if self.path.exists() else None
        if progress is not None and progress.get("fingerprint") != fingerprint:
            main_print(f"[grpo] {self.path}: written for another config or policy; starting over")
            progress = None
        if progress is None:
            progress = {"fingerprint": fingerprint, "stages": [], "current": None}
            if is_main_process():
                for d in self.out_dir.glob("stage*"):
                    shutil.rmtree(d, ignore_errors=True)
                if self.log_path.exists():
                    self.log_path.unlink()
                write_json(self.path, progress)
        self.progress = progress

    def finished(self, i: int) -> dict | None:
        """The record of stage i when it finished before a restart."""
        return self.progress["stages"][i] if i < len(self.progress["stages"]) else None

    def steps_done(self) -> int:
        return sum(s["steps"] for s in self.progress["stages"])

    def resume_point(self, i: int) -> tuple[Path | None, int]:
        """(committed checkpoint of stage i, its stage step), or (None, 0) to start the stage afresh.
        Log rows past that step are dropped (they will be logged again)."""
        current = self.progress.get("current")
        resume, step = None, 0
        if current and current.get("index") == i and (self.out_dir / current["checkpoint"]).exists():
            resume, step = self.out_dir / current["checkpoint"], current["step"]
        if is_main_process() and self.log_path.exists():
            rows = [r for r in read_jsonl(self.log_path) if r.get("global_step", 0) <= self.steps_done() + step]
            write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))
        return resume, step

    def commit_checkpoint(self, i: int, path: Path, step: int) -> None:
        """The checkpoint exists in full now: name it in progress.json, then drop the older ones."""
        self.progress["current"] = {"index": i, "checkpoint": str(path.relative_to(self.out_dir)), "step": step}
        write_json(self.path, self.progress)
        for old in path.parent.glob("checkpoint-*"):
            if old.name != path.name:
                shutil.rmtree(old, ignore_errors=True)

    def finish_stage(self, record: dict, stage_dir: Path) -> None:
        """Record a finished stage; its checkpoints (only for resuming it) and, unless its final
        model lives there, its folder are dropped."""
        self.progress["stages"].append(record)
        self.progress["current"] = None
        if is_main_process():
            write_json(self.path, self.progress)
            for old in stage_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
            if (self.out_dir / record["model"]).parent != stage_dir:
                shutil.rmtree(stage_dir, ignore_errors=True)

    def log(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def validated(self, key: str, model_dir: Path, validate: Callable[[Path], Sequence[float]]) -> list[float]:
        """Per-user validation Recall@10 of the policy in `model_dir`, computed once: it is kept in
        progress.json under `key` ("start" for the SFT policy, else the stage index), so a resumed
        run does not score the same policy again."""
        scores = self.progress.setdefault("validation", {})
        if key not in scores:
            scores[key] = [round(float(x), 6) for x in validate(model_dir)]
            if is_main_process():
                write_json(self.path, self.progress)
        return scores[key]


@dataclass
class GRPORun:
    """What every stage of one `train_progressive_grpo` call shares."""

    cfg: ProgressiveGRPOConfig
    sft_dir: Path
    out_dir: Path
    samples: Sequence[dict]
    build_prompt: Callable[..., str]
    reward_funcs: list[Callable]
    reward_weights: list[float] | None
    sid_constraint: object
    completion_length: int
    hf_tok: object
    store: ProgressStore
    tb_dir: Path | None = None
    stop_after_steps: int | None = None
    peft: object = None  # negrec.llm.peft.PeftSettings with mode lora; None: full fine-tuning (or token_rows_only)
    validate: Callable[[Path], Sequence[float]] | None = None  # model folder -> per-user validation recall
    token_rows_only: bool = False  # model.peft.mode: sid_embeddings_only (the LLM frozen, the new token rows train)
    dtype: str = "auto"  # model.dtype: the weights' precision in training (negrec.llm.model.pick_dtype)


def _load_grpo_tokenizer(sft_dir: Path):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(sft_dir)
    hf_tok.padding_side = "left"
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    return hf_tok


def train_progressive_grpo(
    cfg: ProgressiveGRPOConfig,
    *,
    sft_dir: str | Path,
    samples: Sequence[dict],
    build_prompt: Callable[..., str],
    reward_funcs: list[Callable],
    sid_constraint,
    completion_length: int,
    out_dir: str | Path,
    tb_dir: str | Path | None = None,
    reward_weights: list[float] | None = None,
    stop_after_steps: int | None = None,
    run_key: str = "",
    peft=None,
    validate: Callable[[Path], Sequence[float]] | None = None,
    model_dtype: str = "auto",
) -> dict:
    """Run the GRPO stages from the SFT policy in `sft_dir`; resume from `out_dir/progress.json`.

    `samples`: dict rows (dataset columns: future sets etc., passed to the rewards by keyword).
    `build_prompt(row, context_mix=..., neg_window_days=...) -> str` (PromptBuilder.build).
    `run_key`: a hash of what else shaped the run (rewards, prompts); progress made under another
    key is not resumed.
    `peft` (model.peft): with LoRA every stage trains a fresh adapter on the SFT policy, started from the
    previous stage's adapter, so the KL reference (the adapter-free model, as TRL does) stays the SFT
    policy; with sid_embeddings_only every weight but the new token rows is frozen and TRL loads the SFT
    policy as a second, reference model. `sft_dir` must be merged (see `merged_start`).
    `stop_after_steps` stops (as a kill would, after committing a checkpoint) once that many global
    steps are done: used by the resume test and nothing else.
    `validate(model_dir) -> per-user recalls` (main process only; None on the others) scores the SFT
    start and each stage's end for `grpo.select: validation`; the summary's `kept` names the policy
    to ship (`kept["model"]`), `out_dir/final` stays the last stage's.
    `model_dtype` (model.dtype) is the precision the weights train in (`pick_dtype(..., training=True)`:
    fp32 under auto; `cfg.bf16` runs the forward and backward in bf16 autocast).
    Returns a summary dict; the last stage's model is in `out_dir/final`.
    """
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
    if not (sft_dir / "config.json").exists():
        raise FileNotFoundError(f"{sft_dir}: no config.json; not a saved policy (run `negrec sft` first)")
    if not samples:
        raise ValueError("GRPO got no training samples (train rows with a non-empty future-negative set)")
    _check_policy_merged(sft_dir)
    peft = peft if peft is not None and peft.enabled else None
    fingerprint = config_hash({"grpo": hash_view(cfg), "sft": policy_stamp(sft_dir), "n": len(samples),
                               "L": completion_length, "key": run_key, **({"peft": to_dict(peft)} if peft else {})})
    # sid_embeddings_only trains no adapter: the policy is fine-tuned with all but the new token rows
    # frozen, and TRL's reference is the SFT policy as without PEFT
    rows_only = peft is not None and peft.mode == "sid_embeddings_only"
    run = GRPORun(cfg, sft_dir, out_dir, samples, build_prompt, reward_funcs, reward_weights, sid_constraint,
                  completion_length, _load_grpo_tokenizer(sft_dir), ProgressStore(out_dir, fingerprint),
                  Path(tb_dir) if tb_dir else None, stop_after_steps, None if rows_only else peft,
                  validate if cfg.select == "validation" else None, token_rows_only=rows_only, dtype=model_dtype)
    plan = stage_plan(cfg)
    summary = {"stages": [], "progressive": cfg.progressive, "generation": cfg.generation}
    t0 = time.time()
    carry, policy_dir = 0, sft_dir
    candidates = [_validated(run, "start", "sft", 0, sft_dir)]
    for i, stage in enumerate(plan):
        budget = stage.max_steps + (carry if cfg.carry_over_steps else 0)
        record = run.store.finished(i)  # finished before a restart
        if record is None:
            record = run_stage(run, i, stage, budget, policy_dir, last=i == len(plan) - 1)
            if "stopped_at" in record:
                return record
        summary["stages"].append(record)
        carry = budget - record["steps"]
        policy_dir = out_dir / record["model"]
        steps = sum(r["steps"] for r in summary["stages"])
        candidates.append(_validated(run, str(i), record["name"], steps, policy_dir))
    summary["kept"] = pick_policy(candidates) if run.validate else {"name": plan[-1].name, "model": str(out_dir / "final")}
    summary["validation"] = [{k: c[k] for k in ("name", "step", "val_recall@10")} for c in candidates if c["recalls"]]
    return finalize(summary, run.store, out_dir, t0)


def _validated(run: GRPORun, key: str, name: str, step: int, model_dir: Path) -> dict:
    """A candidate policy for `pick_policy`: its per-user validation recalls (empty without `validate`)."""
    recalls = run.store.validated(key, model_dir, run.validate) if run.validate else []
    ranks_meet()  # the other ranks wait while the main process scores
    if recalls and run.tb_dir and is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        with contextlib.closing(SummaryWriter(str(run.tb_dir))) as tb:
            tb.add_scalar("grpo/val_recall@10", sum(recalls) / len(recalls), step)
    mean = round(sum(recalls) / len(recalls), 4) if recalls else None
    if recalls:
        main_print(f"[grpo] validation Recall@10 of {name} (step {step}): {mean:.4f} ({len(recalls)} users)")
    return {"name": name, "step": step, "model": str(model_dir), "recalls": recalls, "val_recall@10": mean}


def pick_policy(candidates: list[dict]) -> dict:
    """The candidate to ship: the SFT start (the first) unless a stage's validation recall beats it
    by more than one standard error of the paired difference (`significantly_worse`, the SFT's
    noise check, turned round); then the best such stage, a later one on a tie. GRPO's start is the
    safe choice: a stage 0.9 SE below it on 200 validation users, within noise, lost 0.024 test
    Recall@10 (bench_grpo_move.py); a lead within noise shows nothing, and shipping it costs a
    second predict pass (docs/RESULTS.md "What GRPO does here").
    Candidates come in training order; each holds `name`, `step`, `model` and per-user `recalls`."""
    import numpy as np

    from negrec.train.timeline import significantly_worse

    start = np.asarray(candidates[0]["recalls"], dtype=float)
    better = [c for c in candidates[1:] if significantly_worse(start, np.asarray(c["recalls"], dtype=float))]
    kept = max(reversed(better), key=lambda c: float(np.mean(c["recalls"]))) if better else candidates[0]
    return {k: kept[k] for k in ("name", "step", "model", "val_recall@10")}


def run_stage(run: GRPORun, i: int, stage: GRPOStageConfig, budget: int, policy_dir: Path, last: bool) -> dict:
    """Train stage i for up to `budget` steps from `policy_dir` (resuming its committed checkpoint),
    save its final model atomically and record it; returns the stage record, or {"stopped_at": step}
    when `stop_after_steps` simulated a kill."""
    step_offset = run.store.steps_done()
    stage_dir = run.out_dir / _stage_dirname(i, stage)
    resume, _ = run.store.resume_point(i)
    trainer, stopper = _stage_trainer(run, i, stage, budget, policy_dir, step_offset, stage_dir)
    main_print(f"[grpo] stage {i} {stage.name!r}: context_mix={stage.context_mix} "
               f"neg_window_days={stage.neg_window_days} beta={stage.beta} steps={budget}"
               + (f" (resuming from {resume.name})" if resume else ""))
    train_or_take(trainer, str(resume) if resume else None)
    steps = trainer.state.global_step
    if stopper is not None and stopper.fired:  # the simulated kill: the checkpoint is committed
        return {"stopped_at": step_offset + steps}
    final_dir = run.out_dir / "final" if last else stage_dir / "final"
    save_final(trainer, run.hf_tok, run.sft_dir, final_dir, peft=run.peft,
               card={"stage": f"grpo ({stage.name})", "base_model": str(run.sft_dir), "steps": steps,
                     "config": to_dict(run.cfg)})
    cb = trainer.stage_callback
    record = {"index": i, "name": stage.name, "steps": steps, "budget": budget, "beta": stage.beta,
              "context_mix": stage.context_mix, "neg_window_days": stage.neg_window_days,
              "advanced_early": bool(cb.advanced_early if cb else False),
              "mean_reward_last": (sum(cb.rewards[-5:]) / len(cb.rewards[-5:])) if cb and cb.rewards else None,
              "model": str(final_dir.relative_to(run.out_dir)),
              "deepspeed_zero_stage": (trainer.accelerator.state.deepspeed_plugin.zero_stage
                                       if trainer.is_deepspeed_enabled else None)}
    run.store.finish_stage(record, stage_dir)
    return record


def _stage_trainer(run: GRPORun, i: int, stage: GRPOStageConfig, budget: int, policy_dir: Path, step_offset: int,
                   stage_dir: Path):
    """The stage's SidGRPOTrainer (prompts at the stage's context, policy from `policy_dir`) and its
    StopAfterSteps callback (None unless `stop_after_steps`)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from negrec.llm.model import pick_dtype
    from negrec.llm.peft import peft_config
    from negrec.train.grpo_trainer import SidGRPOTrainer, StageCallback, StopAfterSteps

    cfg, samples = run.cfg, run.samples
    prompts = [run.build_prompt(r, context_mix=stage.context_mix, neg_window_days=stage.neg_window_days) for r in samples]
    columns = {k: [r[k] for r in samples] for k in samples[0] if k != "prompt"}
    # The GRPOConfig first: with a ZeRO-3 DeepSpeed config it makes from_pretrained shard the weights at load.
    args = grpo_args(cfg, stage, stage_dir, budget, run.completion_length, seed=cfg.seed + i,
                     reward_weights=run.reward_weights)
    # PEFT: every stage wraps the SFT policy in a fresh adapter (TRL's reference: adapters disabled)
    base_dir = run.sft_dir if run.peft else policy_dir
    # fp32 master weights unless model.dtype names another (bf16 weights: AdamW's small updates round away);
    # grpo.bf16 runs the forward and backward in bf16 autocast
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=pick_dtype(run.dtype, training=True))
    # TRL builds the KL reference from config._name_or_path: point it at the SFT policy, so
    # every stage is anchored to SFT (not to the previous stage).
    model.config._name_or_path = str(run.sft_dir)
    if run.token_rows_only:
        from negrec.llm.peft import train_token_rows

        ids = _new_token_ids(run)
        if not ids:
            raise ValueError("model.peft.mode: sid_embeddings_only: no new token ids (the SID constraint has no "
                             "SID tokenizer), so nothing would train")
        model.requires_grad_(False)
        train_token_rows(model, ids)
    callback = StageCallback(stage_index=i, stage_name=stage.name, beta=stage.beta,
                             context_mix=stage.context_mix, neg_window_days=stage.neg_window_days,
                             step_offset=step_offset, log_path=str(run.store.log_path),
                             tb_dir=str(run.tb_dir) if run.tb_dir else None,
                             plateau_window=stage.plateau_window if i < len(stage_plan(cfg)) - 1 else 0,
                             plateau_min_improvement=stage.plateau_min_improvement)
    stopper = StopAfterSteps(run.stop_after_steps - step_offset) if run.stop_after_steps is not None else None
    # LoRA: a fresh adapter per stage; the token rows stay frozen, so TRL's reference (adapters disabled) is SFT
    extra = {"peft_config": peft_config(run.peft)} if run.peft else {}
    trainer = SidGRPOTrainer(
        model=model, reward_funcs=run.reward_funcs,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts, **columns}), processing_class=run.hf_tok,
        sid_constraint=run.sid_constraint, generation=cfg.generation, stage_callback=callback,
        on_checkpoint=(lambda path, step: run.store.commit_checkpoint(i, path, step)) if is_main_process() else None,
        callbacks=[c for c in (stopper, _tensorboard_callback(run)) if c] or None, **extra,
    )
    if run.peft:
        trainer.model.negrec_peft = run.peft
        if policy_dir != run.sft_dir:  # stage k > 0 goes on from stage k-1's adapter
            from negrec.llm.peft import ADAPTER_DIR, load_adapter_weights

            load_adapter_weights(trainer.model, policy_dir / ADAPTER_DIR)
    return trainer, stopper


def _new_token_ids(run: GRPORun) -> list[int]:
    from negrec.llm.peft import new_token_ids

    sid_tok = getattr(run.sid_constraint, "sid_tok", None)
    return new_token_ids(run.hf_tok, sid_tok) if sid_tok is not None else []


def _tensorboard_callback(run: GRPORun):
    """TRL's metrics to run_dir/tb/<stage>/trainer when grpo.trainer.report_to asks for TensorBoard."""
    if not run.tb_dir or "tensorboard" not in reports_to(run.cfg.trainer.get("report_to")) or not is_main_process():
        return None
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(SummaryWriter(log_dir=str(run.tb_dir / "trainer")))


def merged_start(sft_dir: Path, out_dir: Path) -> Path:
    """`sft_dir`, or for a policy saved with `model.peft.merge: false` (base weights + adapter/) its
    merged copy in `out_dir` (written once per GRPO run and kept for its resume, on the main process):
    GRPO trains a fresh adapter on merged SFT weights, which are also its KL reference."""
    from negrec.llm.model import load_policy, save_policy
    from negrec.llm.peft import unmerged_adapter

    adapter = unmerged_adapter(sft_dir)
    if adapter is None:
        return sft_dir
    source = policy_stamp(sft_dir) + policy_stamp(adapter)
    stamp = out_dir / "merged_from.txt"
    if is_main_process() and not (stamp.exists() and stamp.read_text() == source):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # a previous stage's ZeRO-3 config would make this load a collective
        saved = read_json(sft_dir / "config.json")
        dtype = str(saved.get("dtype") or saved.get("torch_dtype") or "float32")  # as saved, not fp32 on CPU
        dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
        model, hf_tok, sid_tok = load_policy(sft_dir, device="cpu", dtype=dtype)  # the adapter applied and merged
        info = read_json(sft_dir / "negrec_model.json") if (sft_dir / "negrec_model.json").exists() else {}
        info = {k: v for k, v in info.items() if k != "peft"}  # no adapter here: the card must not claim one
        save_policy(model, hf_tok, sid_tok, out_dir, extra={**info, "merged_from": str(sft_dir)})
        write_text(stamp, source)
        main_print(f"[grpo] {sft_dir} holds an unmerged adapter: GRPO starts from its merged copy {out_dir}")
    ranks_meet()
    return out_dir


def _check_policy_merged(sft_dir: Path) -> None:
    from negrec.llm.peft import unmerged_adapter

    if unmerged_adapter(sft_dir) is not None:
        raise ValueError(f"{sft_dir}: saved with model.peft.merge: false (base weights + adapter/); GRPO starts "
                         "from a merged policy: pass merged_start(sft_dir, <a folder>) (the grpo stage does)")


def save_final(trainer, hf_tok, sft_dir: Path, final_dir: Path, peft=None, card: dict | None = None) -> None:
    """Write a stage's model with `negrec.io.atomic_dir`: every rank joins save_model (ZeRO-3 gathers
    the weights there) into the main process's staging folder, which replaces `final_dir` only once
    the weights, the tokenizer and the policy extras are all in it.

    With `peft` the adapter goes to `adapter/` and the main process writes the policy weights
    beside it: the SFT policy with the adapter merged (`merge: true`), or the SFT policy as it is."""
    from accelerate.utils import broadcast_object_list

    from negrec.llm.model import write_model_card
    from negrec.llm.peft import ADAPTER_DIR

    acc = trainer.accelerator
    with atomic_dir(final_dir) if acc.is_main_process else contextlib.nullcontext() as tmp:
        staging = broadcast_object_list([str(tmp) if tmp is not None else None])[0]
        trainer.save_model(str(Path(staging) / ADAPTER_DIR) if peft else staging)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if peft:
                _write_peft_policy(sft_dir, Path(staging), peft)
            hf_tok.save_pretrained(staging)
            _copy_policy_extras(sft_dir, Path(staging))
            if card:
                write_model_card(Path(staging), {**card, **({"peft": dataclasses.asdict(peft)} if peft else {})})
    acc.wait_for_everyone()


def _write_peft_policy(sft_dir: Path, staging: Path, peft) -> None:
    """The policy weights beside `staging/adapter`: SFT merged with the adapter (or SFT alone), loaded on
    the main process from disk (so a ZeRO-3 run need not gather the model), and `peft.json`."""
    from transformers import AutoModelForCausalLM

    from negrec.llm.peft import ADAPTER_DIR, attach_adapter, write_peft_file

    base = AutoModelForCausalLM.from_pretrained(sft_dir, dtype="auto")
    (attach_adapter(base, staging / ADAPTER_DIR) if peft.merge else base).save_pretrained(staging)
    write_peft_file(staging, peft)


def _copy_policy_extras(src: Path, dst: Path) -> None:
    """Carry what negrec.llm.save_policy keeps beside the weights (the SID tokenizer, model info)."""
    for name in ("sid_tokenizer", "negrec_model.json"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def finalize(summary: dict, store: ProgressStore, out_dir: Path, t0: float) -> dict:
    """The run's summary: totals and the reward at the start and the end of the log."""
    log = store.log()
    summary.update({
        "final_model": str(out_dir / "final"), "total_steps": sum(s["steps"] for s in summary["stages"]),
        "seconds": round(time.time() - t0, 1), "log": str(store.log_path),
        "mean_reward_first": _mean([r["reward"] for r in log[:5]]),
        "mean_reward_last": _mean([r["reward"] for r in log[-5:]]),
        "zero_std_share_mean": _mean([r.get("zero_std_share") for r in log]),
    })
    return summary


def _mean(xs) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------------------
# The stage entry: run_grpo(raw, run_dir)
# --------------------------------------------------------------------------------------
def find_sft_policy(run_dir: Path, policy: str | None = None) -> Path:
    if policy:
        p = Path(policy)
        p = p if p.is_absolute() else run_dir / p
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"grpo.policy: {p} is not a saved model folder")
        return p
    for cand in (run_dir / "sft_next" / "final", run_dir / "sft_align" / "final"):
        if (cand / "config.json").exists():
            return cand
    raise FileNotFoundError(f"{run_dir}/sft_next/final and {run_dir}/sft_align/final: no SFT policy; run `negrec sft` first")


def policy_stamp(model_dir: Path) -> str:
    """Identity of a saved policy (path + weight files' size and mtime): a retrained SFT policy
    invalidates GRPO progress made from the old one."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return config_hash([str(model_dir.resolve())] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def sft_validation_rows(raw: dict, prepared, horizon: int) -> list[dict]:
    """The valid-split rows of the timeline SFT's validation users (as `validation_rows` picks them
    from section sft_next) whose F_H is not empty, as plain dict rows."""
    from negrec.train.sft import sft_config
    from negrec.train.timeline import validation_rows

    sft = sft_config(raw, "next")
    users = {r["user_id"] for r in validation_rows(prepared.samples["valid"], sft.horizon or prepared.main_horizon,
                                                   sft.val_rows, sft.seed)}
    valid = prepared.samples["valid"]
    return _plain_rows(_with_targets(valid[valid["user_id"].isin(users)], horizon))


def training_rows(prepared, horizon: int, max_samples: int | None = None, seed: int = 0) -> list[dict]:
    """Train-split samples whose future-negative set F_H is not empty, as plain dict rows."""
    df = _with_targets(prepared.samples["train"], horizon)
    if max_samples is not None and len(df) > max_samples:
        df = df.sample(n=max_samples, random_state=seed).reset_index(drop=True)
    return _plain_rows(df)


def _with_targets(df, horizon: int):
    """The rows of a sample table whose future-negative set F_H is not empty."""
    col = f"future_neg_h{horizon}"
    if col not in df.columns:
        raise KeyError(f"data/samples: the sample table lacks column {col!r} (data.horizons must include {horizon})")
    return df[df[col].map(len) > 0].reset_index(drop=True)


def _plain_rows(df) -> list[dict]:
    """A sample table as plain dict rows (lists and Python scalars, as TRL's dataset takes them)."""
    import numpy as np

    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
             for k, v in rec.items()} for rec in df.to_dict("records")]


def run_grpo(raw: dict, run_dir, stop_after_steps: int | None = None, plain: bool = False) -> dict:
    """`negrec grpo`: progressive GRPO from the SFT policy; writes run_dir/grpo/.

    `plain=True` is the ablation: plain GRPO (grpo.progressive forced to false, same total steps),
    written to run_dir/grpo_plain/ so that both policies live in one run folder."""
    from negrec.data import Prepared
    from negrec.llm import PromptBuilder
    from negrec.llm.prompts import prompt_config
    from negrec.rewards import RewardConfig, build_rewards

    from negrec.llm.model import ModelConfig

    run_dir = Path(run_dir)
    fill_cut_unit(raw, run_dir)  # `cut_unit: auto`: the prompt's day breaks follow the unit the data stage chose
    cfg = section_config(ProgressiveGRPOConfig, raw, "grpo")
    model_cfg = section_config(ModelConfig, raw, "model")
    peft = model_cfg.peft
    if plain:
        cfg = dataclasses.replace(cfg, progressive=False)
    reward_cfg = section_config(RewardConfig, raw, "rewards")
    prompt_cfg = prompt_config(raw)
    name = "grpo_plain" if plain else "grpo"
    stage = "grpo-plain" if plain else "grpo"  # the stage (negrec.stages)
    out_dir = run_dir / name
    if up_to_date(raw, run_dir, stage):
        return read_json(out_dir / "summary.json")
    prepared = Prepared.load(run_dir / "data")
    rows = (sft_validation_rows(raw, prepared, reward_cfg.horizon) if cfg.rows == "sft_validation"
            else training_rows(prepared, reward_cfg.horizon, cfg.max_samples, cfg.seed))
    if not rows:  # before the SFT policy is read or merged: nothing of it is needed
        return _nothing_to_train(raw, run_dir, stage, cfg.rows, reward_cfg.horizon)
    policy = find_sft_policy(run_dir, cfg.policy)
    # progress, checkpoints and stage models in <run>/.work/<stage>: outside the folder that is swapped
    work = work_dir(run_dir, stage)
    sft_dir = merged_start(policy, work / "sft_merged")

    from transformers import AutoTokenizer

    sid_tok = _load_sid_tokenizer(run_dir, sft_dir)
    hf_tok = AutoTokenizer.from_pretrained(sft_dir)
    builder = PromptBuilder(prompt_cfg, sid_tok, prepared.items, hf_tok)
    # Swing co-negatives from the training log only (what the valid/test users did later stays unseen).
    rewards = build_rewards(reward_cfg, sid_tok, train_log=prepared.fit_log("train"))
    validate = validator(raw, prepared, sid_tok, hf_tok, builder) if cfg.select == "validation" else None
    constraint = builder.sid_constraint(hf_tok)
    summary = train_progressive_grpo(
        cfg, sft_dir=sft_dir, samples=rows, build_prompt=builder.build, reward_funcs=rewards.functions,
        reward_weights=rewards.weights, sid_constraint=constraint,
        completion_length=cfg.max_completion_length or constraint.new_tokens,
        out_dir=work, tb_dir=run_dir / "tb" / name, stop_after_steps=stop_after_steps,
        run_key=fingerprint(raw, run_dir, stage), peft=peft, validate=validate if is_main_process() else None,
        model_dtype=model_cfg.dtype)
    if "stopped_at" in summary:
        return summary
    summary.update({"policy": str(policy), "train_rows": len(rows), "horizon": reward_cfg.horizon,
                    "rewards": dict(zip(rewards.names, rewards.weights)),
                    "final_model": str(out_dir / "final"), "log": str(out_dir / "log.jsonl")})
    if is_main_process():
        _write_stage(raw, run_dir, stage, summary, work, out_dir)
        _print_summary(summary)
    ranks_meet()
    return summary


def _write_stage(raw: dict, run_dir: Path, stage: str, summary: dict, work: Path, out_dir: Path) -> None:
    """The stage folder: the kept policy as final/, GRPO as trained as last/ when another policy
    ships, the log and the summary (`summary` updated with where they now are)."""
    with stage_folder(raw, run_dir, stage) as tmp:
        # links: the work folder (and the SFT policy) stay whole until the swap
        kept = Path(summary["kept"]["model"])
        copy_tree(kept, tmp / "final")
        if kept.resolve() != (work / "final").resolve():  # GRPO as trained stays, beside what ships
            copy_tree(work / "final", tmp / "last")
            summary["last_model"] = str(out_dir / "last")
        if work.resolve() in kept.resolve().parents:  # the work folder goes once the stage is in place
            summary["kept"]["model"] = summary["final_model"]
        if (work / "log.jsonl").exists():
            shutil.copy2(work / "log.jsonl", tmp / "log.jsonl")
        write_json(tmp / "summary.json", summary)


def _nothing_to_train(raw: dict, run_dir: Path, stage: str, row_source: str, horizon: int) -> dict:
    """No rows to train on: the stage's folder holds no policy, only why (its summary), so predict
    and evaluate rank the SFT policy as the main one (it replaces an older run's folder, which
    predict would refuse as out of date); says why in one line."""
    if row_source == "sft_validation":
        why = (f"no validation rows with a dislike in the {horizon} days after the cut (sft_next.val_rows is 0, "
               f"or its users have none)")
        fix = "raise sft_next.val_rows or set grpo.rows: train"
    else:
        why = (f"no train rows with a dislike in the {horizon} days after the cut (a cut needs "
               f"data.split.min_context events before it)")
        fix = "lower data.split.min_context to give GRPO rows"
    print(f"[{stage}] warning: {why}: GRPO not run, the SFT policy stands; {fix}, or add {stage} to "
          f"pipeline.skip", file=sys.stderr)
    summary = {"skipped": why}
    if is_main_process():
        with stage_folder(raw, run_dir, stage) as tmp:
            write_json(tmp / "summary.json", summary)
    return summary


def validator(raw: dict, prepared, sid_tok, hf_tok, builder) -> Callable[[Path], list[float]] | None:
    """`model_dir -> per-user validation Recall@10` on the rows sft_next picks its epoch on (its
    validation users' valid cuts, scored as it scores them); None when the log has no such rows."""
    from negrec.llm.model import ModelConfig
    from negrec.train.sft import sft_config
    from negrec.train.timeline import validation_recalls, validation_rows

    sft = sft_config(raw, "next")
    dtype = section_config(ModelConfig, raw, "model").dtype
    horizon = sft.horizon or prepared.main_horizon
    rows = validation_rows(prepared.samples["valid"], horizon, sft.val_rows, sft.seed)
    if not rows:
        main_print("[grpo] no validation rows (valid split without future negatives): the last stage is kept")
        return None

    def validate(model_dir: Path) -> list[float]:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        from negrec.llm.model import load_policy

        # Under ZeRO-3 a stage's GRPOConfig makes every from_pretrained shard the weights over the
        # ranks, a collective the other ranks (waiting in ranks_meet) never join: this copy loads
        # whole on the main process. The next stage's GRPOConfig sets the config again before its model.
        unset_hf_deepspeed_config()
        model = load_policy(model_dir, dtype=dtype)[0].eval()  # as `negrec predict` loads it (an unmerged adapter too)
        return validation_recalls(model, hf_tok, sid_tok, builder, rows, horizon, num_beams=sft.val_beams).tolist()

    return validate


def _load_sid_tokenizer(run_dir: Path, sft_dir: Path):
    from negrec.tokenizer import SemanticIdTokenizer
    from negrec.tokenizer.sid import CONFIG_NAME

    for cand in (sft_dir / "sid_tokenizer", run_dir / "tokenize" / "sid_tokenizer", sft_dir):
        if (cand / CONFIG_NAME).exists():
            return SemanticIdTokenizer.from_pretrained(cand)
    raise FileNotFoundError(f"no SID tokenizer ({CONFIG_NAME}) in {sft_dir}/sid_tokenizer or "
                            f"{run_dir}/tokenize/sid_tokenizer; run `negrec tokenize`")


def _print_summary(s: dict) -> None:
    print(f"[grpo] done in {s['seconds']}s, {s['total_steps']} steps "
          f"({'progressive' if s['progressive'] else 'plain'}, generation={s['generation']})")
    for st in s["stages"]:
        early = " (advanced early)" if st.get("advanced_early") else ""
        print(f"  stage {st['index']} {st['name']:<12} steps {st['steps']:>4}/{st['budget']:<4} beta {st['beta']:<6} "
              f"mean reward (last) {st['mean_reward_last'] if st['mean_reward_last'] is None else round(st['mean_reward_last'], 4)}{early}")
    print(f"  reward first->last: {s['mean_reward_first']} -> {s['mean_reward_last']}; "
          f"share of zero-std groups: {s['zero_std_share_mean']}")
    if (s["zero_std_share_mean"] or 0.0) >= 0.99:
        print("  warning: (nearly) every group's completions scored alike, so GRPO had no reward signal (only the "
              "KL term): a reward that tells them apart (rewards.weights: sid_prefix, conrec), more "
              "num_generations, or sampling")
    if s.get("validation"):
        curve = ", ".join(f"{v['name']} {v['val_recall@10']:.4f}" for v in s["validation"])
        print(f"  validation Recall@10: {curve}")
    print(f"  kept: {s['kept']['name']} (step {s['kept'].get('step', s['total_steps'])}) -> {s['final_model']}")
