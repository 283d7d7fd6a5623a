"""The real `negrec sft --task next` and `negrec grpo` on 2 CPU processes (torchrun, gloo) under
DeepSpeed ZeRO-2 and ZeRO-3, on the tiny model and the embedded ML-100K.

The ZeRO-2 SFT run and the ZeRO-3 GRPO run are killed (SIGKILL, every process) after their first
checkpoint and run again: they resume from it (checkpoints live in `<run>/.work/<stage>/`, outside
the stage folder that is swapped in at the end; GRPO: the one `.work/grpo/progress.json` committed).
Every launch runs through `_rank_audit.py`, which records what each rank created, wrote, renamed or
deleted in the run folder: rank 1 may only write inside Trainer checkpoints (DeepSpeed saves one
optimizer shard and one RNG state per rank by design). A ZeRO-3 SFT killed after training, while
rank 0 swaps its stage folder in, takes its final checkpoint as it is on the rerun.

DeepSpeed builds its CPU comm op on first start (about 1-2 min on 2 cores; cached in
TORCH_EXTENSIONS_DIR), so this runs only with `-m deepspeed` (CI's own step).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from negrec.contract import work_dir
from tests._tiny_run import CONFIG, prepare_tiny_run, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).with_name("_rank_audit.py")
RANKS = 2
CHECKPOINT = re.compile(r"/checkpoint-\d+(/|$)")

SFT_STEPS, SFT_SAVE_EVERY = 16, 4
SFT = ["sft_next.mode=prompt", f"sft_next.max_steps={SFT_STEPS}", "sft_next.max_samples=50", "sft_next.eval_items=0",
       "sft_next.logging_steps=1", f"sft_next.save_steps={SFT_SAVE_EVERY}", "sft_next.batch_size=4",
       "sft_next.learning_rate=0.005", "sft_next.lr_scheduler=constant", "sft_next.warmup_ratio=0.0"]
GRPO = ["grpo.num_generations=2", "grpo.per_device_train_batch_size=4", "grpo.max_samples=40",
        "grpo.learning_rate=0.001", "grpo.save_steps=1", "grpo.trainer.report_to=[tensorboard]",
        "grpo.stages=[{name: neg_all, context_mix: 0.0, neg_window_days: null, max_steps: 4, beta: 0.04},"
        " {name: neg_pos, context_mix: 1.0, neg_window_days: null, max_steps: 1, beta: 0.04}]"]
GRPO_STEPS = 5
SETS = [*SFT, *GRPO]  # every launch of a run: the settings of both stages


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> Path:
    return prepare_tiny_run(tmp_path_factory.mktemp("two_ranks") / "prepared")


def _command(run_dir: Path, stage: list[str], sets: list[str], zero: int) -> list[str]:
    # one config for the whole run (the stage contract: GRPO refuses an sft_next made from another config)
    deepspeed = ROOT / "configs" / "deepspeed" / f"zero{zero}.json"
    sets = [*tiny_overrides(), *sets, f"sft_next.deepspeed={deepspeed}", f"grpo.deepspeed={deepspeed}"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", str(AUDIT),
            *stage, "--config", str(CONFIG), "--run-dir", str(run_dir), "--threads", "1",
            *[x for s in sets for x in ("--set", s)]]


def _env(run_dir: Path, audit_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", NEGREC_AUDIT_ROOT=str(run_dir),
               NEGREC_AUDIT_DIR=str(audit_dir))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def launch(run_dir: Path, stage: list[str], sets: list[str], zero: int, tmp: Path) -> tuple[str, dict[int, list]]:
    """Run a stage on RANKS processes; (stdout, {rank: [[event, path], ...]})."""
    audit_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="audit"))
    proc = subprocess.run(_command(run_dir, stage, sets, zero), env=_env(run_dir, audit_dir), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout, {r: json.loads((audit_dir / f"rank{r}.json").read_text()) for r in range(RANKS)}


def sft_checkpoint_written(run_dir: Path) -> int | None:
    """The step of a checkpoint SFT's resume would take (its trainer_state.json is whole), or None."""
    from negrec.train.sft import _readable_json as readable_json

    done = [p for p in (work_dir(run_dir, "sft-next") / "checkpoints").glob("checkpoint-*")
            if readable_json(p / "trainer_state.json")]
    return int(done[0].name.split("-")[1]) if done else None


