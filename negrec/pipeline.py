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
from .runlock import run_lock
from .stages import STAGES as REGISTRY

# views of the one registry (negrec.stages): (name, module, function, YAML sections it reads, extra kwargs)
STAGES = [(s.name, s.module, s.func, list(s.sections), dict(s.kwargs)) for s in REGISTRY]

# key outputs per stage, relative to the run folder: a stage whose marker matches but whose
# outputs are missing (folder deleted, half-copied run) is run again
STAGE_OUTPUTS = {s.name: list(s.outputs) for s in REGISTRY}


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


def raw_inputs(name: str, raw: dict):
    """The registry's `fingerprint` of stage `name` (its raw inputs outside the run folder), or None."""
    spec = next((s for s in REGISTRY if s.name == name), None)
    if spec is None or not spec.fingerprint:
        return None
    module, func = spec.fingerprint.split(":")
    return getattr(importlib.import_module(module), func)(raw)


def run_pipeline(raw: dict, run_dir) -> dict:
    """Every stage in order, holding the run folder's lock (`negrec.runlock`)."""
    with run_lock(run_dir, "negrec pipeline"):
        return _run_pipeline(raw, run_dir)


def _run_pipeline(raw: dict, run_dir) -> dict:
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
        # and, for a stage with raw inputs (data), their sizes, mtimes and content hashes
        parts = [upstream, {s: raw.get(s) for s in sections}]
        fingerprint = raw_inputs(name, raw)
        upstream = config_hash(parts if fingerprint is None else [*parts, fingerprint])
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


def stage_states(raw: dict, run_dir) -> dict[str, dict]:
    """Each stage's state in `run_dir` by the pipeline's rule, without running or writing anything:
    `done` (marker matches, outputs present), `stale` (config or raw inputs changed since it ran, or
    no pipeline marker), `missing` (a key output absent) or `skipped` (pipeline.skip); with `why`."""
    cfg = section_config(PipelineConfig, raw, "pipeline")
    run_dir = Path(run_dir)
    states: dict[str, dict] = {}
    upstream, changed = "", ""
    for name, _module, _func, sections, _kwargs in STAGES:
        parts = [upstream, {s: raw.get(s) for s in sections}]
        fingerprint = raw_inputs(name, raw)
        upstream = config_hash(parts if fingerprint is None else [*parts, fingerprint])
        marker = run_dir / ".pipeline" / f"{name}.done"
        missing = missing_outputs(name, raw, run_dir)
        if name in cfg.skip:
            states[name] = {"state": "skipped", "why": "in pipeline.skip"}
        elif missing:
            states[name] = {"state": "missing", "why": "no " + ", ".join(str(p) for p in missing[:2])}
        elif not marker.exists():
            states[name] = {"state": "stale", "why": "outputs present but not marked by `negrec pipeline`"}
        elif marker.read_text().strip() != upstream:
            why = (f"an earlier stage changed ({changed})" if changed else
                   f"its config ({', '.join(sections)}) or raw inputs changed since it ran")
            states[name] = {"state": "stale", "why": why}
        else:
            states[name] = {"state": "done", "why": "marker matches, outputs present"}
        if states[name]["state"] in ("missing", "stale") and not changed:
            changed = name
    return states


def run_status(raw: dict, run_dir) -> dict:
    """`negrec status`: print `stage_states` as a table; writes nothing."""
    states = stage_states(raw, run_dir)
    width = max(len(n) for n in states)
    print(f"run folder: {run_dir}")
    for name, st in states.items():
        print(f"  {name:<{width}}  {st['state']:<7}  {st['why']}")
    return states
