"""The CLI contract: subcommands listed, YAML + --set overrides, resolved config in the run folder."""
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from negrec.cli import STAGES, main
from negrec.config import ConfigError, apply_overrides, from_dict


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "negrec.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out


def test_run_folder_gets_resolved_config(tmp_path, ml100k_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "movielens", "path": str(ml100k_dir), "main_horizon": 7}}))
    rc = main(["data", "prepare", "--config", str(cfg), "--set", "data.main_horizon=3",
               "--set", "data.split.min_context=8", "--run-dir", str(tmp_path / "r")])
    assert rc == 0
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["data"]["main_horizon"] == 3 and resolved["data"]["split"]["min_context"] == 8
    assert (tmp_path / "r" / "data" / "samples_test.parquet").exists()
    assert "users            943" in capsys.readouterr().out


def test_bad_config_names_file_and_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  fromat: movielens\n")
    assert main(["data", "--config", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: data" in err and "fromat" in err


def test_a_path_the_embedded_format_would_ignore_is_refused(tmp_path, capsys):
    """configs/ml100k.yaml reads the embedded log: a path set without data.format ran it silently."""
    rc = main(["data", "--config", "configs/ml100k.yaml", "--set", "data.path=/data/ml-1m",
               "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "data.path" in err and "data.format" in err and "movielens" in err
    assert not (tmp_path / "r" / "data").exists()


def test_a_prompt_longer_than_the_kept_history_is_refused(tmp_path, capsys):
    """Samples keep data.split.max_history events per cut: a compact prompt asking for more would
    be cut short at test while the timeline SFT trains on windows of the full length."""
    from negrec.config import check_config, load_config

    cfg = tmp_path / "long.yaml"
    cfg.write_text("prompt:\n  max_events: 80\n")
    # stop_after bounds the run should the check ever be lost: the refusal must come before any stage
    assert main(["pipeline", "--config", str(cfg), "--run-dir", str(tmp_path / "r"),
                 "--set", "pipeline.stop_after=data"]) == 2
    err = capsys.readouterr().err
    assert "long.yaml" in err and "prompt.max_events (80)" in err and "data.split.max_history (50)" in err
    check_config(load_config(str(cfg), ["data.split.max_history=80"]))  # raised to match: accepted
    check_config(load_config(str(cfg), ["prompt.format=verbose"]))  # verbose prompts use max_neg/max_pos
    check_config(load_config("configs/generic.yaml"))  # the shipped template is accepted
    # the older negatives come from the negatives a sample keeps (the last max_history of them)
    older = ["prompt.max_events=50", "prompt.older_negatives=20"]
    with pytest.raises(ConfigError, match=r"prompt.max_events \(50\) \+ prompt.older_negatives \(20\) exceeds"):
        check_config(load_config(str(cfg), older))
    check_config(load_config(str(cfg), [*older, "data.split.max_history=70"]))


def test_answers_without_eos_are_refused_where_a_stage_would_end_them_with_eos(tmp_path):
    """`prompt.event_eos: false` makes an answer the SID alone: the prompt-mode SFT (TRL appends EOS)
    and a GRPO `max_completion_length` (EOS forced past the SID) would contradict it."""
    from negrec.config import check_config, load_config

    base = ["prompt.event_eos=false"]
    check_config(load_config("configs/ml100k.yaml", base))  # the timeline SFT, GRPO's own length: accepted
    with pytest.raises(ConfigError, match="event_eos: false needs sft_next.mode: timeline"):
        check_config(load_config("configs/ml100k.yaml", [*base, "sft_next.mode=prompt"]))
    with pytest.raises(ConfigError, match="grpo.max_completion_length is set while prompt.event_eos is false"):
        check_config(load_config("configs/ml100k.yaml", [*base, "grpo.max_completion_length=5"]))
    check_config(load_config("configs/ml100k.yaml", ["sft_next.mode=prompt", "grpo.max_completion_length=5"]))


@pytest.mark.parametrize("command", [["sft", "--task", "next"], ["grpo"], ["predict"]])
def test_a_stage_names_a_bad_field_of_what_its_inputs_were_built_from(tmp_path, capsys, command):
    """sft, grpo and predict read the prompt and model sections that build-model was built from: a bad
    field there, in the config file, is named in one line (exit 2) before the run folder is made or
    a stage looks at its inputs (in a finished run folder it came out as a stale build-model)."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prompt:\n  max_events: -3\n")
    assert main([*command, "--config", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "prompt.max_events must be >= 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_command_leaves_the_process_group_it_joined(monkeypatch, tmp_path):
    """Under a launcher a command, failed or not, leaves the torch.distributed group it joined before
    exit (a gloo group left to the interpreter's teardown aborted a rank now and then); a group
    the caller made before calling it stays."""
    import socket

    import torch.distributed as dist

    from negrec import cli

    def join_group():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)

    def command_that_joins_then_fails(args):
        join_group()
        raise ValueError("bad input")

    monkeypatch.setattr(cli, "_run", command_that_joins_then_fails)
    try:
        assert main(["data", "--run-dir", str(tmp_path / "r")]) == 2
        assert not dist.is_initialized()
        join_group()  # the caller's own group
        monkeypatch.setattr(cli, "_run", lambda args: 0)
        assert main(["data", "--run-dir", str(tmp_path / "r")]) == 0
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_failed_command_leaves_an_nccl_group_to_the_launcher(monkeypatch):
    """After a failure a non-gloo group is not left here (an NCCL destroy can wait on peers that are
    still in a collective); after success it is."""
    import torch.distributed as dist

    from negrec import cli

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a: calls.append("destroy"))
    cli._leave_process_group(failed=True)
    assert calls == []
    cli._leave_process_group(failed=False)
    assert calls == ["destroy"]


@dataclass
class _Inner:
    k: int = 1


@dataclass
class _Outer:
    a: float = 0.5
    inner: _Inner = field(default_factory=_Inner)
    hs: list[int] = field(default_factory=lambda: [1])


def test_from_dict_types_and_errors():
    o = from_dict(_Outer, apply_overrides({"inner": {"k": 2}}, ["a=3", "hs=[1,3,7]"]))
    assert o.a == 3.0 and o.inner.k == 2 and o.hs == [1, 3, 7]
    with pytest.raises(ConfigError, match=r"x\.inner\.k: expected an integer"):
        from_dict(_Outer, {"inner": {"k": "two"}}, "x")
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(_Outer, {"b": 1})
    # YAML 1.1 reads `5e-4` (no dot) as a string; a float field still takes it, a word it does not
    assert from_dict(_Outer, apply_overrides({}, ["a=5e-4"])).a == 5e-4
    assert from_dict(_Outer, {"a": "1E3"}).a == 1000.0
    with pytest.raises(ConfigError, match="a: expected a number"):
        from_dict(_Outer, {"a": "fast"})


def test_a_set_value_that_is_not_yaml_names_the_setting():
    # a literal tab (a TSV's separator typed into the shell) is kept as written; YAML refuses it
    assert apply_overrides({}, ["data.generic.sep=\t"])["data"]["generic"]["sep"] == "\t"
    with pytest.raises(ConfigError, match=r"--set 'data\.generic\.columns=\{user_id: u': the value is not valid YAML"):
        apply_overrides({}, ["data.generic.columns={user_id: u"])


# ---- `negrec export-codebook --verify` where torch cannot be imported (a serving stack) ----------
@pytest.fixture(scope="module")
def small_sid_run(tmp_path_factory):
    """A run folder with encode/ (synthetic item vectors) and tokenize/ (RQ-KMeans, extra level)."""
    import json

    import numpy as np

    from negrec.contract import mark_done
    from negrec.tokenizer import run_tokenize

    run_dir = tmp_path_factory.mktemp("cli_sid_run")
    rng = np.random.default_rng(0)
    ids = np.arange(1, 301, dtype=np.int64)
    x = (rng.normal(size=(8, 16))[rng.integers(0, 8, 300)] + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    enc = run_dir / "encode"
    enc.mkdir()
    np.save(enc / "embeddings.npy", x)
    np.save(enc / "item_ids.npy", ids)
    (enc / "meta.json").write_text(json.dumps({"n_items": 300, "dim": 16}))
    raw = {"tokenize": {"method": "rqkmeans", "levels": 2, "codebook_size": 16, "kmeans_iters": 10,
                        "collision": "extra_level"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))  # what the CLI reads by default
    mark_done(raw, run_dir, "encode")  # assembled by hand: marked as the stage would have
    run_tokenize(raw, run_dir)
    return run_dir


@pytest.mark.parametrize("threads", [None, "2"])
def test_export_codebook_verify_runs_without_torch(small_sid_run, tmp_path, threads, cli_without_torch):
    """Thread setup imports torch; export-codebook must not need it (cores <= 4 or NEGREC_THREADS set)."""
    out = tmp_path / "export"
    proc = cli_without_torch("export-codebook", "--verify", "--run-dir", str(small_sid_run), "--out", str(out),
                                 env_threads=threads)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verified with numpy: all 300 items" in proc.stdout
    assert (out / "manifest.json").exists() and (out / "README.txt").exists()


def test_export_never_replaces_a_folder_that_is_not_an_export(small_sid_run, tmp_path):
    """--out replaces its folder whole: a user's folder, or one holding the run, is refused, untouched;
    the export's README names where it lives, not its staging folder."""
    from negrec.tokenizer import run_export

    import shutil

    run = tmp_path / "outer" / "run"
    shutil.copytree(small_sid_run, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for target in (mine, run, run.parent):
        with pytest.raises(ValueError, match="export out_dir"):
            run_export(raw, run, out_dir=target)
    assert (mine / "notes.txt").read_text() == "keep" and (run / "tokenize").exists()
    out = tmp_path / "serving"
    run_export(raw, run, out_dir=out)
    assert str(out) in (out / "README.txt").read_text()
    for marker in out.glob("_DONE*"):
        marker.unlink()
    assert run_export(raw, run, out_dir=out, verify=True)["verify"]["mismatches"] == 0  # an export is rewritten


def test_export_codebook_error_is_one_line_without_torch(tmp_path, cli_without_torch):
    proc = cli_without_torch("export-codebook", "--verify", "--run-dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "run `negrec tokenize` first" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_command_resolves_day_breaks_as_the_pipeline_does(tmp_path, cli_without_torch):
    """Unset, `prompt.day_breaks` follows the data's cuts (on under day cuts), and the stages'
    fingerprints hold the resolved value: every command's config check must resolve it. `negrec
    evaluate` (which checks `eval` alone) once left it out, judged predict stale on a day-cut run
    the pipeline had just finished, and refused. The resolution stays torch-free."""
    import copy

    from negrec.cli import SECTIONS_OF
    from negrec.config import check_config, load_config

    raw = load_config("configs/generic.yaml", ["data.split.cut_unit=day"])  # its `auto`: the test below
    assert (raw.get("prompt") or {}).get("day_breaks") is None  # the template leaves it to the cuts
    for command, sections in SECTIONS_OF.items():
        resolved = copy.deepcopy(raw)
        check_config(resolved, sections)
        assert resolved["prompt"]["day_breaks"] is True, command
    proc = cli_without_torch("evaluate", "--config", "configs/generic.yaml", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "torch" not in proc.stderr, proc.stderr[-2000:]


def test_auto_cut_unit_resolves_as_the_data_stage_chose(tmp_path):
    """Under `cut_unit: auto` the config alone cannot say whether cuts fall at day starts: the config
    check leaves `prompt.day_breaks` unset, `fill_cut_unit` reads the unit the data stage recorded
    in data/data_config.json (day: the breaks on; event: off), again when the stage chose otherwise,
    and a stage asking before the data stage ran is told to run it."""
    import json

    from negrec.config import as_set, check_config, fill_cut_unit, load_config
    from negrec.data.prepare import cuts_at_day_start

    raw = load_config("configs/generic.yaml", ["data.split.cut_unit=auto"])
    check_config(raw)
    assert (raw.get("prompt") or {}).get("day_breaks") is None
    with pytest.raises(ValueError, match="run `negrec data`"):
        cuts_at_day_start(raw)
    fill_cut_unit(raw, tmp_path)  # no data folder yet: nothing to read
    assert "_cut_unit" not in raw
    (tmp_path / "data").mkdir()
    for unit, breaks in (("day", True), ("event", None), ("day", True)):
        (tmp_path / "data" / "data_config.json").write_text(json.dumps({"split": {"cut_unit": unit}}))
        fill_cut_unit(raw, tmp_path)
        assert raw["_cut_unit"] == unit and cuts_at_day_start(raw) is (unit == "day")
        assert (raw.get("prompt") or {}).get("day_breaks") is breaks
        assert as_set(raw)["data"]["split"]["cut_unit"] == "auto"  # config.yaml keeps what was written
        assert "day_breaks" not in (as_set(raw).get("prompt") or {})
    # a unit chosen again (the log changed) hashes as a fresh fill of it: no stage judged stale by the switch
    from negrec.contract import _Rule

    (tmp_path / "data" / "data_config.json").write_text(json.dumps({"split": {"cut_unit": "event"}}))
    fresh = load_config("configs/generic.yaml", ["data.split.cut_unit=auto"])
    check_config(fresh)
    for stage in ("build-model", "sft-next", "predict"):  # every question to the contract reads the choice first
        assert _Rule(raw, tmp_path).parts(stage)["config"] == _Rule(fresh, tmp_path).parts(stage)["config"], stage
    assert raw["_cut_unit"] == fresh["_cut_unit"] == "event"


def test_data_stage_chooses_the_cut_unit_of_a_bursty_log(tmp_path, capsys):
    """`negrec data prepare` under `cut_unit: auto` on a log where every user rates in one sitting:
    day cuts would give no user a test cut, so event cuts are taken; the stats say so, and
    data_config.json records the unit for the later stages."""
    import json

    rows = [f"{u},{i},{1 + (u * i) % 5},{1_704_067_200 + 86_400 * u + 60 * i}" for u in range(8) for i in range(12)]
    (tmp_path / "log.csv").write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"format": "generic", "generic": {
        "path": str(tmp_path / "log.csv"), "columns": {"user_id": "user", "item_id": "item", "ts": "timestamp",
                                                      "rating": "rating"}}, "split": {"cut_unit": "auto"}}}))
    assert main(["data", "prepare", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 0
    assert "(cut_unit auto: event; day cuts give 0 users a test cut, event cuts 8)" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "r" / "data" / "data_config.json").read_text())
    assert recorded["split"]["cut_unit"] == "event"
    # too few events for any cut under either unit: the one line says so (not "set cut_unit: event")
    assert main(["data", "prepare", "--config", str(config), "--run-dir", str(tmp_path / "r2"),
                 "--set", "data.split.min_context=20"]) == 2
    assert "neither day nor event cuts give one" in capsys.readouterr().err


def test_data_prepare_runs_without_torch(tmp_path, ml100k_dir, cli_without_torch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "movielens", "path": str(ml100k_dir),
                                            "split": {"train_event_stride": 10}}}))
    proc = cli_without_torch("data", "prepare", "--config", str(cfg), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "data" / "samples_test.parquet").exists()


def test_evaluate_scores_an_outside_predictions_file(tmp_path):
    """`negrec evaluate --predictions F --targets T --log L` reads those three files and nothing else."""
    import json

    import pandas as pd

    day = 86_400
    log = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [5, 6, 7, 5, 8], "ts": [0, 2 * day, 3 * day, 0, 2 * day],
                        "feedback": [-1, -1, -1, 1, -1]})
    targets = pd.DataFrame({"user_id": [1, 1, 2], "cut_ts": [day, day, day], "item_id": [6, 7, 8],
                            "ts": [2 * day, 3 * day, 2 * day]})
    # user 1: 6 at rank 0 (a hit), 7 missed; user 2: 8 at rank 1 -> Recall@1 = (1/1 + 0) / 2, Recall@10 = (1/2 + 1/1) / 2
    pred = pd.DataFrame({"user_id": [1, 1, 2, 2], "cut_ts": [day] * 4, "rank": [0, 1, 0, 1], "item_id": [6, 9, 9, 8]})
    paths = {}
    for name, df in (("log", log), ("targets", targets), ("mine", pred)):
        paths[name] = tmp_path / f"{name}.parquet"
        df.to_parquet(paths[name])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"eval": {"metrics": {"ks": [1, 10], "horizons": [7], "main_horizon": 7}}}))
    rc = main(["evaluate", "--config", str(cfg), "--run-dir", str(tmp_path / "empty_run"), "--predictions",
               str(paths["mine"]), "--targets", str(paths["targets"]), "--log", str(paths["log"])])
    assert rc == 0
    m = json.loads((tmp_path / "mine.metrics.json").read_text())["mine"]
    assert m["recall@1_h7"] == pytest.approx(0.5) and m["recall@10_h7"] == pytest.approx(0.75)
    assert not (tmp_path / "empty_run" / "eval" / "metrics.json").exists()


