"""What the training precision (`model.dtype`) does to the tiny model's alignment. ML-100K, CPU.

On an H200 (4 December 2026) the default run trained in pure bf16 (`model.dtype: auto` then loaded
the weights in bf16 on CUDA): its alignment stage ended at SID -> title 0.14 where the same stage in
fp32 on a CPU reaches 0.98. Pure bf16 weights lose AdamW's small updates: a step moves a weight by
about the learning rate at most (2e-3 here, less as the cosine schedule decays), and bf16 keeps 8
significant bits, so a norm weight near 1 (bf16 spacing 0.004 below 1, 0.008 above) moves only on
the largest steps and the late, small ones round to nothing. `auto` now keeps fp32 weights in
training and runs the forward and backward in bf16 autocast on CUDA (`bf16-mixed`).

This benchmark trains the alignment stage's first phase (title -> SID and SID -> title, the default
3,200 steps of 32) from the default run's base folders under each precision on the CPU, where
`bf16-mixed` uses the CPU's bf16 autocast: the same arithmetic question without a GPU. build-model
reruns under each (it saves the model in the named dtype, as it does in bf16 on CUDA under auto).

    python benchmarks/bench_precision.py [--steps 3200]   # reuses runs/bench_precision/base when there
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, rerun_from_base, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_precision"
PRECISIONS = ("float32", "bfloat16", "bf16-mixed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3200, help="steps of the alignment stage's first phase")
    ap.add_argument("--fresh", action="store_true", help="rebuild the base run's data, encode and tokenize")
    args = ap.parse_args()
    base = RUNS / "base"
    if args.fresh:
        shutil.rmtree(RUNS, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)  # data, encode and tokenize; build-model reruns under each precision
    print(f"base folders: {rerun_from_base(base, base, CONFIG, ['pipeline.stop_after=tokenize'])} s")
    rows = []
    for dtype in PRECISIONS:
        run = RUNS / dtype
        shutil.rmtree(run, ignore_errors=True)  # a fresh copy of the base folders
        overrides = ["pipeline.stop_after=sft-align", "sft_align.phases=[]", f"sft_align.max_steps={args.steps}",
                     f"model.dtype={dtype}"]
        seconds = rerun_from_base(base, run, CONFIG, overrides)
        summary = json.loads((run / "sft_align" / "summary.json").read_text())
        a = summary["alignment"]
        rows.append({"model.dtype": dtype, "title->SID": a["title_to_sid"], "SID->title": a["sid_to_title"],
                     "4-choice SID (likelihood)": a["choice_sid_likelihood"], "loss last": summary["loss_curve"][-1],
                     "stage s": summary["seconds"], "ms/step": round(1000 * summary["seconds"] / max(summary["steps"], 1), 1),
                     "run s": seconds})
    print_table(rows, f"alignment phase 1 ({args.steps} steps) on the CPU by training precision "
                      f"(chance: title -> SID {a['chance_title_to_sid']:.4f}, 4-choice 0.25)")
    save_result("bench_precision", {"steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
