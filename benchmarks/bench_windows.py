"""What ranking from older windows of the history adds (`eval.history_windows`), paired on the same users.

A log of daily activity cut at day starts asks what a user will dislike in the coming days; the
policy's prompt shows the last `prompt.max_events` events. With N windows the policy is also asked
from the N - 1 windows before those, and each item's probability is summed (`negrec.eval.windows`).
For each training seed this runs `configs/generic.yaml` (SFT only, GRPO skipped) on a log and cut
unit, then ranks that one SFT policy with 1..N windows and pairs each with one window on the same
test users (each user's mean over the seeds), beside user-kNN and popular negatives. `wN` asks the
older windows only for users away `--gap-days` (the shipped `eval.history_windows_gap_days`) before
the cut, `wN_all` for every user. A run of some logs keeps the other logs' entries of the JSON, each
entry with its own command and time.

Logs: `ml100k_day` (the ML-100K ratings as a bare-id CSV, read from ../shared by negrec's own reader,
cut at day starts: the cross-session future where negrec trailed the classical methods) and
`ml100k_event` (the same CSV under event cuts, the future the rest of the burst).

    python benchmarks/bench_windows.py [--logs ml100k_day ml100k_event] [--seeds 0 1] [--windows 1 2 4] [--gap-days 1]
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_result, print_table, save_result, score_on_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "generic.yaml"
RUNS = ROOT / "runs" / "bench_windows"
LOGS = {"ml100k_day": "day", "ml100k_event": "event"}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
BASELINES = ("user_knn", "popular_negatives")


def trained_run(log: str, seed: int, csv: Path) -> Path:
    """The run folder of `log` under `seed`: generic.yaml, SFT and baselines, GRPO skipped (made once)."""
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    run = RUNS / f"{log}_seed{seed}"
    raw = load_config(str(CONFIG), [f"data.generic.path={csv}", f"data.split.cut_unit={LOGS[log]}",
                                    "pipeline.skip=[grpo, grpo-plain]", "eval.policies=[sft_next]",
                                    "pipeline.stop_after=predict", f"sft_next.seed={seed}", f"model.seed={seed}"])
    run_pipeline(raw, run)
    return run


@functools.lru_cache(maxsize=None)
def eval_rows_of(run: Path, log: str, csv: Path):
    """(config, prepared data, test rows) of a run, read once for all its rankings."""
    from negrec.config import load_config
    from negrec.data import Prepared
    from negrec.eval.run import _eval_samples, eval_config

    raw = load_config(str(CONFIG), [f"data.generic.path={csv}", f"data.split.cut_unit={LOGS[log]}"])
    prepared = Prepared.load(run / "data")
    return raw, prepared, _eval_samples(prepared, eval_config(raw))


def rank_with_windows(run: Path, log: str, n_windows: int, gap_days: float, csv: Path) -> tuple[Path, float]:
    """The run's SFT policy ranked with `n_windows` windows, the older ones for users away `gap_days`:
    (predictions file, seconds)."""
    from negrec.eval.run import eval_config, predict_with_policy, with_original_ids
    from negrec.llm.prompts import prompt_config

    raw, prepared, samples = eval_rows_of(run, log, csv)
    cfg = replace(eval_config(raw), history_windows=n_windows, history_windows_gap_days=gap_days)
    t0 = time.perf_counter()
    pred, _ = predict_with_policy(run / "sft_next" / "final", prepared, samples, cfg, prompt_config(raw))
    seconds = round(time.perf_counter() - t0, 1)
    path = run / "windows" / f"sft_next_w{n_windows}_gap{gap_days:g}.parquet"
    path.parent.mkdir(exist_ok=True)
    with_original_ids(pred, prepared.id_maps).to_parquet(path)
    return path, seconds


def arms(windows: list[int], gap: float) -> list[tuple[str, int, float]]:
    """(name, windows, gap in days) of each ranking: one window, and for N > 1 the older windows for
    users away `gap` days (`wN`) and, when that leaves some out, for every user (`wN_all`)."""
    out = [("w1", 1, 0.0)]
    for n in (n for n in windows if n > 1):
        out += [(f"w{n}", n, gap)] + ([(f"w{n}_all", n, 0.0)] if gap > 0 else [])
    return out


def kept_logs(saved: dict) -> dict:
    """The logs of an earlier JSON, each with the command, time and gap it was measured under (an
    entry from before the gap: its wN asked every user)."""
    logs = saved.get("logs", {})
    for entry in logs.values():
        entry.setdefault("command", saved.get("command"))
        entry.setdefault("when", saved.get("when"))
        entry.setdefault("gap_days", 0.0)
    return logs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", nargs="+", default=list(LOGS), choices=list(LOGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--windows", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--gap-days", type=float, default=None,
                    help="older windows for users away this long (default: eval.history_windows_gap_days)")
    args = ap.parse_args()
    from bench_quality import bare_ids_csv  # ../shared's ML-100K as a bare-id CSV, written under runs/
    from negrec.cli import set_threads
    from negrec.eval.run import EvalConfig

    set_threads(None)  # as the CLI does: the runs trained here get the CLI's numbers (`run_pipeline`)

    csv = bare_ids_csv()
    gap = EvalConfig().history_windows_gap_days if args.gap_days is None else args.gap_days
    command = "python benchmarks/bench_windows.py " + " ".join(sys.argv[1:])
    result = {"command": command, "logs": kept_logs(load_result("bench_windows"))}
    for log in args.logs:
        runs = [trained_run(log, s, csv) for s in args.seeds]
        files, seconds = {}, {}
        for name, n, gap_days in arms(args.windows, gap):
            ranked = [rank_with_windows(r, log, n, gap_days, csv) for r in runs]
            files[name], seconds[name] = [p for p, _ in ranked], [s for _, s in ranked]
        base = runs[0]
        rows = {**files, **{b: base / "eval" / "predictions" / f"{b}.parquet" for b in BASELINES}}
        gated = [(a, f"{a}_all") for a in files if f"{a}_all" in files]
        pairs = [(a, "w1") for a in files if a != "w1"] + gated + [(w, b) for w in files for b in BASELINES]
        table, paired = score_on_base(base, rows, pairs, METRICS, CONFIG)
        print_table(table, f"{log}: each user's mean over seeds {args.seeds}")
        print_table(paired, f"{log}: paired a - b (95% CI, bootstrap over users)")
        result["logs"][log] = {"cut_unit": LOGS[log], "seeds": args.seeds, "gap_days": gap, "command": command,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rank_seconds": seconds,
                               "table": table, "paired": paired}
    save_result("bench_windows", result)


if __name__ == "__main__":
    main()
