"""Time preparing a large synthetic log: schema conversion, implicit negatives, cuts and samples.

    python benchmarks/bench_data.py --rows 10000000

Target: >= 1M rows/s end to end, peak memory below 4x the Parquet size of the log.
The preparation runs in a child process; its peak is the kernel's high-water mark (VmHWM), reset
after the imports, minus the resident memory at that point. (getrusage's ru_maxrss cannot be reset
and in a spawned child starts from the parent's peak, which holds the whole synthetic frame.)
Samples stay compact (windows into the log) until a split is turned into its on-disk Arrow table:
`--materialize` also times that and reports its peak apart.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, save_result  # noqa: E402


def synthetic_log(n_rows: int, n_users: int, n_items: int, days: int, seed: int = 0) -> pd.DataFrame:
    """A short-video-like log: Zipf items, bursts per user, play/duration, like/hate labels."""
    rng = np.random.default_rng(seed)
    user = np.sort(rng.integers(0, n_users, n_rows))
    item = (rng.zipf(1.3, n_rows) % n_items).astype(np.int64)
    ts = 1_650_000_000 + rng.integers(0, days * 86400, n_rows)
    duration = rng.uniform(5, 120, n_rows).round(1)
    play = (duration * rng.beta(0.6, 1.2, n_rows)).round(1)
    u = rng.random(n_rows)
    return pd.DataFrame({"user_id": user, "item_id": item, "ts": ts, "is_hate": (u < 0.02).astype(np.int8),
                         "is_like": (u > 0.9).astype(np.int8), "play_time_s": play, "duration_s": duration})


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0). getrusage's ru_maxrss
    cannot be reset and, in a child, starts from the parent's peak, which holds the synthetic log."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def prepare_child(path: str, q, materialize: bool = False) -> None:
    from negrec.data import DataConfig, GenericLogSpec, SplitConfig, prepare_data

    exact = _reset_peak()
    base = _status_mb("VmRSS") if exact else peak_rss_mb()
    # conflicts: the random log puts a like and a hate of one item in the same second now and then
    cfg = DataConfig(format="generic", conflicts="negative", generic=GenericLogSpec(
        path=path, columns={"user_id": "user_id", "item_id": "item_id", "ts": "ts", "play_time_s": "play_time_s",
                            "duration_s": "duration_s", "is_hate": "is_hate", "is_like": "is_like"},
        ts_unit="s", negative_if="is_hate == 1", positive_if="is_like == 1"),
        split=SplitConfig(max_history=20, max_train_samples_per_user=5))
    t0 = time.perf_counter()
    p = prepare_data(cfg)
    secs = time.perf_counter() - t0
    peak = _status_mb("VmHWM") if exact else peak_rss_mb()
    res = {"seconds": secs, "peak_rss_mb": peak, "baseline_rss_mb": base,
           "implicit": int(p.report["implicit_negatives_added"]),
           "samples": {k: _num_rows(p.samples, k) for k in p.samples.keys()}}
    if materialize:
        # what a consumer pays on top: every split turned into the on-disk Arrow schema, one at a time
        t0 = time.perf_counter()
        for k in p.samples.keys():
            p.samples.table(k)
        res["materialize_seconds"] = time.perf_counter() - t0
        res["materialize_peak_rss_mb"] = _status_mb("VmHWM") if exact else peak_rss_mb()
    q.put(res)


def _num_rows(samples, split: str) -> int:
    return samples.num_rows(split) if hasattr(samples, "num_rows") else len(samples[split])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--materialize", action="store_true",
                    help="also time turning every split's samples into the on-disk Arrow schema (reported apart)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log.parquet")
        synthetic_log(args.rows, args.users, args.items, args.days).to_parquet(path, index=False)
        parquet_mb = os.path.getsize(path) / 2**20
        q = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=prepare_child, args=(path, q, args.materialize))
        proc.start()
        res = q.get()
        proc.join()
    rows_s = args.rows / res["seconds"]
    work_mb = res["peak_rss_mb"] - res["baseline_rss_mb"]
    row = {"rows": args.rows, "seconds": round(res["seconds"], 2), "rows_per_s": round(rows_s),
           "parquet_mb": round(parquet_mb, 1), "peak_rss_mb": round(res["peak_rss_mb"]),
           "peak_over_import_mb": round(work_mb), "mem_x_parquet": round(work_mb / parquet_mb, 2),
           "implicit_negatives": res["implicit"], **{f"{k}_samples": v for k, v in res["samples"].items()}}
    if "materialize_seconds" in res:
        row["materialize_s"] = round(res["materialize_seconds"], 2)
        row["materialize_mem_x_parquet"] = round((res["materialize_peak_rss_mb"] - res["baseline_rss_mb"]) / parquet_mb, 2)
    print_table([row], f"bench_data: prepare a {args.rows:,}-row synthetic log (target >= 1M rows/s, memory < 4x Parquet)")
    print(f"rows/s target met: {rows_s >= 1e6}; memory target met: {work_mb < 4 * parquet_mb}")
    save_result("bench_data", {"args": vars(args), "result": row})


if __name__ == "__main__":
    main()