def test_auto_threads_follow_other_load(monkeypatch):
    """On a small CPU: every core when nothing else runs, one thread when other jobs compete."""
    import os

    from negrec import cli

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli, "_busy_cores", lambda: 0.1)
    assert cli._auto_threads()[0] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks of a launch share the cores
    assert cli._auto_threads()[0] == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(cli, "_busy_cores", lambda: 1.2)
    assert cli._auto_threads()[0] == 1
    monkeypatch.setattr(cli, "_busy_cores", lambda: None)
    assert cli._auto_threads()[0] == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert cli._auto_threads()[0] == 0  # big machine: torch's own default


def test_busy_cores_measures_a_spinning_process():
    import os

    from negrec.cli import _busy_cores

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    idle = _busy_cores(0.3)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        busy = _busy_cores(1.0)
    finally:
        spin.kill()
    assert 0.0 <= idle <= os.cpu_count() + 0.01
    assert busy >= 0.7, busy  # the spinner keeps one core busy


def test_a_burst_in_one_window_is_no_competing_job(monkeypatch):
    """Busy cores are the median over the windows: a job that ran in the first window only (a
    process exiting) leaves the CPU idle; one that runs through them, pausing in one, does not."""
    import os

    from negrec import cli

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr("time.sleep", lambda s: None)

    def ticks(per_window_idle):  # 40 ticks per window over 2 cores, `idle` of them idle
        marks, total, idle = [(0, 0)], 0, 0
        for i in per_window_idle:
            total, idle = total + 40, idle + i
            marks.append((total, idle))
        return iter(marks)

    burst = ticks([0, 40, 38])
    monkeypatch.setattr(cli, "_cpu_times", lambda: next(burst))
    assert cli._busy_cores() == pytest.approx(2 * (1 - 38 / 40))  # 0.1 core: idle
    steady = ticks([20, 21, 19])
    monkeypatch.setattr(cli, "_cpu_times", lambda: next(steady))
    assert cli._busy_cores() == pytest.approx(1.0)
    pausing = ticks([20, 40, 22])
    monkeypatch.setattr(cli, "_cpu_times", lambda: next(pausing))
    assert cli._busy_cores() == pytest.approx(2 * (1 - 22 / 40))


