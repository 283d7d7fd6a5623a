"""The stage contract (`negrec.contract`) under interruption: each resumable stage (data, tokenize,
sft, grpo) is killed with SIGKILL at named points (NEGREC_KILL_AT, `negrec.io.kill_point`), run
again, and its stage folder must equal that of an uninterrupted run; readers refuse a folder
without a matching marker. Tiny KuaiRand run (tests/test_pipeline.py's TINY); every stage runs in
a child process, as a user's `negrec` command would."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from negrec import contract
from negrec.config import load_config
from negrec.io import write_yaml

ROOT = Path(__file__).resolve().parents[1]

# the child: `negrec ARGS`, with a kill point inside the Trainer's checkpoint write (after the
# weights and the optimizer, before trainer_state.json: the torn checkpoint a kill leaves)
DRIVER = """
import os, sys
if os.environ.get("NEGREC_KILL_AT", "").startswith("checkpoint"):
    import transformers
    from negrec.io import kill_point
    save_rng = transformers.Trainer._save_rng_state
    def _save_rng_state(self, output_dir):
        kill_point("checkpoint")
        return save_rng(self, output_dir)
    transformers.Trainer._save_rng_state = _save_rng_state
from negrec.cli import main
sys.exit(main(sys.argv[1:]))
"""

# what each stage's test changes from the base run (tests/test_pipeline.py's TINY), and the CLI call
STAGE_SETS = {
    "data": ["data.max_users=50"],
    "tokenize": ["tokenize.method=rqvae", "tokenize.epochs=4", "tokenize.save_every=1", "tokenize.hidden_dims=[32]",
                 "tokenize.latent_dim=8"],
    # TRL's Trainer checkpoints (the timeline loop's resume: tests/train/test_sft.py)
    "sft-align": ["sft_align.mode=prompt", "sft_align.save_steps=1", "sft_align.max_steps=3", "sft_align.eval_items=0"],
    "grpo": ["grpo.save_steps=1",
             "grpo.stages=[{name: neg_all, context_mix: 0.0, neg_window_days: null, max_steps: 2, beta: 0.04},"
             " {name: neg_pos, context_mix: 1.0, neg_window_days: null, max_steps: 1, beta: 0.04}]"],
}
COMMAND = {"data": ["data", "prepare"], "tokenize": ["tokenize"], "sft-align": ["sft", "--task", "align"],
           "grpo": ["grpo"]}

# (stage, kill point): where the kill lands is named in the comment
KILLS = [
    ("data", "write:3"),            # items.parquet written in the staging folder, not yet renamed
    ("data", "swap"),               # the old data/ moved aside, the new one not yet in place
    ("tokenize", "write:2"),        # the first RQ-VAE checkpoint written, not yet renamed (.work/tokenize)
    ("tokenize", "swap"),           # tokenize/ (the base run's RQ-KMeans one) moved aside, the new one not in place
    ("sft-align", "checkpoint:2"),  # inside the checkpoint-2 write: torn, resume from checkpoint-1
    ("sft-align", "swap:1"),        # final/ being put in place inside the staging folder
    ("sft-align", "swap:2"),        # training done, sft_align/ not yet swapped in (resume = the final checkpoint)
    ("grpo", "write:3"),            # progress.json committing checkpoint-1, not yet renamed
    ("grpo", "checkpoint:2"),       # inside the stage-0 checkpoint-2 write
    ("grpo", "swap:1"),             # stage 0's final model being put in place (.work/grpo/stage0_*/final)
    ("grpo", "swap:3"),             # both GRPO stage models saved; grpo/ not yet swapped in
]

# kills after the new stage folder was finished, before it was renamed into place: the rerun puts
# it in place instead of running the stage again
FINISHED = {("data", "swap"), ("tokenize", "swap"), ("sft-align", "swap:2"), ("grpo", "swap:3")}

# JSON keys that hold timings or what one process did (RQ-VAE's train_steps: "in this call";
# transformers' train_loss: the mean loss of the last train() call): equal runs differ there
VOLATILE = ("seconds", "_per_s", "_per_second", "runtime", "time", "train_steps", "train_loss")


@pytest.fixture(scope="module")
def base_raw(kuairand_dir):
    from tests.test_pipeline import TINY

    return load_config(str(ROOT / "configs" / "kuairand.yaml"), [f"data.path={kuairand_dir}", *TINY])


@pytest.fixture(scope="module")
def base_run(base_raw, tmp_path_factory, one_thread):
    """The tiny run through sft-next (what GRPO starts from), built once."""
    from negrec.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("contract") / "base"
    run_pipeline({**base_raw, "pipeline": {"stop_after": "sft-next", "skip": []}}, run)
    return run


def _run_copy(base: Path, dst: Path, raw: dict) -> Path:
    shutil.copytree(base, dst, symlinks=True)
    write_yaml(dst / "config.yaml", {k: v for k, v in raw.items() if not k.startswith("_")})  # what the CLI reads
    return dst


def _negrec(run: Path, args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEGREC_THREADS": "1"}
    env.pop("NEGREC_KILL_AT", None)
    if kill_at:
        env["NEGREC_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", DRIVER, *args, "--run-dir", str(run)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)


def _normalised(text: str, run: Path) -> str:
    return text.replace(str(run.resolve()), "<run>").replace(str(run), "<run>")


def _card_view(text: str) -> str:
    """A model card's text without the volatile train_loss of its metrics line (see VOLATILE)."""
    return re.sub(r"\btrain_loss [^,\n]+", "train_loss <volatile>", text)


