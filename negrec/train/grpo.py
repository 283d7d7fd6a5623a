"""Progressive GRPO on TRL's GRPOTrainer, with groups generated under the SID constraint.

The paper's progression: after SFT, GRPO first sees only the negatives of the last few days,
then all negatives, then negatives and positives (long positive histories drown the sparse
negatives). Each stage is a `context_mix` / `neg_window_days` setting of the prompt builder with
its own step budget and KL weight (beta, KL to the SFT reference). A stage may advance early when
its mean reward plateaus ("dynamic balance"); `progressive: false` runs plain GRPO on the final
stage's context for the same total number of steps.

Design (resume-safe): one `SidGRPOTrainer` per stage. `grpo/progress.json` (written atomically)
records the finished stages and the last *committed* checkpoint of the running stage; a
checkpoint folder only counts once progress.json names it, so a kill during a save resumes
from the previous one. Stage k starts from stage k-1's final model; the KL reference is always
the SFT policy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from negrec.config import section_config, to_dict
from negrec.io import atomic_dir, config_hash, mark_done, read_json, stage_done, write_json, write_text

GENERATION_MODES = ("sample", "beam")


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
    num_generations: int = 4  # G, the group size
    per_device_train_batch_size: int = 8  # completions per device and step (TRL semantics); multiple of G
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"  # constant: every stage gets the same step size
    max_grad_norm: float = 1.0
    max_completion_length: int | None = None  # None: SID levels + 1 (the EOS)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    loss_type: str = "grpo"  # TRL's default is dapo: pin it
    scale_rewards: str = "group"
    num_iterations: int = 1
    epsilon: float = 0.2
    bf16: bool = False
    deepspeed: str | None = None  # path to a DeepSpeed JSON (configs/deepspeed/zero2.json)
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 10
    max_samples: int | None = None  # cap the training rows (smoke runs)
    carry_over_steps: bool = True  # steps a stage leaves by advancing early go to the next stage

    def __post_init__(self):
        if self.generation not in GENERATION_MODES:
            raise ValueError(f"grpo.generation: {self.generation!r} is not one of {GENERATION_MODES}")
        if not self.stages:
            raise ValueError("grpo.stages: at least one stage is needed")
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
# The trainer: TRL's GRPOTrainer with SID-constrained group generation
# --------------------------------------------------------------------------------------
def _trl():
    # Imported lazily: `import negrec.train` must stay cheap for the CLI.
    import trl

    return trl


def _make_trainer_class():
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, TrainerCallback
    from transformers.trainer_callback import ExportableState
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import pad

    class StageCallback(TrainerCallback, ExportableState):
        """Logs the active stage (jsonl + TensorBoard, global step across stages) and advances
        a stage early when its mean reward plateaus. Its state rides in trainer_state.json."""

        def __init__(self, stage_index: int = 0, stage_name: str = "", beta: float = 0.0, context_mix: float = 1.0,
                     neg_window_days: float | None = None, step_offset: int = 0, log_path: str | None = None,
                     tb_dir: str | None = None, plateau_window: int = 0, plateau_min_improvement: float = 0.0):
            self.stage_index, self.stage_name, self.beta = stage_index, stage_name, beta
            self.context_mix, self.neg_window_days, self.step_offset = context_mix, neg_window_days, step_offset
            self.log_path, self.tb_dir = log_path, tb_dir
            self.plateau_window, self.plateau_min_improvement = plateau_window, plateau_min_improvement
            self.rewards: list[float] = []  # mean reward of each generation round of this stage
            self.advanced_early = False
            self._tb = None

        def state(self) -> dict:
            args = {k: getattr(self, k) for k in ("stage_index", "stage_name", "beta", "context_mix", "neg_window_days",
                                                  "step_offset", "log_path", "tb_dir", "plateau_window",
                                                  "plateau_min_improvement")}
            return {"args": args, "attributes": {"rewards": list(self.rewards), "advanced_early": self.advanced_early}}

        def stage_fields(self) -> dict:
            return {"stage": self.stage_index, "stage_name": self.stage_name, "beta": self.beta,
                    "context_mix": self.context_mix, "neg_window_days": self.neg_window_days}

        def plateaued(self) -> bool:
            w = self.plateau_window
            if w <= 0 or len(self.rewards) < 2 * w:
                return False
            last, prev = self.rewards[-w:], self.rewards[-2 * w:-w]
            return sum(last) / w - sum(prev) / w < self.plateau_min_improvement

        def on_step_end(self, args, state, control, **kwargs):
            if self.plateaued() and state.global_step < state.max_steps:
                self.advanced_early = True
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs and "reward" not in logs:
                return
            step = self.step_offset + state.global_step
            row = {"global_step": step, "stage_step": state.global_step, **self.stage_fields(),
                   "reward": logs.get("reward"), "reward_std": logs.get("reward_std"),
                   "zero_std_share": logs.get("frac_reward_zero_std"), "kl": logs.get("kl"),
                   "loss": logs.get("loss"), "learning_rate": logs.get("learning_rate"),
                   "step_time": logs.get("step_time")}
            row.update({k: v for k, v in logs.items() if k.startswith("rewards/")})
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if self.tb_dir:
                if self._tb is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(self.tb_dir)
                for k, v in row.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("global_step",):
                        self._tb.add_scalar(f"grpo/{k}", v, step)
                self._tb.flush()

        def on_train_end(self, args, state, control, **kwargs):
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    class SidGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose groups are SIDs generated under a `SidConstraint` trie.

        `generation="sample"`: each of the G rows of a group samples one SID (TRL's own path, plus
        the constraint's logits processor). `generation="beam"`: each group is one constrained beam
        search with G beams, and its rows take the G best beams (MiniOneRec).
        """

        def __init__(self, *args, sid_constraint=None, generation: str = "sample", stage_callback=None,
                     on_checkpoint=None, **kwargs):
            if sid_constraint is None:
                raise ValueError("SidGRPOTrainer needs a sid_constraint (negrec.llm.SidConstraint)")
            if generation not in GENERATION_MODES:
                raise ValueError(f"generation must be one of {GENERATION_MODES}, got {generation!r}")
            callbacks = list(kwargs.pop("callbacks", None) or [])
            if stage_callback is not None:
                callbacks.append(stage_callback)
            super().__init__(*args, callbacks=callbacks, **kwargs)
            if self.use_vllm or self.use_transformers_continuous_batching:
                raise ValueError("SidGRPOTrainer generates with transformers' generate (the SID logits processor); "
                                 "use_vllm / continuous batching are not supported")
            self.sid_constraint = sid_constraint
            self.generation = generation
            self.on_checkpoint = on_checkpoint
            # Pinned beam settings: G distinct SIDs per group, scored by summed log-prob (no length bias:
            # every SID has the same length).
            self.beam_generation_config = GenerationConfig(
                max_new_tokens=self.max_completion_length, do_sample=False, num_beams=self.num_generations,
                num_return_sequences=self.num_generations, length_penalty=0.0, early_stopping=True,
                pad_token_id=self._tokenizer.pad_token_id, bos_token_id=self._tokenizer.bos_token_id,
                eos_token_id=self.eos_token_ids, disable_compile=True)

        # The stage callback is replaced by a fresh instance when a checkpoint is restored: look it up.
        @property
        def stage_callback(self):
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, StageCallback):
                    return cb
            return None

        def log(self, logs: dict, start_time: float | None = None) -> None:
            cb = self.stage_callback
            if cb is not None and self.model.training:
                # The active stage and its KL weight go into log_history (trainer state) and every reporter.
                logs = {**logs, "stage": cb.stage_index, "stage_beta": cb.beta}
            super().log(logs, start_time)

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            cb = self.stage_callback
            rewards = self._metrics["train"].get("reward") if self.model.training else None
            if cb is not None and rewards:
                cb.rewards.append(float(rewards[-1]))
            return out

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.on_checkpoint is not None and self.args.should_save:
                from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

                path = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                self.on_checkpoint(path, self.state.global_step)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            device = self.accelerator.device
            prompts = [torch.tensor(ids) for ids in prompt_ids]
            input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left")
            attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left")
            prompt_len = input_ids.size(1)
            processors = LogitsProcessorList([self.sid_constraint.logits_processor(prompt_len)])
            with (
                unwrap_model_for_generation(
                    self.model_wrapped, self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as unwrapped_model,
                torch.no_grad(),
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
            ):
                if self.generation == "beam":
                    completion_ids = self._beam_groups(unwrapped_model, input_ids, attention_mask, processors,
                                                       num_generations)
                else:
                    out = unwrapped_model.generate(input_ids=input_ids.to(device),
                                                   attention_mask=attention_mask.to(device),
                                                   generation_config=self.generation_config,
                                                   logits_processor=processors)
                    completion_ids = out[:, prompt_len:]
            return self._cut_after_eos(completion_ids.cpu()), None

        def _beam_groups(self, model, input_ids, attention_mask, processors, num_generations):
            # Rows arrive as contiguous groups of G copies of one prompt; a group may straddle two
            # processes, so a row's rank in its group comes from its global position.
            n = input_ids.size(0)
            offset = self.accelerator.process_index * n
            positions = [offset + i for i in range(n)]
            groups = sorted({p // num_generations for p in positions})
            first_row = {g: next(i for i, p in enumerate(positions) if p // num_generations == g) for g in groups}
            idx = torch.tensor([first_row[g] for g in groups])
            config = self.beam_generation_config
            if num_generations != config.num_beams:  # eval groups may differ in size
                config = GenerationConfig(**{**config.to_dict(), "num_beams": num_generations,
                                             "num_return_sequences": num_generations})
            device = self.accelerator.device
            out = model.generate(input_ids=input_ids[idx].to(device), attention_mask=attention_mask[idx].to(device),
                                 generation_config=config, logits_processor=processors)
            out = out[:, input_ids.size(1):]
            group_pos = {g: k for k, g in enumerate(groups)}
            rows = [group_pos[p // num_generations] * num_generations + p % num_generations for p in positions]
            return out[torch.tensor(rows, device=out.device)]

        def _cut_after_eos(self, completion_ids):
            is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids))
            eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
            has_eos = is_eos.any(dim=1)
            eos_idx[has_eos] = is_eos.int().argmax(dim=1)[has_eos]
            keep = torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1) <= eos_idx.unsqueeze(1)
            return [c[m].tolist() for c, m in zip(completion_ids, keep)]

    return SidGRPOTrainer, StageCallback


_CLASSES = None


def _classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _make_trainer_class()
    return _CLASSES


def __getattr__(name):
    # `from negrec.train.grpo import SidGRPOTrainer` without importing TRL at module import.
    if name == "SidGRPOTrainer":
        return _classes()[0]
    if name == "StageCallback":
        return _classes()[1]
    raise AttributeError(name)


# --------------------------------------------------------------------------------------
# The driver: stages, progress.json, resume
# --------------------------------------------------------------------------------------
def grpo_args(cfg: ProgressiveGRPOConfig, stage: GRPOStageConfig, output_dir: Path, max_steps: int,
              completion_length: int, seed: int, reward_weights: list[float] | None = None):
    """TRL GRPOConfig with every setting that matters pinned (TRL's defaults are not ours)."""
    import torch

    trl = _trl()
    return trl.GRPOConfig(
        output_dir=str(output_dir), max_steps=max_steps, seed=seed, data_seed=seed,
        beta=stage.beta, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, reward_weights=reward_weights,
        num_generations=cfg.num_generations, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=0, max_grad_norm=cfg.max_grad_norm, weight_decay=0.0,
        max_completion_length=completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        min_p=None, repetition_penalty=1.0, generation_kwargs={"num_beams": 1},
        mask_truncated_completions=False, shuffle_dataset=True, disable_dropout=True,
        bf16=cfg.bf16, fp16=False, activation_checkpointing=False, deepspeed=cfg.deepspeed,
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=None,
        restore_callback_states_from_checkpoint=True, report_to="none", log_completions=False,
        remove_unused_columns=False, dataloader_num_workers=0, pad_to_multiple_of=None,
    )


def _stage_dirname(i: int, stage: GRPOStageConfig) -> str:
    return f"stage{i}_{stage.name}"


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return rows


def _truncate_log(path: Path, max_step: int) -> None:
    """Drop log rows past the step a resume restarts from (they will be logged again)."""
    if path.exists():
        rows = [r for r in _read_log(path) if r.get("global_step", 0) <= max_step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


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
) -> dict:
    """Run the GRPO stages from the SFT policy in `sft_dir`; resume from `out_dir/progress.json`.

    `samples`: dict rows (dataset columns: future sets etc., passed to the rewards by keyword).
    `build_prompt(row, context_mix=..., neg_window_days=...) -> str` (PromptBuilder.build).
    `stop_after_steps` stops (as a kill would, after committing a checkpoint) once that many global
    steps are done: used by the resume test and nothing else.
    Returns a summary dict; the final model is in `out_dir/final`.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    SidGRPOTrainer, StageCallback = _classes()
    out_dir, sft_dir = Path(out_dir), Path(sft_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (sft_dir / "config.json").exists():
        raise FileNotFoundError(f"{sft_dir}: no config.json; not a saved policy (run `negrec sft` first)")
    if not samples:
        raise ValueError("GRPO got no training samples (train rows with a non-empty future-negative set)")
    plan = stage_plan(cfg)
    log_path = out_dir / "log.jsonl"
    progress_path = out_dir / "progress.json"
    fingerprint = config_hash({"grpo": to_dict(cfg), "sft": str(sft_dir.resolve()), "n": len(samples),
                               "L": completion_length})
    progress = read_json(progress_path) if progress_path.exists() else None
    if progress is not None and progress.get("fingerprint") != fingerprint:
        print(f"[grpo] {progress_path}: written for another config or policy; starting over")
        progress = None
    if progress is None:
        progress = {"fingerprint": fingerprint, "stages": [], "current": None}
        if _is_main_process():
            for d in out_dir.glob("stage*"):
                shutil.rmtree(d, ignore_errors=True)
            if log_path.exists():
                log_path.unlink()
            write_json(progress_path, progress)

    hf_tok = AutoTokenizer.from_pretrained(sft_dir)
    hf_tok.padding_side = "left"
    if hf_tok.pad_token is None:
        hf_tok.pad_token = hf_tok.eos_token
    columns = {k: [r[k] for r in samples] for k in samples[0] if k != "prompt"}

    summary = {"stages": [], "progressive": cfg.progressive, "generation": cfg.generation}
    t0 = time.time()
    carry = 0
    policy_dir = sft_dir
    for i, stage in enumerate(plan):
        done = progress["stages"][i] if i < len(progress["stages"]) else None
        budget = stage.max_steps + (carry if cfg.carry_over_steps else 0)
        if done is not None:  # finished before a restart
            carry = budget - done["steps"]
            policy_dir = out_dir / done["model"]
            summary["stages"].append(done)
            continue
        step_offset = sum(s["steps"] for s in progress["stages"])
        stage_dir = out_dir / _stage_dirname(i, stage)
        current = progress.get("current")
        resume = None
        if current and current.get("index") == i and (out_dir / current["checkpoint"]).exists():
            resume = out_dir / current["checkpoint"]
        if _is_main_process():
            _truncate_log(log_path, step_offset + (current["step"] if resume else 0))

        prompts = [build_prompt(r, context_mix=stage.context_mix, neg_window_days=stage.neg_window_days)
                   for r in samples]
        dataset = Dataset.from_dict({"prompt": prompts, **columns})
        model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
        # TRL builds the KL reference from config._name_or_path: point it at the SFT policy, so
        # every stage is anchored to SFT (not to the previous stage).
        model.config._name_or_path = str(sft_dir)
        args = grpo_args(cfg, stage, stage_dir, budget, completion_length, seed=cfg.seed + i,
                         reward_weights=reward_weights)
        callback = StageCallback(stage_index=i, stage_name=stage.name, beta=stage.beta,
                                 context_mix=stage.context_mix, neg_window_days=stage.neg_window_days,
                                 step_offset=step_offset, log_path=str(log_path),
                                 tb_dir=str(tb_dir) if tb_dir else None,
                                 plateau_window=stage.plateau_window if i < len(plan) - 1 else 0,
                                 plateau_min_improvement=stage.plateau_min_improvement)

        def commit(path: Path, step: int, _i=i, _dir=stage_dir):
            # The checkpoint exists in full now: name it in progress.json, then drop older ones.
            progress["current"] = {"index": _i, "checkpoint": str(path.relative_to(out_dir)), "step": step}
            write_json(progress_path, progress)
            for old in _dir.glob("checkpoint-*"):
                if old.name != path.name:
                    shutil.rmtree(old, ignore_errors=True)

        stopper = None
        if stop_after_steps is not None:
            stopper = _StopAt(stop_after_steps - step_offset)
        trainer = SidGRPOTrainer(
            model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=hf_tok,
            sid_constraint=sid_constraint, generation=cfg.generation, stage_callback=callback,
            on_checkpoint=commit if _is_main_process() else None,
            callbacks=[stopper] if stopper else None,
        )
        print(f"[grpo] stage {i} {stage.name!r}: context_mix={stage.context_mix} "
              f"neg_window_days={stage.neg_window_days} beta={stage.beta} steps={budget}"
              + (f" (resuming from {resume.name})" if resume else ""))
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        steps = trainer.state.global_step
        if stopper is not None and stopper.fired:  # the simulated kill: the checkpoint is committed
            return {"stopped_at": step_offset + steps}
        cb = trainer.stage_callback
        final_dir = out_dir / "final" if i == len(plan) - 1 else stage_dir / "final"
        if _is_main_process():
            with atomic_dir(final_dir) as tmp:
                trainer.save_model(str(tmp))
                hf_tok.save_pretrained(str(tmp))
                _copy_policy_extras(sft_dir, Path(tmp))
        trainer.accelerator.wait_for_everyone()
        record = {"index": i, "name": stage.name, "steps": steps, "budget": budget, "beta": stage.beta,
                  "context_mix": stage.context_mix, "neg_window_days": stage.neg_window_days,
                  "advanced_early": bool(cb.advanced_early if cb else False),
                  "mean_reward_last": (sum(cb.rewards[-5:]) / len(cb.rewards[-5:])) if cb and cb.rewards else None,
                  "model": str(final_dir.relative_to(out_dir))}
        progress["stages"].append(record)
        progress["current"] = None
        if _is_main_process():
            write_json(progress_path, progress)
            # Checkpoints are only for resuming this stage: drop them once it is recorded as done.
            for old in stage_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
            if final_dir.parent != stage_dir:
                shutil.rmtree(stage_dir, ignore_errors=True)
        summary["stages"].append(record)
        carry = budget - steps
        policy_dir = final_dir
        del trainer, model

    log = _read_log(log_path)
    summary.update({
        "final_model": str(out_dir / "final"), "total_steps": sum(s["steps"] for s in summary["stages"]),
        "seconds": round(time.time() - t0, 1), "log": str(log_path),
        "mean_reward_first": _mean([r["reward"] for r in log[:5]]),
        "mean_reward_last": _mean([r["reward"] for r in log[-5:]]),
        "zero_std_share_mean": _mean([r.get("zero_std_share") for r in log]),
    })
    return summary


def _copy_policy_extras(src: Path, dst: Path) -> None:
    """Carry what negrec.llm.save_policy keeps beside the weights (the SID tokenizer, model info)."""
    for name in ("sid_tokenizer", "negrec_model.json"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _mean(xs) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


class _StopAt:
    """Simulates a kill after `n` steps of the current stage (resume tests): saves, then stops."""

    def __new__(cls, n):
        from transformers import TrainerCallback

        class StopAt(TrainerCallback):
            def __init__(self):
                self.n, self.fired = n, False

            def on_step_end(self, args, state, control, **kwargs):
                if 0 < self.n <= state.global_step:
                    self.fired = True
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return StopAt()


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


def training_rows(prepared, horizon: int, max_samples: int | None = None, seed: int = 0) -> list[dict]:
    """Train-split samples whose future-negative set F_H is not empty, as plain dict rows."""
    import numpy as np

    df = prepared.samples["train"]
    col = f"future_neg_h{horizon}"
    if col not in df.columns:
        raise KeyError(f"data/samples: train split lacks column {col!r} (data.horizons must include {horizon})")
    df = df[df[col].map(len) > 0].reset_index(drop=True)
    if max_samples is not None and len(df) > max_samples:
        df = df.sample(n=max_samples, random_state=seed).reset_index(drop=True)
    rows = []
    for rec in df.to_dict("records"):
        rows.append({k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
                     for k, v in rec.items()})
    return rows


def run_grpo(raw: dict, run_dir, stop_after_steps: int | None = None) -> dict:
    """`negrec grpo`: progressive GRPO from the SFT policy; writes run_dir/grpo/."""
    from negrec.data import Prepared
    from negrec.llm import PromptBuilder, PromptConfig, SidConstraint
    from negrec.rewards import RewardConfig, build_rewards

    run_dir = Path(run_dir)
    cfg = section_config(ProgressiveGRPOConfig, raw, "grpo")
    reward_cfg = section_config(RewardConfig, raw, "rewards")
    prompt_cfg = section_config(PromptConfig, raw, "prompt")
    out_dir = run_dir / "grpo"
    sft_dir = find_sft_policy(run_dir, cfg.policy)
    h = config_hash({"grpo": to_dict(cfg), "rewards": to_dict(reward_cfg), "prompt": to_dict(prompt_cfg),
                     "policy": str(sft_dir.resolve())})
    if stage_done(out_dir, h) and (out_dir / "summary.json").exists():
        print(f"[grpo] {out_dir} is up to date")
        return read_json(out_dir / "summary.json")

    from transformers import AutoTokenizer

    prepared = Prepared.load(run_dir / "data")
    sid_tok = _load_sid_tokenizer(run_dir, sft_dir)
    hf_tok = AutoTokenizer.from_pretrained(sft_dir)
    builder = PromptBuilder(prompt_cfg, sid_tok, prepared.items, hf_tok)
    rows = training_rows(prepared, reward_cfg.horizon, cfg.max_samples, cfg.seed)
    # Swing co-negatives from the training log only (what the valid/test users did later stays unseen).
    rewards = build_rewards(reward_cfg, sid_tok, train_log=prepared.fit_log("train"))
    summary = train_progressive_grpo(
        cfg, sft_dir=sft_dir, samples=rows, build_prompt=builder.build, reward_funcs=rewards.functions,
        reward_weights=rewards.weights, sid_constraint=SidConstraint(sid_tok, hf_tok),
        completion_length=cfg.max_completion_length or sid_tok.levels + 1,
        out_dir=out_dir, tb_dir=run_dir / "tb" / "grpo", stop_after_steps=stop_after_steps)
    if "stopped_at" in summary:
        return summary
    summary.update({"policy": str(sft_dir), "train_rows": len(rows), "horizon": reward_cfg.horizon,
                    "rewards": dict(zip(rewards.names, rewards.weights))})
    if _is_main_process():
        write_json(out_dir / "summary.json", summary)
        mark_done(out_dir, h)
        _print_summary(summary)
    return summary


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
          f"share of zero-std groups: {s['zero_std_share_mean']}; final model: {s['final_model']}")
