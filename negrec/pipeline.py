"""`negrec pipeline`: every stage in order in one run folder.

prepare -> encode -> tokenize -> build model -> alignment SFT -> next-negative SFT -> progressive
GRPO -> plain GRPO (the ablation) -> baselines -> predict -> evaluate -> filter -> export codebook -> report.
Whether a stage runs is decided by the one freshness rule of `negrec.contract` (its `_DONE` holds
the fingerprint of its config sections, its input stages and its raw inputs, and its key outputs
exist), judged just before the stage, so a stage re-run with the same result leaves the later
ones done, and a killed run resumes where it stopped. `negrec status` prints the same rule's verdicts.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import contract
from .config import as_set, check_config, section_config
from .io import write_json
from .runlock import run_lock
from .stages import STAGES as REGISTRY
from .stages import PipelineConfig

# views of the one registry (negrec.stages): (name, module, function, YAML sections it reads, extra kwargs)
STAGES = [(s.name, s.module, s.func, list(s.sections), dict(s.kwargs)) for s in REGISTRY]

RANKED = ("sft-align", "sft-next", "predict")  # the stages the pipeline runs on `ranks` processes (SFT: in timeline mode)


def run_pipeline(raw: dict, run_dir) -> dict:
    """Every stage in order, holding the run folder's lock (`negrec.runlock`).

    torch's CPU threads are the caller's. `negrec` sets them first (`negrec.cli.set_threads`), and
    that call also turns MKL's dynamic threading off, which changes the training's arithmetic even
    at the same thread count: on a 2-core machine a default SFT retrained in a Python process
    without it reached Recall@10 0.1207 where the CLI's reached 0.1264. Call
    `set_threads(None)` first for the CLI's numbers."""
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
    summary: dict[str, dict] = {}
    bar = tqdm(STAGES, desc="pipeline", unit="stage")
    for name, module, func, sections, kwargs in bar:
        if name not in todo:
            break
        if name in cfg.skip:
            summary[name] = {"status": "skipped (config)"}
            continue
        if name in cfg.force:
            contract.clear(raw, run_dir, name)
        st = contract.state(raw, run_dir, name)
        if st["state"] == "done":
            summary[name] = {"status": "up to date"}
            bar.write(f"[{name}] up to date, skipped")
            continue
        bar.set_postfix_str(name)
        bar.write(f"\n[{name}] running ({st['state']}: {st['why']})")
        t0 = time.perf_counter()
        ranks = stage_ranks(raw, cfg, name)
        if ranks > 1:
            result = launch_stage(raw, run_dir, name, ranks)
        else:
            result = getattr(importlib.import_module(module), func)(raw, run_dir, **kwargs) or {}
        secs = time.perf_counter() - t0
        summary[name] = {"status": "ran", "seconds": round(secs, 1)}
        if isinstance(result, dict) and result.get("skipped"):  # the stage found nothing to do, and said why
            summary[name]["status"] = f"skipped ({result['skipped']})"
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


def stage_ranks(raw: dict, cfg: PipelineConfig, name: str) -> int:
    """How many processes run stage `name`: `pipeline.ranks` for predict and a timeline SFT stage, else one."""
    import torch

    from .train.sft import sft_config

    if name not in RANKED or (name.startswith("sft-") and sft_config(raw, name[4:]).mode != "timeline"):
        return 1
    if cfg.ranks:
        return cfg.ranks

    # not on a CPU: on 2 cores two ranks of one thread ran the default SFT's epochs in 26-27 s, as one
    # process of two threads did (the all-reduce takes 2.6 ms: the halves side by side are no faster)
    return max(1, torch.cuda.device_count())


def launch_stage(raw: dict, run_dir: Path, name: str, ranks: int) -> dict:
    """Stage `name` under torchrun on `ranks` processes of this machine, inside this process's run
    lock (`negrec.runlock`), from this run's whole config."""
    import os
    import subprocess
    import sys

    import torch

    from .io import write_yaml
    from .runlock import HOLDER_ENV

    stage = next(s for s in REGISTRY if s.name == name)
    config = contract.work_dir(run_dir, name).parent / f"{name}.config.yaml"  # beside the stage's work folder
    config.parent.mkdir(parents=True, exist_ok=True)
    write_yaml(config, as_set(raw))  # as written: the ranks resolve what this process filled in, from the run folder
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update({HOLDER_ENV: str(os.getpid()), "NEGREC_THREADS": str(max(1, torch.get_num_threads() // ranks))})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "negrec.cli", *stage.command_line.split(), "--config", str(config), "--run-dir", str(run_dir)]
    print(f"[{name}] on {ranks} processes: {' '.join(cmd[1:])}", flush=True)
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise ValueError(f"{name}: its {ranks} processes under torchrun failed (exit {rc}); the error is above")
    return {}


def stage_states(raw: dict, run_dir) -> dict[str, dict]:
    """Each stage's state in `run_dir` by the rule of `negrec.contract`, without running or writing
    anything: `done`, `stale` (config, input stage or raw inputs changed since it ran), `missing`
    (never ran, incomplete, or a key output absent) or `skipped` (pipeline.skip); with `why`."""
    cfg = section_config(PipelineConfig, raw, "pipeline")
    return {name: ({"state": "skipped", "why": "in pipeline.skip"} if name in cfg.skip
                   else contract.state(raw, run_dir, name)) for name, *_ in STAGES}


def run_status(raw: dict, run_dir) -> dict:
    """`negrec status`: print `stage_states` as a table; writes nothing."""
    states = stage_states(raw, run_dir)
    width = max(len(n) for n in states)
    print(f"run folder: {run_dir}" + ("" if Path(run_dir).exists() else " (does not exist: nothing has run there)"))
    for name, st in states.items():
        print(f"  {name:<{width}}  {st['state']:<7}  {st['why']}")
    return states