def _json_view(obj):
    if isinstance(obj, dict):
        return {k: _json_view(v) for k, v in obj.items() if not k.endswith(VOLATILE)}
    if isinstance(obj, list):
        return [_json_view(v) for v in obj]
    return obj


def _training_args(path: Path, run: Path) -> dict:
    import torch

    return json.loads(_normalised(torch.load(path, weights_only=False).to_json_string(), run))


def _assert_same_folder(a: Path, run_a: Path, b: Path, run_b: Path) -> None:
    """Every file of stage folder `a` equals its twin in `b`: parquet as frames, .npy as arrays,
    JSON without timings, text with the run folder's path normalised, anything else byte for byte."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        fa, fb = a / rel, b / rel
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(fa), pd.read_parquet(fb))
        elif rel.suffix == ".npy":
            assert np.array_equal(np.load(fa), np.load(fb)), rel
        elif rel.suffix in (".json", ".jsonl") or rel.name.startswith(contract.MARKER):
            ja = [json.loads(line) for line in _normalised(fa.read_text(), run_a).splitlines() if line.strip()] \
                if rel.suffix == ".jsonl" else json.loads(_normalised(fa.read_text(), run_a))
            jb = [json.loads(line) for line in _normalised(fb.read_text(), run_b).splitlines() if line.strip()] \
                if rel.suffix == ".jsonl" else json.loads(_normalised(fb.read_text(), run_b))
            if rel.name.startswith(contract.MARKER):  # the files it records, not their sizes (timings vary)
                ja, jb = ({**j, "files": sorted(j.get("files", {}))} for j in (ja, jb))
            assert _json_view(ja) == _json_view(jb), rel
        elif rel.name == "training_args.bin":  # transformers' pickled arguments: they name the run folder
            assert _training_args(fa, run_a) == _training_args(fb, run_b)
        elif rel.suffix in (".md", ".txt"):
            assert _card_view(_normalised(fa.read_text(), run_a)) == _card_view(_normalised(fb.read_text(), run_b)), rel
        else:
            assert fa.read_bytes() == fb.read_bytes(), rel


@pytest.fixture(scope="module")
def uninterrupted(base_run, base_raw, tmp_path_factory):
    """stage -> (its raw config, the run folder after one uninterrupted `negrec <stage>`)."""
    out = {}

    def get(name):
        if name not in out:
            raw = _overridden(base_raw, STAGE_SETS[name])
            run = _run_copy(base_run, tmp_path_factory.mktemp("straight") / name, raw)
            proc = _negrec(run, COMMAND[name])
            assert proc.returncode == 0, proc.stderr[-3000:]
            out[name] = (raw, run)
        return out[name]

    return get


def _overridden(raw: dict, sets: list[str]) -> dict:
    from negrec.config import apply_overrides

    return apply_overrides(json.loads(json.dumps(raw)), sets)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name,point", KILLS, ids=[f"{n}@{p}" for n, p in KILLS])
def test_killed_stage_reruns_to_the_uninterrupted_result(name, point, base_run, uninterrupted, tmp_path):
    raw, straight = uninterrupted(name)
    run = _run_copy(base_run, tmp_path / "run", raw)
    killed = _negrec(run, COMMAND[name], kill_at=point)
    assert killed.returncode == -signal.SIGKILL, f"kill point {point} not reached: {killed.stderr[-2000:]}"
    assert not contract.is_done(raw, run, name)  # never mistaken for finished
    proc = _negrec(run, COMMAND[name])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert contract.is_done(raw, run, name)
    assert (f"[{name}] up to date" in proc.stdout) == ((name, point) in FINISHED), proc.stdout[-2000:]
    folder = contract.stage_dir(raw, run, name)
    _assert_same_folder(contract.stage_dir(raw, straight, name), straight, folder, run)
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no staging folder left behind
    assert not contract.work_dir(run, name).exists()  # nor the checkpoints of a finished stage
    assert not contract.work_dir(straight, name).exists()


@pytest.mark.timeout(900)
def test_an_older_grpo_folder_never_blocks_predict(uninterrupted, tmp_path, monkeypatch, capsys):
    """A later run that leaves GRPO out (pipeline.skip) or gives it no rows: the earlier run's grpo/
    is left out by predict (skipped: kept on disk) or replaced by a folder saying why (no rows),
    where predict used to refuse it as out of date on every run."""
    from negrec.cli import main
    from negrec.io import read_json
    from negrec.train import grpo as grpo_stage

    raw, straight = uninterrupted("grpo")
    skipped = _overridden(raw, ["grpo.learning_rate=3e-5", "pipeline.skip=[grpo, grpo-plain]"])
    run = _run_copy(straight, tmp_path / "skipped", skipped)
    assert main(["predict", "--run-dir", str(run)]) == 0
    assert f"grpo: in pipeline.skip, and {run / 'grpo'} is an older run's: left out" in capsys.readouterr().out
    assert {p.stem for p in (run / "eval" / "predictions").glob("*.parquet")} == {"sft_next"}
    assert (run / "grpo" / "final" / "config.json").exists()  # left out, not deleted

    run = _run_copy(straight, tmp_path / "no_rows", _overridden(raw, ["grpo.learning_rate=3e-5"]))
    monkeypatch.setattr(grpo_stage, "training_rows", lambda *args, **kwargs: [])
    assert main(["grpo", "--run-dir", str(run)]) == 0
    assert "no train rows" in read_json(run / "grpo" / "summary.json")["skipped"]
    assert not (run / "grpo" / "final").exists()
    assert main(["predict", "--run-dir", str(run)]) == 0
    assert {p.stem for p in (run / "eval" / "predictions").glob("*.parquet")} == {"sft_next"}


def test_only_a_reader_that_leaves_it_out_passes_an_older_skipped_input(tmp_path):
    """pipeline.skip exempts an older run's folder only where the reader leaves it out (`skippable_inputs`:
    predict and report, for GRPO); sft-next still refuses an older sft_align/ when sft-align is skipped,
    rather than fine-tune from a policy made on other SIDs."""
    run = tmp_path / "run"
    for folder in ("sft_align", "grpo"):
        (run / folder).mkdir(parents=True)
        (run / folder / contract.MARKER).write_text('{"fingerprint": "an older run"}')
    skipping = {"pipeline": {"skip": ["sft-align", "grpo"]}}
    assert contract.left_out(skipping, run, "grpo") and not contract.left_out({}, run, "grpo")
    assert contract.up_to_date(skipping, run, "predict") is False  # grpo left out: predict may run
    with pytest.raises(contract.StageNotReady, match="grpo is not done"):
        contract.up_to_date({}, run, "predict")
    with pytest.raises(contract.StageNotReady, match="sft-align is not done.*take sft-align out of pipeline.skip"):
        contract.up_to_date(skipping, run, "sft-next")


# ---- readers refuse a folder without a matching marker ----
def test_readers_refuse_a_folder_without_a_matching_marker(base_run, base_raw, tmp_path, capsys):
    from negrec.cli import main

    run = _run_copy(base_run, tmp_path / "run", base_raw)
    (run / "tokenize" / contract.MARKER).unlink()  # as a kill between writing and marking used to leave it
    assert main(["build-model", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / 'tokenize'}: tokenize is not done" in err and "no _DONE" in err

    run2 = _run_copy(base_run, tmp_path / "run2", _overridden(base_raw, ["encode.svd_dim=8"]))
    assert main(["tokenize", "--run-dir", str(run2)]) == 2  # encode/ was made from another encode config
    err = capsys.readouterr().err.strip()
    assert f"{run2 / 'encode'}: encode is not done (its config (encode) changed)" in err
    states = contract.state(load_config(str(run2 / "config.yaml")), run2, "sft-next")
    assert states["state"] == "stale" and "input" in states["why"]


# ---- markers record the files a stage wrote ----
def test_a_truncated_or_deleted_output_is_not_done(tmp_path):
    """A stage is done only while the files it wrote are as it wrote them: a truncated file (a copy
    cut short, a full disk) or a deleted one makes it not done, naming the file; its own folder
    and a folder it shares alike."""
    from negrec.io import write_parquet

    raw, run = {"data": {"format": "movielens"}}, tmp_path / "run"
    with contract.stage_folder(raw, run, "data") as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
        for path in contract.output_paths(raw, run, "data"):
            (tmp / path.name).write_text("{}")
    raw_eval = {"eval": {}}
    with contract.shared_stage_files(raw_eval, run, "baselines"):
        write_parquet(run / "eval" / "predictions" / "random.parquet", pd.DataFrame({"a": np.arange(100)}))
        (run / "eval" / "baselines_summary.json").write_text("{}")  # not atomic: not recorded, checked by name
    for raw_, name in ((raw, "data"), (raw_eval, "baselines")):
        assert contract.state(raw_, run, name)["state"] == "done", contract.state(raw_, run, name)
    with open(run / "data" / "weights.bin", "r+b") as f:
        f.truncate(10)
    st = contract.state(raw, run, "data")
    assert st["state"] == "missing" and "weights.bin is 10 bytes, the stage wrote 1000" in st["why"]
    (run / "eval" / "predictions" / "random.parquet").unlink()
    st = contract.state(raw_eval, run, "baselines")
    assert st["state"] == "missing" and "random.parquet is gone" in st["why"]
    assert contract.stage_files(raw_eval, run, "baselines") == [run / "eval" / "predictions" / "random.parquet"]


def test_a_stage_made_by_other_code_is_stale_naming_the_code(tmp_path, monkeypatch):
    """A stage's fingerprint holds the source of the subpackages it runs: after an upgrade (here a
    changed hash of negrec/data) the stage is stale and `negrec status` names what changed; a stage
    whose code did not change stays done, and a marker from before code was recorded is stale."""
    raw, run = {"data": {"format": "movielens"}}, tmp_path / "run"
    with contract.stage_folder(raw, run, "data") as tmp:
        for path in contract.output_paths(raw, run, "data"):
            (tmp / path.name).write_text("{}")
    assert contract.state(raw, run, "data")["state"] == "done"
    source_hash = contract._source_hash
    for edited, state in (("train", "done"), ("data", "stale")):
        monkeypatch.setattr(contract, "_source_hash", lambda sub: "edited" if sub == edited else source_hash(sub))
        assert contract.state(raw, run, "data")["state"] == state
    assert contract.state(raw, run, "data")["why"] == "its code changed (negrec.data)"
    monkeypatch.undo()
    marker = contract.marker_path(raw, run, "data")
    rec = json.loads(marker.read_text())
    del rec["parts"]["code"]
    rec["fingerprint"] = "an older negrec's"
    marker.write_text(json.dumps(rec))
    assert contract.state(raw, run, "data") == {"state": "stale",
                                                "why": "made by a negrec that did not record its code"}


def test_a_stages_code_is_its_subpackage_and_what_it_imports(tmp_path, monkeypatch):
    """`code_reach` follows absolute, relative and in-function imports between subpackages, one
    way; an edit to a reached file changes the fingerprint, the run machinery beside them does not."""
    pkg = tmp_path / "negrec"
    for sub, text in {"a": "from ..b.x import f\n", "b": "def f():\n    import negrec.c.y\n", "c": "",
                      "d": "from negrec.a import z\n"}.items():
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text(text)
    (pkg / "io.py").write_text("import negrec.d\n")
    (pkg / "a" / "z.py").write_text("from . import q\nfrom negrec import io\n")
    monkeypatch.setattr(contract, "PACKAGE", pkg)
    for name in ("code_reach", "_imported_subpackages", "_source_hash", "_syntax_tree"):  # uncached: the test edits files
        monkeypatch.setattr(contract, name, getattr(contract, name).__wrapped__)
    assert contract.code_reach("negrec.a") == ("a", "b", "c")
    assert contract.code_reach("negrec.d") == ("a", "b", "c", "d")
    before = contract.code_fingerprint("negrec.a")
    (pkg / "io.py").write_text("# the run machinery: not a stage's code\n")
    assert contract.code_fingerprint("negrec.a") == before
    (pkg / "c" / "__init__.py").write_text('"""A docstring."""\n\n# a comment\n')
    assert contract.code_fingerprint("negrec.a") == before  # words about the code are not the code
    (pkg / "c" / "__init__.py").write_text("K = 2\n")
    after = contract.code_fingerprint("negrec.a")
    assert after["c"] != before["c"] and after["a"] == before["a"]
    (pkg / "b" / "x.py").write_text('def f():\n    "a docstring"\n')
    stub = contract.code_fingerprint("negrec.a")
    (pkg / "b" / "x.py").write_text('def f():\n    "a docstring"\n    return "not one"\n')
    assert contract.code_fingerprint("negrec.a")["b"] != stub["b"]  # a string that is not the docstring counts


def test_real_stages_reach_only_what_data_flow_allows():
    assert contract.code_reach("negrec.data") == ("data",)
    assert "train" not in contract.code_reach("negrec.eval")  # nothing imports upward
    assert {"llm", "rewards", "tokenizer", "train"} <= set(contract.code_reach("negrec.train"))


def test_an_interrupted_shared_stage_reads_as_interrupted_and_is_refused(tmp_path):
    """A stage sharing its folder (predict, in eval/) killed or failing halfway has no marker, as one
    that never ran; it reads as started-not-finished and the stages reading it refuse its files."""
    raw, run = {"eval": {}}, tmp_path / "run"
    with pytest.raises(RuntimeError):
        with contract.shared_stage_files(raw, run, "predict"):
            (run / "eval" / "targets.parquet").write_bytes(b"half")
            (run / "eval" / "predictions").mkdir()
            (run / "eval" / "predictions" / ".grpo.parquet.x1.tmp").write_bytes(b"torn")  # an atomic write cut short
            raise RuntimeError("killed")
    st = contract.state(raw, run, "predict")
    assert st["state"] == "missing" and "started, not finished" in st["why"]
    with pytest.raises(contract.StageNotReady, match="predict is not done"):
        contract.up_to_date(raw, run, "evaluate")
    with contract.shared_stage_files(raw, run, "predict"):  # a rerun that finishes
        pd.DataFrame({"a": [1]}).to_parquet(run / "eval" / "targets.parquet")
        (run / "eval" / "predict_summary.json").write_text("{}")
    assert not contract.running_path(raw, run, "predict").exists()
    assert not (run / "eval" / "predictions" / ".grpo.parquet.x1.tmp").exists()
    assert contract.state(raw, run, "predict")["state"] == "done"


def test_a_folder_killed_mid_swap_is_put_in_place_by_the_next_reader(tmp_path):
    """Killed after its new folder was finished, before the rename that puts it in place: status
    says so, and the next command that reads the stage (not only the stage itself) renames it in."""
    raw, run = {"data": {"format": "movielens"}}, tmp_path / "run"
    with contract.stage_folder(raw, run, "data") as tmp:
        for path in contract.output_paths(raw, run, "data"):
            (tmp / path.name).write_text("{}")
    (run / "data").rename(run / ".data.k1ll3d")  # as io.atomic_dir leaves it at its `swap` kill point
    st = contract.state(raw, run, "data")
    assert st["state"] == "missing" and "being renamed into place" in st["why"]
    assert not contract.up_to_date(raw, run, "encode")  # encode itself has not run; data was not refused
    assert contract.state(raw, run, "data")["state"] == "done"
    assert not list(run.glob(".data.*"))