def grpo_checkpoint_committed(run_dir: Path) -> int | None:
    """The stage step of the checkpoint .work/grpo/progress.json names (GRPO resumes from it), or None."""
    try:
        current = json.loads((work_dir(run_dir, "grpo") / "progress.json").read_text()).get("current")
    except (OSError, ValueError):
        return None
    return current["step"] if current else None


def launch_and_kill(run_dir: Path, stage: list[str], sets: list[str], zero: int, tmp: Path, ready) -> int:
    """Start a stage on RANKS processes and SIGKILL all of them once `ready(run_dir)` names a step; that step."""
    import psutil

    audit_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="audit"))
    proc = subprocess.Popen(_command(run_dir, stage, sets, zero), env=_env(run_dir, audit_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 500
    try:
        while time.time() < deadline and proc.poll() is None:
            step = ready(run_dir)
            if step is not None:
                # torchrun starts each rank in its own session: kill the whole tree, as a job scheduler would
                tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
                for pid in tree:
                    os.kill(pid, 9)
                proc.wait()
                return step
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint to kill after (exit {proc.poll()}): {proc.stderr.read()[-4000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_only_rank0_wrote_outside_checkpoints(audit: dict[int, list], run_dir: Path) -> None:
    assert audit[0], "rank 0 recorded no writes: the audit hook saw nothing"
    outside = [(e, p) for e, p in audit[1] if not CHECKPOINT.search(p)]
    assert not outside, f"rank 1 changed files outside Trainer checkpoints: {outside[:10]}"
    assert not list(run_dir.rglob("*.tmp*")) and not [p for p in run_dir.rglob("*") if ".staging" in p.name]


def assert_one_writer_of_tensorboard(run_dir: Path, since: float) -> None:
    """TensorBoard names its event files ...<host>.<pid>.<n>: this launch's all come from one process."""
    files = [p for p in (run_dir / "tb").rglob("events.out.tfevents*") if p.stat().st_mtime >= since]
    assert list((run_dir / "tb" / "grpo" / "trainer").glob("events.out.tfevents*")), "grpo.trainer.report_to: no log"
    assert len({p.name.split(".")[-2] for p in files}) == 1, files


def _finite(xs) -> bool:
    return bool(xs) and all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def check_sft(run_dir: Path, stdout: str, audit: dict) -> dict:
    assert (run_dir / "sft_next" / "_DONE").exists()  # the stage folder, swapped in whole by rank 0
    summary = json.loads((run_dir / "sft_next" / "summary.json").read_text())
    curve = summary["loss_curve"]
    assert summary["steps"] == SFT_STEPS and len(curve) == SFT_STEPS  # a resumed run keeps the log before the kill
    assert _finite(curve) and sum(curve[-3:]) < sum(curve[:3]), curve
    assert stdout.count(f"[sft_next] {SFT_STEPS} steps") == 1 and stdout.count(" examples {") == 1  # one rank prints
    assert_only_rank0_wrote_outside_checkpoints(audit, run_dir)
    final = run_dir / "sft_next" / "final"
    _assert_whole_model(final, run_dir / "model")
    assert f"- metrics: loss_first {curve[0]}, loss_last {curve[-1]}" in (final / "README.md").read_text()
    return summary


def _assert_whole_model(final: Path, before: Path) -> None:
    """The saved weights are the full tensors (ZeRO-3 gathers its shards for the save) and trained."""
    from safetensors.torch import load_file

    new, old = load_file(str(final / "model.safetensors")), load_file(str(before / "model.safetensors"))
    assert {k: new[k].shape for k in old if k in new} == {k: v.shape for k, v in old.items()}  # (+ a tied lm_head)
    assert any(not (new[k] == old[k]).all() for k in old)


def check_grpo(run_dir: Path, stdout: str, audit: dict, zero: int) -> None:
    assert (run_dir / "grpo" / "_DONE").exists()
    summary = json.loads((run_dir / "grpo" / "summary.json").read_text())
    assert summary["total_steps"] == GRPO_STEPS
    assert [s["deepspeed_zero_stage"] for s in summary["stages"]] == [zero, zero]
    rows = [json.loads(x) for x in (run_dir / "grpo" / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == list(range(1, GRPO_STEPS + 1))  # one row per step: one writer
    assert _finite([r["loss"] for r in rows]) and _finite([r["reward"] for r in rows])
    assert stdout.count("[grpo] done in") == 1
    assert_only_rank0_wrote_outside_checkpoints(audit, run_dir)
    assert [v["name"] for v in summary["validation"]] == ["sft", "neg_all", "neg_pos"]  # scored on rank 0
    # the last stage's policy (grpo/final when validation ships it, else grpo/last beside the one shipped)
    last = "final" if summary["kept"]["name"] == "neg_pos" else "last"
    _assert_whole_model(run_dir / "grpo" / last, run_dir / "sft_next" / "final")


@pytest.mark.deepspeed
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("zero", [2, 3])
def test_sft_and_grpo_on_two_ranks(prepared_run, tmp_path, zero):
    run_dir = tmp_path / "run"
    shutil.copytree(prepared_run, run_dir)
    sft, grpo = ["sft", "--task", "next"], ["grpo"]
    # killed after the first checkpoint, then run again (it resumes): SFT under ZeRO-2, GRPO under ZeRO-3
    if zero == 2:
        killed_at = launch_and_kill(run_dir, sft, SETS, zero, tmp_path, sft_checkpoint_written)
        assert killed_at < SFT_STEPS and not (run_dir / "sft_next").exists()  # the stage folder comes whole, at the end
    stdout, audit = launch(run_dir, sft, SETS, zero, tmp_path)
    if zero == 2:
        resumed = re.findall(r"\[sft\] resuming from \S*checkpoint-(\d+)", stdout)
        assert len(resumed) == 1 and int(resumed[0]) >= killed_at, stdout[-2000:]
    check_sft(run_dir, stdout, audit)

    if zero == 3:
        killed_at = launch_and_kill(run_dir, grpo, SETS, zero, tmp_path, grpo_checkpoint_committed)
        assert not (run_dir / "grpo").exists()
    started = time.time()
    stdout, audit = launch(run_dir, grpo, SETS, zero, tmp_path)
    if zero == 3:
        resumed = re.findall(r"\(resuming from checkpoint-(\d+)\)", stdout)
        assert len(resumed) == 1 and int(resumed[0]) >= killed_at, stdout[-2000:]
    check_grpo(run_dir, stdout, audit, zero)
    assert_one_writer_of_tensorboard(run_dir, started)


@pytest.mark.deepspeed
@pytest.mark.timeout(900)
def test_zero3_sft_killed_after_training_takes_its_final_checkpoint(prepared_run, tmp_path):
    """Killed while rank 0 swaps sft_next/ in (training done), the rerun takes the final checkpoint as
    it is (`train_or_take`: ZeRO-3 loads it inside a writable `full_weights`) instead of training on."""
    run_dir = tmp_path / "run"
    shutil.copytree(prepared_run, run_dir)
    sft = ["sft", "--task", "next"]
    env = {**_env(run_dir, tmp_path), "NEGREC_KILL_AT": "swap:2"}  # 1: final/ in the staging folder, 2: sft_next/
    killed = subprocess.run(_command(run_dir, sft, SETS, 3), env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0 and not (run_dir / "sft_next").exists(), killed.stderr[-3000:]
    assert (work_dir(run_dir, "sft-next") / "checkpoints" / f"checkpoint-{SFT_STEPS}").exists()
    stdout, audit = launch(run_dir, sft, SETS, 3, tmp_path)
    assert re.findall(r"\[sft\] resuming from \S*checkpoint-(\d+)", stdout) == [str(SFT_STEPS)], stdout[-2000:]
    check_sft(run_dir, stdout, audit)

