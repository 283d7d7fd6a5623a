"""Small helpers shared by the benchmark scripts: tables, JSON results, peak memory."""
from __future__ import annotations

import json
import platform
import resource
import shutil
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(rows: list[dict], title: str = "") -> None:
    if title:
        print(f"\n{title}")
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(str(c).ljust(widths[c]) for c in cols))
    print("  ".join("-" * widths[c] for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def load_result(name: str) -> dict:
    """The committed `results/<name>.json` ({} when there is none): rows a partial rerun keeps."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
               **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path


def rerun_from_base(base: Path, run: Path, config: Path, overrides: list[str]) -> float:
    """Seconds to bring `run` (a copy of the `base` run folder, made once) up to date under `overrides`:
    the pipeline re-runs only what the overrides make stale."""
    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    if not run.exists():
        shutil.copytree(base, run, symlinks=True)
    set_threads(None)  # as the CLI does before a stage: the same arithmetic as `negrec pipeline` (`run_pipeline`)
    t0 = time.time()
    run_pipeline(load_config(str(config), overrides), run)
    return round(time.time() - t0, 1)


def copy_stage(source: Path, copy: Path) -> None:
    """`copy` as a copy of the stage folder `source`, made again when `source` was redone since (its
    completion marker changed, e.g. the base rerun after a config change): a copy the variant's own
    config made stale and the pipeline redid in place (a rebuilt model) is kept."""
    stamp = copy.parent / ".copied" / copy.name
    marker = b"".join(m.read_bytes() for m in sorted(source.glob("_DONE*")))
    if copy.exists() and stamp.exists() and stamp.read_bytes() != marker:
        shutil.rmtree(copy)
    if not copy.exists():
        shutil.copytree(source, copy)
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_bytes(marker)


def trained_grpo_summary(run: Path) -> dict:
    """`grpo/summary.json` of a run whose GRPO trained; a GRPO that found no rows to train on (its
    summary holds only why) stops the benchmark with that reason, not a KeyError."""
    summary = json.loads((run / "grpo" / "summary.json").read_text())
    if "skipped" in summary:
        raise SystemExit(f"{run}: GRPO did not train ({summary['skipped']}); nothing to compare")
    return summary


def paired_rows(run: Path, a: str, b: str, metrics) -> dict:
    """{metric: {diff, lo, hi, p}} of `a - b` in the run's eval/paired.json."""
    return {p["metric"]: {k: p[k] for k in ("diff", "lo", "hi", "p")}
            for p in json.loads((run / "eval" / "paired.json").read_text())
            if p["a"] == a and p["b"] == b and p["metric"] in metrics}


def score_on_base(base: Path, files: dict, pairs: list, metrics, config: Path) -> tuple[list[dict], list[dict]]:
    """(rows, paired): each predictions file ({row name: path}) scored on the base run's test rows by
    negrec's own metric code, and the paired differences a - b asked for (bootstrap over users).
    A row given a list of files (one policy under several training seeds) scores each user's mean
    over them, so its pairs hold the training noise the bootstrap over users does not see.
    Scoring outside a run folder: the `evaluate` stage would refuse a folder without the policies'
    own stages."""
    import pandas as pd

    from negrec.config import load_config, section_config
    from negrec.eval.metrics import evaluate_predictions
    from negrec.eval.run import EvalConfig, _aligned, paired_comparisons

    mcfg = section_config(EvalConfig, load_config(str(config)), "eval").metrics
    targets = pd.read_parquet(base / "eval" / "targets.parquet")
    log = pd.read_parquet(base / "data" / "interactions.parquet", columns=["user_id", "item_id", "ts", "feedback"])
    keys = targets[["user_id", "cut_ts"]].drop_duplicates().sort_values(["user_id", "cut_ts"]).astype("int64")
    per_file = {}  # a file in several rows (one seed alone and in the seeds' mean) is scored once

    def score_file(path) -> pd.DataFrame:
        if path not in per_file:
            m = evaluate_predictions(pd.read_parquet(path).merge(keys, on=["user_id", "cut_ts"]), targets, log=log,
                                     cfg=mcfg, per_row=True)
            per_file[path] = _aligned(m.pop("per_row"), keys)
        return per_file[path]

    scored, rows = {}, []
    for name, paths in files.items():
        per_seed = [score_file(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
        # the same rows in the same order (_aligned), so the seeds' mean is taken cell by cell
        scored[name] = sum(f.drop(columns=["user_id", "cut_ts"]) for f in per_seed) / len(per_seed)
        scored[name][["user_id", "cut_ts"]] = per_seed[0][["user_id", "cut_ts"]]
        rows.append({"method": name, **{k: scored[name][k].mean() for k in metrics}})
    pairs = [(a, b) for a, b in pairs if a in scored and b in scored]  # a row left out of the run: unpaired
    paired = paired_comparisons(scored, keys["user_id"].to_numpy(), pairs, list(metrics), mcfg)
    return rows, [{k: p.get(k) for k in ("a", "b", "metric", "diff", "lo", "hi", "p")} for p in paired]
