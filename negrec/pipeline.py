"""`negrec pipeline`: every stage in order in one run folder.

prepare -> encode -> tokenize -> build model -> alignment SFT -> next-negative SFT -> progressive
GRPO -> plain GRPO (the ablation) -> baselines -> predict -> evaluate -> filter -> export codebook -> report.
A stage is skipped when its outputs exist and were made from the same config (its own sections
and those of every stage before it), so a killed run resumes where it stopped.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import section_config
from .io import config_hash, write_json, write_text

# (name, module, function, YAML sections it reads, extra kwargs)
STAGES = [
    ("data", "negrec.data", "run_prepare", ["data"], {}),
    ("encode", "negrec.rqvae", "run_encode", ["encode"], {}),
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


@dataclass
class PipelineConfig:
    skip: list[str] = field(default_factory=list)   # stage names to leave out
    stop_after: str = ""                            # run up to and including this stage
    force: list[str] = field(default_factory=list)  # stage names to rerun even if up to date


def run_pipeline(raw: dict, run_dir) -> dict:
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
        if name not in cfg.force and marker.exists() and marker.read_text().strip() == upstream:
            summary[name] = {"status": "up to date"}
            bar.write(f"[{name}] up to date, skipped")
            continue
        bar.set_postfix_str(name)
        bar.write(f"\n[{name}] running")
        t0 = time.perf_counter()
        fn = getattr(importlib.import_module(module), func)
        result = fn(raw, run_dir, **kwargs) or {}
        secs = time.perf_counter() - t0
        write_text(marker, upstream + "\n")
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
