"""Small helpers shared by the benchmark scripts: tables, JSON results, peak memory."""
from __future__ import annotations

import json
import platform
import resource
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
    import shutil

    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    if not run.exists():
        shutil.copytree(base, run, symlinks=True)
    t0 = time.time()
    run_pipeline(load_config(str(config), overrides), run)
    return round(time.time() - t0, 1)


def paired_rows(run: Path, a: str, b: str, metrics) -> dict:
    """{metric: {diff, lo, hi, p}} of `a - b` in the run's eval/paired.json."""
    return {p["metric"]: {k: p[k] for k in ("diff", "lo", "hi", "p")}
            for p in json.loads((run / "eval" / "paired.json").read_text())
            if p["a"] == a and p["b"] == b and p["metric"] in metrics}
