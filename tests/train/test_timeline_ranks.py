"""The timeline loop (both SFT stages' default mode) data-parallel under torchrun: two CPU ranks
(gloo) train the model one process trains, from the same run folder and settings, and rank 1
writes nothing into the run folder.

Two ranks split every batch and sum their gradients (`negrec.train.ranks`), so their weights,
losses and validation recalls are one process's up to the order of float sums; a rank that
trained on its half alone, or averaged instead of summed, ends far from them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from negrec.contract import work_dir
from tests._tiny_run import CONFIG, prepare_tiny_run, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).with_name("_rank_audit.py")
# alignment: 12 steps of 8 examples; next: 3 epochs of 6 windows and 3 alignment examples a batch, each
# validated on 40 users (three beam-search batches of 16: one on rank 0, two on rank 1)
SETS = ["sft_align.max_steps=12", "sft_align.batch_size=8", "sft_align.learning_rate=0.01",
        "sft_next.mode=timeline", "sft_next.max_steps=-1", "sft_next.epochs=3", "sft_next.batch_size=6",
        "sft_next.val_every=1", "sft_next.val_rows=40", "sft_next.patience=9", "sft_next.learning_rate=0.01",
        "sft_next.align_per_batch=3"]


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> Path:
    return prepare_tiny_run(tmp_path_factory.mktemp("timeline_ranks") / "prepared")


def _command(run_dir: Path, ranks: int, task: str) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", str(AUDIT)]
                if ranks > 1 else [sys.executable, "-m", "negrec.cli"])
    return [*launcher, "sft", "--task", task, "--config", str(CONFIG), "--run-dir", str(run_dir), "--threads", "1",
            *[x for s in [*tiny_overrides(), *SETS] for x in ("--set", s)]]


def _env(run_dir: Path, audit_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NEGREC_AUDIT_ROOT=str(run_dir), NEGREC_AUDIT_DIR=audit_dir)
    return env


def _run(run_dir: Path, ranks: int, tmp: Path, tasks=("align", "next")) -> tuple[dict[int, list], str]:
    """`negrec sft --task align`, then `--task next`, on `ranks` processes (one: no launcher);
    ({rank: [[event, path], ...]} of the launched ones, the last task's stdout)."""
    audit: dict[int, list] = {r: [] for r in range(ranks)} if ranks > 1 else {}
    for task in tasks:
        audit_dir = tempfile.mkdtemp(dir=tmp, prefix="audit")
        proc = subprocess.run(_command(run_dir, ranks, task), env=_env(run_dir, audit_dir), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
        assert proc.stdout.count(f"-> {run_dir}/sft_{task}/final") == 1  # one rank prints
        for r in audit:
            audit[r] += json.loads((Path(audit_dir) / f"rank{r}.json").read_text())
    return audit, proc.stdout


def _kill_after_first_checkpoint(run_dir: Path, ranks: int, tmp: Path) -> None:
    """`sft --task next` on `ranks` processes, every process SIGKILLed once the first epoch's
    checkpoint is in place (written whole: a temporary file, then a rename)."""
    import psutil

    checkpoint = work_dir(run_dir, "sft-next") / "timeline_checkpoint.pt"
    proc = subprocess.Popen(_command(run_dir, ranks, "next"), env=_env(run_dir, tempfile.mkdtemp(dir=tmp)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists() and proc.poll() is None, f"no checkpoint to kill after: {proc.stderr.read()[-3000:]}"
        for p in [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]:
            os.kill(p, 9)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.timeout(900)
def test_two_ranks_train_the_timeline_model_one_process_trains(prepared_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(prepared_run, one)
    shutil.copytree(prepared_run, two)
    _run(one, 1, tmp_path)
    audit, _ = _run(two, 2, tmp_path)
    assert audit[0] and not audit[1], f"rank 1 wrote into the run folder: {audit[1][:10]}"
    moved = {}
    for stage, start in (("sft_align", one / "model"), ("sft_next", one / "sft_align" / "final")):
        a, b, s = _weights(one / stage / "final"), _weights(two / stage / "final"), _weights(start)
        assert a.keys() == b.keys()
        moved[stage] = max(float((a[k] - s[k]).abs().max()) for k in s if k in a)
        gap = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert moved[stage] > 1e-2 and gap < 1e-3 * moved[stage], (stage, moved, gap)  # trained, the same training
    s1, s2 = (json.loads((r / "sft_next" / "summary.json").read_text()) for r in (one, two))
    assert s1["steps"] == s2["steps"] and s1["epochs_run"] == s2["epochs_run"] == 3
    assert np.allclose(s1["loss_curve"], s2["loss_curve"], rtol=1e-4)  # the ranks' summed loss: the batch's
    v1, v2 = ([h["val_recall@10"] for h in s["history"]] for s in (s1, s2))
    assert len(v1) == 3 and v1 == v2  # each rank searched its users' batches, every rank got them all
    assert s1["kept_epoch"] == s2["kept_epoch"]

    # killed on two ranks after the first epoch, run again on two: it resumes and ends where one process did
    three = tmp_path / "three"
    shutil.copytree(two, three)
    shutil.rmtree(three / "sft_next")
    shutil.rmtree(work_dir(three, "sft-next"), ignore_errors=True)
    _kill_after_first_checkpoint(three, 2, tmp_path)
    assert not (three / "sft_next").exists()
    _, stdout = _run(three, 2, tmp_path, tasks=("next",))
    assert re.search(r"\[timeline\] resuming after epoch [12] ", stdout), stdout[-2000:]
    s3 = json.loads((three / "sft_next" / "summary.json").read_text())
    assert [h["val_recall@10"] for h in s3["history"]] == v1 and np.allclose(s3["loss_curve"], s1["loss_curve"], rtol=1e-4)
    a, c = _weights(one / "sft_next" / "final"), _weights(three / "sft_next" / "final")
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-3 * moved["sft_next"]
