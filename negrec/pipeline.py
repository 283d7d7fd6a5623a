"""`negrec pipeline`: every stage in order in one run folder.

prepare -> encode -> tokenize -> build model -> alignment SFT -> next-negative SFT -> progressive
GRPO -> plain GRPO (the ablation) -> baselines -> predict -> evaluate -> filter -> export codebook -> report.
A stage is skipped when its outputs exist (`stage_outputs`: its folder and key files) and were
made from the same config (its own sections and those of every stage before it), so a killed run
resumes where it stopped. Once a stage has run, every later stage is called again rather than
skipped on its marker: its inputs may have changed, and each stage's own up-to-date check
(most compare hashes of their inputs) decides whether it recomputes.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import check_config, section_config
from .io import config_hash, write_json, write_text

# (name, module, function, YAML sections it reads, extra kwargs)
STAGES = [
    ("data", "negrec.data", "run_prepare", ["data"], {}),
    ("encode", "negrec.encode", "run_encode", ["encode"], {}),
    ("tokenize", "negrec.tokenizer", "run_tokenize", ["tokenize"], {}),
    ("build-model", "negrec.llm", "run_build_model", ["model", "prompt"], {}),
    ("sft-align", "negrec.train", "run_sft", ["sft_align"], {"task": "align"}),
    ("sft-next", "negrec.train", "run_sft", ["sft_next"], {"task": "next"}),
    ("grpo", "negrec.train", "run_grpo", ["grpo", "rewards"], {}),
    ("grpo-plain", "negrec.train", "run_grpo", ["grpo", "rewards"], {"plain": True}),
    ("baselines", "negrec.eval", "run_baselines", ["baselines", "eval"], {}),
    ("predict", "negrec.eval", "run_predict", ["eval"], {}),
    ("evaluate", "negrec.eval", "run_evaluate", ["eval"], {}),
    ("filter", "negrec.eval", "run_filter", ["filter"], {}),
    ("export", "negrec.tokenizer", "run_export", ["export"], {}),
    ("report", "negrec.eval", "run_report", ["report"], {}),
]


# key outputs per stage, relative to the run folder: a stage whose marker matches but whose
# outputs are missing (folder deleted, half-copied run) is run again
STAGE_OUTPUTS = {
    "data": ["data/interactions.parquet", "data/items.parquet", "data/cuts.parquet", "data/data_config.json",
             "data/samples_train.parquet", "data/samples_valid.parquet", "data/samples_test.parquet"],
    "encode": ["encode/embeddings.npy", "encode/item_ids.npy", "encode/meta.json"],
    "tokenize": ["tokenize/sid_tokenizer", "tokenize/quantizer", "tokenize/raw_codes.npy", "tokenize/metrics.json"],
    "build-model": ["model/config.json"],
    "sft-align": ["sft_align/final/config.json", "sft_align/summary.json"],
    "sft-next": ["sft_next/final/config.json", "sft_next/summary.json"],
    "grpo": ["grpo/final", "grpo/summary.json"],
    "grpo-plain": ["grpo_plain/final", "grpo_plain/summary.json"],
    "baselines": ["eval/baselines_summary.json"],
    "predict": ["eval/targets.parquet", "eval/predict_summary.json"],  # predictions.parquet only when a policy exists
    "evaluate": ["eval/metrics.json", "eval/results_table.txt"],
    "filter": ["filter/curve.json"],
    "export": ["{export}/manifest.json"],
    "report": ["report.md"],
}


def stage_outputs(name: str, raw: dict, run_dir) -> list[Path]:
    """The files and folders whose presence `run_pipeline` requires before skipping stage `name`."""
    run_dir = Path(run_dir)
    export = raw.get("export") if isinstance(raw.get("export"), dict) else {}
    export_dir = Path(export["out_dir"]) if export.get("out_dir") else run_dir / "export"  # as run_export resolves it
    out = []
    for rel in STAGE_OUTPUTS.get(name, []):
        out.append(export_dir / rel.split("/", 1)[1] if rel.startswith("{export}/") else run_dir / rel)
    return out


def missing_outputs(name: str, raw: dict, run_dir) -> list[Path]:
    return [p for p in stage_outputs(name, raw, run_dir) if not p.exists()]


@dataclass
class PipelineConfig:
    skip: list[str] = field(default_factory=list)   # stage names to leave out
    stop_after: str = ""                            # run up to and including this stage
    force: list[str] = field(default_factory=list)  # stage names to rerun even if up to date


def run_pipeline(raw: dict, run_dir) -> dict:
    import sys

    for note in check_config(raw):  # every section, before the first stage runs; the horizon fixed once
        print(f"negrec: note: {note}", file=sys.stderr)
    cfg = section_config(PipelineConfig, raw, "pipeline")
    run_dir = Path(run_dir)
    names = [s[0] for s in STAGES]
    for n in (*cfg.skip, *cfg.force, *([cfg.stop_after] if cfg.stop_after else [])):
        if n not in names:
            raise ValueError(f"pipeline: unknown stage {n!r}; stages are {names}")
    todo = names[: names.index(cfg.stop_after) + 1] if cfg.stop_after else names
    markers = run_dir / ".pipeline"
    summary: dict[str, dict] = {}
    upstream = ""
    rerun_downstream = False  # set once a stage has run: later stages then check their own inputs
    bar = tqdm(STAGES, desc="pipeline", unit="stage")
    for name, module, func, sections, kwargs in bar:
        if name not in todo:
            break
        # the hash covers this stage's sections and, through `upstream`, every earlier stage's
        upstream = config_hash([upstream, {s: raw.get(s) for s in sections}])
        if name in cfg.skip:
            summary[name] = {"status": "skipped (config)"}
            continue
        marker = markers / f"{name}.done"
        if name not in cfg.force and not rerun_downstream and marker.exists() \
                and marker.read_text().strip() == upstream:
            missing = missing_outputs(name, raw, run_dir)
            if not missing:
                summary[name] = {"status": "up to date"}
                bar.write(f"[{name}] up to date, skipped")
                continue
            bar.write(f"[{name}] outputs missing ({', '.join(str(p) for p in missing[:3])}), running again")
            marker.unlink(missing_ok=True)
        bar.set_postfix_str(name)
        bar.write(f"\n[{name}] running")
        t0 = time.perf_counter()
        fn = getattr(importlib.import_module(module), func)
        result = fn(raw, run_dir, **kwargs) or {}
        secs = time.perf_counter() - t0
        write_text(marker, upstream + "\n")
        rerun_downstream = True
        summary[name] = {"status": "ran", "seconds": round(secs, 1)}
        bar.write(f"[{name}] done in {secs:.1f}s")
        if isinstance(result, dict) and result.get("table"):
            summary["table"] = result["table"]
    write_json(run_dir / "pipeline_summary.json", summary)
    print("\nstage timings: " + ", ".join(f"{k} {v.get('seconds', v['status'])}" for k, v in summary.items()
                                          if isinstance(v, dict) and "status" in v))
    results = run_dir / "eval" / "results_table.txt"
    if results.exists():
        print("\n" + results.read_text())
    print(f"run folder: {run_dir}")
    return summary
