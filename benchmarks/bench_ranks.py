"""The timeline SFT on one process and data-parallel on N ranks (`pipeline.ranks`, torchrun). ML-100K.

Both runs start from the same base folders (through sft-align) and train the default next-negative
SFT; the ranks split every batch and sum their gradients (`negrec.train.ranks`), so the table shows
what the split costs or saves in time, and that the training is the same: the validation curve,
the loss curve and the weights' largest difference against how far training moved them.

    python benchmarks/bench_ranks.py [--ranks 2] [--epochs 12] [--fresh]
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
RUNS = ROOT / "runs" / "bench_ranks"


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12, help="sft_next.epochs (the default run's 12)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the base folders")
    args = ap.parse_args()
    base = RUNS / "base"
    if args.fresh:
        shutil.rmtree(RUNS, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    print(f"base folders: {rerun_from_base(base, base, CONFIG, ['pipeline.stop_after=sft-align', 'pipeline.ranks=1'])} s")
    rows, runs = [], {}
    for ranks in (1, args.ranks):
        run = runs[ranks] = RUNS / f"ranks{ranks}"
        shutil.rmtree(run, ignore_errors=True)
        seconds = rerun_from_base(base, run, CONFIG, ["pipeline.stop_after=sft-next", f"pipeline.ranks={ranks}",
                                                      f"sft_next.epochs={args.epochs}"])
        s = json.loads((run / "sft_next" / "summary.json").read_text())
        rows.append({"processes": ranks, "stage s": s["seconds"], "run s": seconds,
                     "ms/step": round(1000 * s["seconds"] / max(s["steps"], 1), 1), "steps": s["steps"],
                     "validation R@10": " ".join(f"{h['val_recall@10']:.4f}" for h in s["history"] if "val_recall@10" in h),
                     "kept epoch": s["kept_epoch"], "loss last": s["loss_curve"][-1]})
    one, many = (_weights(runs[r] / "sft_next" / "final") for r in (1, args.ranks))
    start = _weights(base / "sft_align" / "final")
    moved = max(float((one[k] - start[k]).abs().max()) for k in start if k in one)
    gap = max(float((one[k] - many[k]).abs().max()) for k in one)
    print_table(rows, f"next-negative SFT ({args.epochs} epochs) on 1 and {args.ranks} processes; weights: "
                      f"largest difference {gap:.2e}, against {moved:.2e} moved by training")
    save_result("bench_ranks", {"ranks": args.ranks, "epochs": args.epochs, "rows": rows,
                                "weights_max_diff": gap, "weights_max_moved": moved})


if __name__ == "__main__":
    main()
