"""TRL's GRPOTrainer with groups generated under the SID constraint, and the stage callback.

Kept apart from negrec.train.grpo (configs and the stage driver) because it imports TRL, which
`import negrec.train` must not pay for.
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LogitsProcessorList, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad

from negrec.llm.constrained import pinned_generation_config

GENERATION_MODES = ("sample", "beam")


@contextmanager
def _quiet_checkpointing_renames():
    """TRL turns gradient checkpointing off and on around generation and scoring under transformers' old
    method names: FutureWarnings in every GRPO stage that no setting of a user's can silence (negrec's
    own settings use the new name: `trainer_args.checkpointing_setting`). Only those are hidden, over a
    whole stage's `train` (entering catch_warnings resets which warnings were shown once: per step,
    every other once-only warning would repeat every step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing\w*` is deprecated", category=FutureWarning)
        yield


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
        # every rank records the reward (TRL logs the mean gathered over ranks, the same everywhere), so
        # every rank takes the same plateau decision; one value per log: per step at logging_steps 1
        if logs and logs.get("reward") is not None and state.global_step > 0:
            self.rewards.append(float(logs["reward"]))
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
                from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is slow to import

                self._tb = SummaryWriter(self.tb_dir)
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("global_step",):
                    self._tb.add_scalar(f"grpo/{k}", v, step)
            self._tb.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self._tb is not None:
            self._tb.close()
            self._tb = None

class CommitCheckpoint(TrainerCallback):
    """Calls `on_checkpoint(path, step)` on the main process for every checkpoint, once the Trainer
    has written it (on_save follows the save and its rotation)."""

    def __init__(self, on_checkpoint):
        self.on_checkpoint = on_checkpoint

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.on_checkpoint(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", state.global_step)


class TRLPrivateHooks(GRPOTrainer):
    """The one place negrec relies on GRPOTrainer's private API. TRL has no public way to generate
    a group's completions with a logits processor (the SID trie), so `_generate_single_turn` is
    overridden here and handed to `generate_completions`. `PRIVATE_METHODS` is what is relied on;
    tests/train/test_trl_private_api.py checks it against the installed TRL and fails when TRL changes it."""

    # method -> (its parameters in TRL, the TRL method that calls it)
    PRIVATE_METHODS = {
        "_generate_single_turn": (("self", "prompt_ids", "images", "multimodal_fields", "num_generations",
                                   "has_tool_images"), "_generate"),
        "_generate_and_score_completions": (("self", "inputs"), "_prepare_inputs"),
    }

    def _generate_and_score_completions(self, inputs):
        # the rows being generated for, in prompt order: their dataset columns (context_items) reach generation
        self.batch_rows = inputs
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return self.generate_completions(prompt_ids, num_generations), None  # (completion ids, no logprobs)

    def generate_completions(self, prompt_ids: list[list[int]], num_generations: int) -> list[list[int]]:
        raise NotImplementedError


class SidGRPOTrainer(TRLPrivateHooks):
    """GRPOTrainer whose groups are SIDs generated under a `SidConstraint` trie.

    `generation="sample"`: each of the G rows of a group samples one SID (TRL's own path, plus
    the constraint's logits processor). `generation="beam"`: each group is one constrained beam
    search with G beams, and its rows take the G best beams (MiniOneRec). Either way a row never
    gets one of its own context items (dataset column `context_items`), as at inference, where
    they are excluded too: rewards score them 0, and a group should not spend rollouts on them.
    """

    def train(self, *args, **kwargs):
        with _quiet_checkpointing_renames():
            return super().train(*args, **kwargs)

    def __init__(self, *args, sid_constraint=None, generation: str = "sample", stage_callback=None,
                 on_checkpoint=None, **kwargs):
        if sid_constraint is None:
            raise ValueError("SidGRPOTrainer needs a sid_constraint (negrec.llm.SidConstraint)")
        if generation not in GENERATION_MODES:
            raise ValueError(f"generation must be one of {GENERATION_MODES}, got {generation!r}")
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if stage_callback is not None:
            callbacks.append(stage_callback)
        if on_checkpoint is not None:
            callbacks.append(CommitCheckpoint(on_checkpoint))
        super().__init__(*args, callbacks=callbacks, **kwargs)
        from trl.distributed import DistributedBackend

        self.distributed = DistributedBackend(self.accelerator)  # FSDP's summon_full_params, a no-op elsewhere
        if self.use_vllm or self.use_transformers_continuous_batching:
            raise ValueError("SidGRPOTrainer generates with transformers' generate (the SID logits processor); "
                             "use_vllm / continuous batching are not supported")
        self.sid_constraint = sid_constraint
        self.generation = generation
        # Every generation setting is pinned (negrec.llm.pinned_generation_config swaps the model's
        # generation_config for the call), so a checkpoint's generation_config.json (a chat model's
        # do_sample/temperature/top_k/repetition_penalty, min_length, suppress_tokens, ...) never
        # leaks into the groups: transformers fills any field a passed config leaves unset from it.
        levels = getattr(sid_constraint, "levels", None)
        if levels is None and getattr(sid_constraint, "sid_tok", None) is not None:
            levels = sid_constraint.sid_tok.levels
        max_new = self.max_completion_length
        # A SID is `levels` tokens (then EOS where answers end with it); min_new_tokens never bans that EOS.
        min_new = min(int(levels), max_new - 1) if levels else 0
        common = dict(max_new_tokens=max_new, min_new_tokens=max(min_new, 0), repetition_penalty=1.0,
                      no_repeat_ngram_size=0, use_cache=True, disable_compile=True,
                      pad_token_id=self.text_tokenizer.pad_token_id, bos_token_id=self.text_tokenizer.bos_token_id,
                      eos_token_id=self.eos_token_ids)
        if self.args.cache_implementation is not None:
            common["cache_implementation"] = self.args.cache_implementation
        # Sampling: each of the G rows of a group (TRL repeats the prompt) samples one SID.
        self.sample_generation_settings = dict(
            common, do_sample=True, num_beams=1, num_return_sequences=1, temperature=float(self.temperature),
            top_p=float(self.top_p if self.top_p is not None else 1.0), top_k=int(self.top_k or 0),
            min_p=self.min_p)
        # Beam: G distinct SIDs per group, scored by summed log-prob (length_penalty 0: every SID has
        # the same length).
        self.beam_generation_settings = dict(
            common, do_sample=False, num_beams=self.num_generations, num_return_sequences=self.num_generations,
            length_penalty=0.0, early_stopping=True)

    @property
    def text_tokenizer(self):
        """The text tokenizer (`processing_class`, or its tokenizer when it is a processor)."""
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    def _pinned(self, model, **settings):
        if hasattr(model, "get_base_model"):  # PEFT: generate reads the base model's generation_config
            model = model.get_base_model()
        return pinned_generation_config(model, self.text_tokenizer, **settings)

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

    def generate_completions(self, prompt_ids, num_generations):
        device = self.accelerator.device
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self.text_tokenizer.pad_token_id, padding_side="left")
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left")
        prompt_len = input_ids.size(1)
        exclude = self.context_of_rows(len(prompt_ids))
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self.distributed.summon_full_params(self.model_wrapped, recurse=False),
        ):
            if self.generation == "beam":
                completion_ids = self._beam_groups(unwrapped_model, input_ids, attention_mask, exclude,
                                                   num_generations)
            else:
                processors = LogitsProcessorList([self.sid_constraint.logits_processor(prompt_len, exclude)])
                with self._pinned(unwrapped_model, **self.sample_generation_settings) as config:
                    out = unwrapped_model.generate(input_ids=input_ids.to(device),
                                                   attention_mask=attention_mask.to(device),
                                                   generation_config=config, logits_processor=processors)
                completion_ids = out[:, prompt_len:]
        return self._cut_after_eos(completion_ids.cpu())

    def context_of_rows(self, n_rows: int) -> list[list[int]] | None:
        """Each row's context items (never generated, as at inference), or None when the dataset has
        no `context_items` column."""
        rows = getattr(self, "batch_rows", None)
        if not rows or "context_items" not in rows[0]:
            return None
        if len(rows) != n_rows:  # TRL no longer generates one completion per input row: port TRLPrivateHooks
            raise RuntimeError(f"GRPO generates {n_rows} completions for {len(rows)} dataset rows; "
                               "their context items cannot be matched to them")
        return [[int(i) for i in (r["context_items"] or [])] for r in rows]

    def _beam_groups(self, model, input_ids, attention_mask, exclude, num_generations):
        # Rows arrive as contiguous groups of G copies of one prompt; a group may straddle two
        # processes, so a row's rank in its group comes from its global position.
        n = input_ids.size(0)
        offset = self.accelerator.process_index * n
        positions = [offset + i for i in range(n)]
        groups = sorted({p // num_generations for p in positions})
        first_row = {g: next(i for i, p in enumerate(positions) if p // num_generations == g) for g in groups}
        idx = torch.tensor([first_row[g] for g in groups])
        group_exclude = None if exclude is None else [exclude[i] for i in idx.tolist()]
        processors = LogitsProcessorList([self.sid_constraint.logits_processor(input_ids.size(1), group_exclude)])
        # eval groups may differ in size from the training ones
        settings = dict(self.beam_generation_settings, num_beams=num_generations,
                        num_return_sequences=num_generations)
        device = self.accelerator.device
        with self._pinned(model, **settings) as config:
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


class StopAfterSteps(TrainerCallback):
    """Simulates a kill after `n` steps of a stage (resume tests): the step's checkpoint is saved
    and committed, then training stops."""

    def __init__(self, n: int):
        self.n, self.fired = n, False

    def on_step_end(self, args, state, control, **kwargs):
        if 0 < self.n <= state.global_step:
            self.fired = True
            control.should_save = True
            control.should_training_stop = True
        return control