def test_the_saved_config_is_what_the_user_set(tmp_path):
    """config.yaml leaves out what the run filled in (horizons from data) and the one-shot options
    (pipeline.force, stop_after): rerun with --set data.main_horizon=3, every section follows it,
    and a later run neither re-forces nor stops early."""
    from negrec.cli import _write_config
    from negrec.config import check_config, load_config

    raw = load_config("configs/ml100k.yaml", ["pipeline.force=[report]", "pipeline.stop_after=data"])
    check_config(raw)
    assert raw["rewards"]["horizon"] == 7 and raw["eval"]["metrics"]["main_horizon"] == 7
    _write_config(tmp_path, raw)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "horizon" not in (saved.get("rewards") or {})
    assert not {"main_horizon", "horizons"} & set((saved.get("eval") or {}).get("metrics") or {})
    assert saved["pipeline"] == {"skip": ["grpo-plain"], "ranks": 0}  # force and stop_after left out
    again = load_config(str(tmp_path / "config.yaml"), ["data.main_horizon=3"])
    check_config(again)
    assert again["rewards"]["horizon"] == 3 and again["eval"]["metrics"]["main_horizon"] == 3


def test_status_of_a_file_or_a_missing_folder(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["status", "--config", "configs/ml100k.yaml", "--run-dir", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["status", "--config", "configs/ml100k.yaml", "--run-dir", str(tmp_path / "typo")]) == 0
    assert "does not exist" in capsys.readouterr().out


def test_an_unquoted_yaml_date_stays_the_text_written(tmp_path):
    """YAML reads 2020-10-08 as a date object, which the str settings refused and the run's JSON
    config could not hold: the config loader keeps it as written, in the file and in --set."""
    from negrec.config import check_config, load_config

    cfg = tmp_path / "dates.yaml"
    cfg.write_text("data:\n  split:\n    global_test_date: 2020-10-08\n")
    raw = load_config(str(cfg), ["data.split.global_valid_date=2020-10-01"])
    assert raw["data"]["split"] == {"global_test_date": "2020-10-08", "global_valid_date": "2020-10-01"}
    check_config(raw)


@pytest.mark.parametrize("override, named", [
    ("data.generic.columns=[user, item, ts]", "data.generic.columns: expected a mapping"),
    ("data.generic.feature_columns=genre", "data.generic.feature_columns: expected a list"),
])
def test_bare_list_and_mapping_fields_are_type_checked(override, named):
    """Fields typed plain `dict` / `list` went unchecked: a list of columns failed later in Python's
    words, and a string feature column was split into its letters."""
    from negrec.config import check_config, load_config

    with pytest.raises(ConfigError, match=named):
        check_config(load_config("configs/generic.yaml", [override]))


@pytest.mark.parametrize("override, named", [
    ("sft_next.epochs=-1", "sft_next.epochs must be positive"),
    ("sft_next.batch_size=0", "sft_next.batch_size must be at least 1"),
    ("sft_align.learning_rate=-0.001", "sft_align.learning_rate must be positive"),
    ("sft_next.max_steps=-5", "sft_next.max_steps must be at least 1, or -1"),
    ("sft_align.phases=[{tasks: [text_to_sid], max_steps: 10, learning_rate: -1}]", "phase 2: learning_rate must be positive"),
    ("tokenize.epochs=-3", "tokenize.epochs: must be at least 1"),
    ("tokenize.lr=0", "tokenize: lr must be positive"),
    ("eval.k=0", "eval.k must be at least 1"),
    ("eval.num_beams=0", "eval.num_beams must be at least 1"),
    ("grpo.learning_rate=0", "grpo.learning_rate must be positive"),
])
def test_numbers_out_of_range_are_refused_before_any_stage(override, named):
    """Refused when the config is read, naming the field, not accepted (a run of 0 epochs or an
    empty top-0 that exits 0) or failing stages later as a division by zero or torch's message."""
    from negrec.config import check_config, load_config

    with pytest.raises(ConfigError, match=named):
        check_config(load_config("configs/ml100k.yaml", [override]))
    check_config(load_config("configs/ml100k.yaml"))  # the shipped values pass
