"""The stage contract (issue 13): one registry, the run-folder lock, config.yaml only after
validation, Ctrl-C, raw inputs in the data fingerprint, `negrec status`. All fast: a tiny generic
log and stand-in stages, no model."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import negrec.cli as cli
import negrec.pipeline as pl
from negrec.cli import main
from negrec.runlock import RunLocked, read_holder, run_lock
from negrec.stages import STAGES, commands

ROOT = Path(__file__).resolve().parents[1]


# ---- one registry ----
def _doc_stage_table() -> list[list[str]]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text[text.index("| CLI subcommand |"):].split("\n\n", 1)[0]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in block.splitlines()[2:]]


def test_architecture_doc_lists_exactly_the_registry():
    rows = _doc_stage_table()
    doc_commands = {re.match(r"`negrec ([a-z-]+)", r[0]).group(1) for r in rows}
    doc_stages = {s for r in rows for s in re.findall(r"`([a-z-]+)`", r[1])}
    assert doc_commands == set(commands())
    assert doc_stages == {s.name for s in STAGES}


def test_cli_and_pipeline_read_the_registry():
    assert list(cli.STAGES) == list(commands())
    assert [n for n, *_ in pl.STAGES] == [s.name for s in STAGES]
    assert cli.SECTIONS_OF["pipeline"] is None
    # a command that imports torch checks its inputs' sections too (sft reads prompt and model);
    # a torch-free one only its own (an upstream section class may import torch)
    assert cli.SECTIONS_OF["sft"] == ["data", "encode", "tokenize", "model", "prompt", "sft_align", "sft_next"]
    assert cli.SECTIONS_OF["evaluate"] == ["eval", "blend"]
    assert {"data", "export-codebook", "evaluate", "filter", "report"} <= cli.TORCH_FREE
    assert "sft" not in cli.TORCH_FREE and "grpo" not in cli.TORCH_FREE
    # the stage list is written out once: no other module names a stage's (module, function) pair
    for path in (ROOT / "negrec").rglob("*.py"):
        if path.name != "stages.py":
            assert not re.search(r'"negrec\.[a-z_.]+",\s*"run_', path.read_text()), path


def test_a_refusal_names_the_command_that_runs_the_stage(tmp_path):
    """A stale input is refused with the call that reruns that stage alone: `sft` alone runs the
    alignment stage and `grpo` alone the progressive one."""
    from negrec import contract

    raw = {"data": {}, "grpo": {"learning_rate": 1e-4}}
    for name in ("sft-next", "grpo-plain"):
        folder = contract.stage_dir(raw, tmp_path, name)
        folder.mkdir(parents=True)
        (folder / contract.MARKER).write_text('{"fingerprint": "from another config"}')
    with pytest.raises(contract.StageNotReady, match=r"run `negrec sft --task next` \(or"):
        contract.up_to_date(raw, tmp_path, "grpo")
    shutil.rmtree(tmp_path / "sft_next")  # predict reads it first
    with pytest.raises(contract.StageNotReady, match=r"run `negrec grpo --plain` \(or"):
        contract.up_to_date(raw, tmp_path, "predict")


# ---- a tiny generic log ----
def _tiny_log(path: Path, users: int = 6, days: int = 40) -> None:
    rng = np.random.default_rng(0)
    rows = [(u, int(rng.integers(1, 30)), 1577836800 + d * 86400 + u * 60, int(rng.integers(1, 6)))
            for u in range(1, users + 1) for d in range(days)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"]).to_csv(path, index=False)


def _data_args(log: Path) -> list[str]:
    return ["--set", "data.format=generic", "--set", f"data.generic.path={log}",
            "--set", "data.generic.columns={user_id: user, item_id: item, ts: timestamp, rating: rating}"]


@pytest.fixture
def tiny(tmp_path):
    log = tmp_path / "log.csv"
    _tiny_log(log)
    return log


# ---- the run-folder lock ----
def _holder(run_dir: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom negrec.runlock import run_lock\n"
            f"with run_lock({str(run_dir)!r}, 'negrec holder-test'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_two_writers_one_clear_refusal_then_stale_takeover(tmp_path, tiny, capsys):
    run_dir = tmp_path / "r"
    proc = _holder(run_dir)
    try:
        assert main(["data", "prepare", *_data_args(tiny), "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by pid {proc.pid}" in err and "negrec holder-test" in err
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "data").exists()
        with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
            pl.run_pipeline({"_source": "test"}, run_dir)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_holder(run_dir)["pid"] == proc.pid  # a killed holder leaves its info; the kernel freed the flock
    assert main(["data", "prepare", *_data_args(tiny), "--run-dir", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of pid {proc.pid}" in err and "its process is gone" in err
    assert read_holder(run_dir) == {}  # released cleanly


def test_lock_is_reentrant_in_one_process(tmp_path):
    with run_lock(tmp_path, "outer"):
        with run_lock(tmp_path, "inner"):
            assert read_holder(tmp_path)["command"] == "outer"
        assert read_holder(tmp_path)["pid"] == os.getpid()
    assert read_holder(tmp_path) == {}


def test_a_stage_the_pipeline_launches_works_inside_its_lock_and_no_other_process_does(tmp_path):
    """`pipeline.ranks`: the pipeline runs a stage under torchrun with $NEGREC_LOCK_HOLDER set to its
    own pid; its descendants work inside its lock, anyone else naming that pid is still refused."""
    from negrec.runlock import HOLDER_ENV

    probe = (f"from negrec.runlock import run_lock\nwith run_lock({str(tmp_path)!r}, 'child'):\n"
             "    print('inside', flush=True)\n")
    with run_lock(tmp_path, "negrec pipeline"):
        env = {**os.environ, HOLDER_ENV: str(os.getpid())}
        child = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=ROOT)
        assert child.returncode == 0 and child.stdout.strip() == "inside", child.stderr[-2000:]
        assert read_holder(tmp_path)["command"] == "negrec pipeline"  # the child took nothing over
        holder = _holder(tmp_path / "other")  # a process this one did not launch holds another folder
        try:
            env = {**os.environ, HOLDER_ENV: str(holder.pid)}
            stranger = ("import os\nfrom negrec.runlock import run_lock\n"
                        f"with run_lock({str(tmp_path / 'other')!r}, 'stranger'):\n    print('inside')\n")
            out = subprocess.run([sys.executable, "-c", stranger], env=env, capture_output=True, text=True, cwd=ROOT)
            assert out.returncode != 0 and "RunLocked" in out.stderr and f"pid {holder.pid}" in out.stderr
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()


def test_read_only_commands_take_no_lock(tmp_path, tiny, capsys):
    run_dir = tmp_path / "r"
    assert main(["data", "prepare", *_data_args(tiny), "--run-dir", str(run_dir)]) == 0
    before = (run_dir / "config.yaml").read_text()
    proc = _holder(run_dir)
    try:
        capsys.readouterr()
        assert main(["data", "stats", "--run-dir", str(run_dir)]) == 0  # default config: would re-prepare
        assert "users            6" in capsys.readouterr().out
        assert main(["status", "--run-dir", str(run_dir)]) == 0
        assert (run_dir / "config.yaml").read_text() == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# ---- config.yaml after validation; Ctrl-C ----
def test_refused_config_does_not_rewrite_config_yaml(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("# sentinel\ntokenize: {levels: 2}\n")  # the CLI's default config
    for cmd in (["tokenize"], ["data", "prepare"]):  # its own section, and another section's override
        assert main([*cmd, "--set", "tokenize.levels=0", "--run-dir", str(run_dir)]) == 2
        assert "levels must be >= 1" in capsys.readouterr().err
        assert (run_dir / "config.yaml").read_text().startswith("# sentinel")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, tiny, monkeypatch, capsys):
    import negrec.data

    def interrupted(raw, run_dir, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(negrec.data, "run_prepare", interrupted)
    assert main(["data", "prepare", *_data_args(tiny), "--run-dir", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "negrec data: interrupted; rerun to resume"
    assert read_holder(tmp_path / "r") == {}  # the lock is released


# ---- raw inputs in the data fingerprint ----
def test_editing_a_raw_input_reruns_data(tmp_path, tiny, monkeypatch):
    import negrec.data.prepare as prep

    calls = []
    real = prep.prepare_data
    monkeypatch.setattr(prep, "prepare_data", lambda cfg, out=None: calls.append(1) or real(cfg, out))
    args = ["data", "prepare", *_data_args(tiny), "--run-dir", str(tmp_path / "r")]
    assert main(args) == 0 and main(args) == 0
    assert len(calls) == 1  # up to date the second time
    lines = tiny.read_text().splitlines()
    tiny.write_text("\n".join(lines[: len(lines) // 2 + 20]) + "\n")  # truncated
    assert main(args) == 0 and len(calls) == 2
    users = pd.read_parquet(tmp_path / "r" / "data" / "interactions.parquet")["user_id"].nunique()
    assert users < 6


def test_a_raw_input_touched_or_copied_keeps_data_done(tmp_path, tiny, monkeypatch):
    """The data stage records what its raw inputs hold, not when they were written: a log copied
    without its times (to another machine, beside a copy of the run folder) leaves data done."""
    import negrec.data.prepare as prep

    calls = []
    real = prep.prepare_data
    monkeypatch.setattr(prep, "prepare_data", lambda cfg, out=None: calls.append(1) or real(cfg, out))
    args = ["data", "prepare", *_data_args(tiny), "--run-dir", str(tmp_path / "r")]
    assert main(args) == 0 and len(calls) == 1
    os.utime(tiny, ns=(1, 1))  # the same bytes, other times
    assert main(args) == 0 and len(calls) == 1  # up to date
    with tiny.open("a") as f:
        f.write("1,3,1577836861,1\n")
    os.utime(tiny, ns=(1, 1))  # other bytes, the same times
    assert main(args) == 0 and len(calls) == 2


def test_the_embedded_log_is_the_same_input_from_another_checkout(tmp_path, monkeypatch):
    """The embedded ML-100K lies inside each checkout's virtualenv: its fingerprint names its files
    relative to that folder, so a run folder made in one checkout is done in another."""
    import negrec.data.prepare as prep

    src = prep.recbole_ml100k_path()
    prints = []
    for where in ("a", "b"):
        copy = tmp_path / where / "venv" / "ml-100k"
        shutil.copytree(src, copy)
        monkeypatch.setattr(prep, "recbole_ml100k_path", lambda copy=copy: copy)
        prints.append(prep.raw_inputs_fingerprint({"data": {"format": "embedded"}}))
    assert prints[0] == prints[1] and "ml-100k.inter" in prints[0]
    (copy / "ml-100k.inter").write_text("user_id:token\n")  # the same name, other bytes
    assert prep.raw_inputs_fingerprint({"data": {"format": "embedded"}}) != prints[0]


def test_editing_a_raw_input_reruns_the_pipeline_from_data(tmp_path, tiny, monkeypatch):
    from tests.test_pipeline import _fake_stages

    calls: list[str] = []
    _fake_stages(monkeypatch, calls)
    raw = {"_source": "test", "data": {"format": "generic", "path": str(tiny)}}
    names = [s.name for s in STAGES]
    pl.run_pipeline(raw, tmp_path / "run")
    assert calls == names
    calls.clear()
    assert all(v["status"] == "up to date" for v in pl.run_pipeline(raw, tmp_path / "run").values())
    assert calls == [] and pl.stage_states(raw, tmp_path / "run")["report"]["state"] == "done"
    time.sleep(0.01)
    with tiny.open("a") as f:
        f.write("1,3,1577836861,1\n")
    states = pl.stage_states(raw, tmp_path / "run")
    assert states["data"] == {"state": "stale", "why": "its raw input files changed"}
    assert states["encode"] == {"state": "stale", "why": "input data (not done)"}
    assert all(states[n]["state"] == "stale" for n in names)  # everything after data, through its inputs
    out = pl.run_pipeline(raw, tmp_path / "run")
    assert calls == names and out["data"]["status"] == "ran"
