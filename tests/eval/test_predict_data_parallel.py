"""`negrec predict` under `accelerate launch --num_processes 2` (CPU, gloo): the users are split over
the processes and rank 0 writes one predictions file equal, row for row, to the one-process run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests._tiny_run import CONFIG, ROOT, tiny_overrides

# 20 users in batches of 3: 7 batches, shared 3 + 4 (uneven, and the last batch short)
PREDICT = ["eval.policies=[sft_next]", "eval.max_users=20", "eval.batch_size=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_two_process_predict_equals_one_process(policy_run, tmp_path, one_thread):
    # one torch thread here as in the launched processes (--threads 1): float sums over 2 threads
    # differ from 1 thread's in the last bits (seen: 4e-6 on a score), whatever the split of users
    from negrec.config import load_config
    from negrec.eval.run import run_predict

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(policy_run, one)
    shutil.copytree(policy_run, two)
    run_predict(load_config(str(CONFIG), [*tiny_overrides(), *PREDICT]), one)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # --multi_gpu: accelerate's `--cpu` with N processes wants MPI (without it, one process runs);
    # --multi_gpu starts torch.distributed.run, and without a GPU negrec's PartialState(cpu=True) talks gloo
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "negrec.cli", "predict", "--config", str(CONFIG), "--run-dir", str(two), "--threads", "1",
           *[x for s in [*tiny_overrides(), *PREDICT] for x in ("--set", s)]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    assert (two / "eval" / "_DONE.predict").exists()  # rank 0 marked the stage done, after writing
    summary = json.loads((two / "eval" / "predict_summary.json").read_text())
    assert summary["sft_next"]["processes"] == 2 and proc.stdout.count("[predict] sft_next:") == 1
    want, got = pd.read_parquet(one / "eval" / "predictions.parquet"), pd.read_parquet(two / "eval" / "predictions.parquet")
    assert len(want) and want["user_id"].nunique() == 20
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    for name in ("targets.parquet", "candidates/sft_next.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(two / "eval" / name), pd.read_parquet(one / "eval" / name),
                                      check_exact=True)
