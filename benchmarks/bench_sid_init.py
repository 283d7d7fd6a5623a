"""SID token embedding init: text_mean vs centroid vs random, after the same short alignment SFT.

For each `model.sid_init`, a copy of an ML-100K run folder (data + tokenize) gets a fresh model
(`negrec build-model`) and the same alignment SFT (`negrec sft --task align`, fixed steps, the same
seeded subset of `--max-items` items), then reports the training loss at the start, a quarter of
the way and at the end, and the alignment accuracies of `negrec.llm.evaluation.alignment_accuracy` on
the taught items. The subset keeps the run short enough for the accuracies to leave chance on the
tiny from-scratch model (over all 1,682 items they stay at chance for an epoch), so init
differences can show. Prints a table; writes benchmarks/results/bench_sid_init.json.

    python benchmarks/bench_sid_init.py --from-run runs/ml100k [--steps 150] [--max-items 100]
    NEGREC_THREADS=2 python benchmarks/bench_sid_init.py --from-run runs/ml100k --steps 40 --max-items 50 --tag smollm2 \
        --set model.source=smollm2 --set sft_align.batch_size=8 --set sft_align.learning_rate=5e-4
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-run", default=str(ROOT / "runs" / "ml100k"), help="run folder with data/ and tokenize/")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml100k.yaml"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--max-items", type=int, default=100, help="items taught and asked about (0 = all)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tag", default="", help="suffix of the run folders and the JSON, e.g. smollm2")
    a = ap.parse_args()

    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.llm import run_build_model
    from negrec.train import run_sft

    set_threads(None)
    src = Path(a.from_run)
    rows = []
    for init in ("text_mean", "centroid", "random"):
        run = ROOT / "runs" / "bench_sid_init" / (f"{a.tag}_{init}" if a.tag else init)
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        for part in ("data", "tokenize"):
            shutil.copytree(src / part, run / part)
        raw = load_config(a.config, [*a.set, f"model.sid_init={init}", f"sft_align.max_steps={a.steps}", "sft_align.phases=[]",
                                     f"sft_align.max_items={a.max_items}",
                                     f"sft_align.eval_items={a.max_items or 200}"])
        run_build_model(raw, run)
        s = run_sft(raw, run, task="align")
        al = s["alignment"]
        curve = s["loss_curve"]
        rows.append({"sid_init": init, "loss first": curve[0], "loss 1/4": curve[len(curve) // 4], "loss last": curve[-1],
                     "title->SID": al["title_to_sid"], "SID->title": al["sid_to_title"],
                     "4-choice text (lik.)": al["choice_text_likelihood"], "4-choice SID (lik.)": al["choice_sid_likelihood"], "valid": al["valid_sid_rate"],
                     "seconds": s["seconds"]})
    print_table(rows, f"alignment SFT, {a.steps} steps on {a.max_items or 'all'} items from each init ({a.config}, {' '.join(a.set) or 'tiny model'})")
    save_result(f"bench_sid_init_{a.tag}" if a.tag else "bench_sid_init", {"settings": vars(a), "table": rows})


if __name__ == "__main__":
    main()
