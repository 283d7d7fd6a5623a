"""What the training stages share about TRL configs and processes.

- `check_trainer_overrides(cls_path, overrides, section, reserved)`: the pass-through dicts
  (`sft_align.trainer`, `sft_next.trainer`, `grpo.trainer`) are checked against the fields of
  `SFTConfig` / `GRPOConfig`; an unknown key is refused naming the nearest field.
- `build_trainer_config(cls, pinned, overrides)`: negrec's settings, then the user's pass-through
  on top (the user wins, except for the reserved keys negrec owns).
- `is_main_process()`: rank 0 (accelerate / torchrun `RANK`), the only process that writes,
  logs and deletes.
- `main_print(...)`: print on rank 0 only (N ranks would print every line N times).
- `full_weights(model)`: under DeepSpeed ZeRO-3 every rank enters it and each holds the whole
  weights inside (a save on rank 0 writes them, not its shard); elsewhere it does nothing.
- `ranks_meet()`: every rank waits for the others (under a launcher), e.g. until rank 0 has written.
- `train_or_take(trainer, checkpoint)`: resume training, or take a checkpoint that ended it as it is.
  while they hold their defaults, so adding a field does not invalidate finished stages.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib

from negrec.config import nearest
from negrec.runlock import launched_rank, launched_world


def is_main_process() -> bool:
    """True on rank 0 (or without a distributed launcher)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # pragma: no cover
        pass
    return launched_rank() == 0


def main_print(*args, **kwargs) -> None:
    """`print` on the main process only."""
    if is_main_process():
        print(*args, **kwargs)


def ranks_meet() -> None:
    """Under a launcher, a barrier of every rank (after rank 0's writes: the ranks leave together;
    a rank exiting while rank 0 still wrote was seen to abort in DeepSpeed's CPU comm); else nothing."""
    if launched_world() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


@contextlib.contextmanager
def full_weights(model, writable: bool = False):
    """ZeRO-3 partitions every parameter over the ranks (`ds_id` marks one): gather them for the
    block, read-only (`writable`: rank 0's values are partitioned back on exit). A collective:
    every rank must enter. Without ZeRO-3 a no-op."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if writable else None):
        yield


def _trl_class(cls_path: str):
    module, name = cls_path.split(":")
    return getattr(importlib.import_module(module), name)


def check_trainer_overrides(cls_path: str, overrides: dict | None, section: str, reserved=()) -> None:
    """Refuse keys of `overrides` that are not fields of the TRL config class (`"trl:SFTConfig"`),
    naming the nearest field, and the keys negrec sets itself (`reserved`)."""
    if not overrides:
        return
    fields = {f.name for f in dataclasses.fields(_trl_class(cls_path))}
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise ValueError(f"{section}.trainer: {unknown[0]!r} is not a field of {cls_path.split(':')[1]}"
                         f"{nearest(unknown[0], fields)}")
    owned = sorted(k for k in overrides if k in reserved)
    if owned:
        raise ValueError(f"{section}.trainer: {owned[0]!r} is set by negrec ({section} settings); remove it here")


def checkpointing_setting(cls, on: bool) -> dict:
    """Gradient checkpointing for TRL config class `cls`, under the name this transformers has:
    version 5 renamed it `activation_checkpointing` (which sets the old alias too) and warns at
    every stage given the old name."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def build_trainer_config(cls, pinned: dict, overrides: dict | None):
    """`cls(**pinned)` with the pass-through `overrides` on top (already checked)."""
    kwargs = dict(pinned)
    kwargs.update(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in kwargs.items() if k in names})
    if getattr(config, "deepspeed", None):
        _start_deepspeed_comm()
    return config


def _start_deepspeed_comm() -> None:
    """Under a launcher, join DeepSpeed's comm to the process group the config just started. On
    CPU transformers leaves that to the Trainer, but ZeRO-3 partitions at model load (zero.Init),
    before any Trainer exists, and would see a world of one rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed()


def reports_to(value) -> list[str]:
    """transformers' report_to as a list ("none" -> [])."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [] if items in (["none"], []) else items


def default_bf16() -> bool:
    """bf16 where a CUDA device supports it, fp32 on CPU."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def train_or_take(trainer, checkpoint: str | None) -> None:
    """`trainer.train(resume_from_checkpoint=checkpoint)`, except when `checkpoint` is the run's
    last one (its global step reached max_steps: a kill came after training, while the stage wrote
    its outputs): then its weights and state are taken as they are, since transformers' loop would
    run one step past max_steps before checking it."""
    import json
    from pathlib import Path

    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else {}
    # this run's max_steps; by epochs (-1): the checkpoint's (same resume key, so the same plan)
    planned = trainer.args.max_steps if trainer.args.max_steps > 0 else state.get("max_steps", 0)
    if planned > 0 and state.get("global_step", 0) >= planned:
        from transformers import TrainerState

        with full_weights(trainer.model, writable=True):  # ZeRO-3: load into the whole weights (every rank)
            trainer._load_from_checkpoint(checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        trainer._load_callback_state()  # stateful callbacks (GRPO's stage rewards) as train() restores them
        return
    trainer.train(resume_from_checkpoint=checkpoint)


__all__ = ["is_main_process", "main_print", "full_weights", "ranks_meet", "train_or_take", "check_trainer_overrides",
           "build_trainer_config", "reports_to", "default_bf16"]
