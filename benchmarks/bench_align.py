"""What item-level alignment teaches the tiny model, and what it does to next-negative recall. ML-100K, H = 7.

From the default run (alignment off): each variant turns `sft-align` on (the timeline-loop stage of
`configs/ml100k.yaml`: title -> SID and SID -> title, 3,200 steps), retrains the timeline SFT from
its result, and is paired with the default SFT policy on the same test users. Reported: alignment
accuracy after the alignment stage and after the timeline SFT (title -> SID, SID -> title, 4-choice
lettered and by likelihood; chance 0.25), the stage's time, and the paired test differences.

- align_stage: alignment, then the timeline SFT from it;
- align_stage_cotrain: the same, with the alignment tasks co-trained in the timeline SFT
  (`sft_next.align_weight: 1`), so that it is not forgotten.

    python benchmarks/bench_align.py
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_align"
ALIGN = ["pipeline.skip=[grpo-plain]", "eval.policies=[sft_next]", "pipeline.stop_after=sft-next"]
VARIANTS = {
    "align_stage": ALIGN,
    "align_stage_cotrain": ALIGN + ["sft_next.align_weight=1.0", "sft_next.tasks=[text_to_sid,sid_to_text]"],
}
SHARED = ("data", "encode", "tokenize", "model")  # the base run's, never retrained
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
ALIGNMENT = ("title_to_sid", "sid_to_title", "choose_text", "choose_sid", "choice_text_likelihood", "choice_sid_likelihood")


def scorer(base: Path):
    """`prediction file -> per-row test metrics` against the base run's targets (log and targets read once)."""
    import pandas as pd

    from negrec.data import Prepared
    from negrec.eval.metrics import MetricsConfig, evaluate_predictions

    mcfg = MetricsConfig(ks=[5, 10, 20, 50], horizons=[7], main_horizon=7, fhr_k=20)  # the default run's
    log = Prepared.load(base / "data").interactions
    targets = pd.read_parquet(base / "eval" / "targets.parquet")
    return lambda path: evaluate_predictions(pd.read_parquet(path), targets, log, mcfg, per_row=True)["per_row"]


def paired(a, b) -> dict:
    from negrec.eval.stats import paired_bootstrap

    return {m: {k: round(v, 4) if isinstance(v, float) else v for k, v in
                paired_bootstrap(a[m].to_numpy(), b[m].to_numpy(), a["user_id"].to_numpy()).items()
                if k in ("diff", "lo", "hi", "p")} for m in METRICS}


def run_variant(name: str, base: Path) -> tuple[Path, dict]:
    from negrec.config import load_config
    from negrec.eval import run_predict
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    run = RUNS / name
    for part in SHARED:
        if not (run / part).exists():
            shutil.copytree(base / part, run / part)
    raw = load_config(str(CONFIG), VARIANTS[name])
    t0 = time.time()
    run_pipeline(raw, run)
    run_predict(raw, run)
    align, sft = read_json(run / "sft_align" / "summary.json"), read_json(run / "sft_next" / "summary.json")
    return run / "eval" / "predictions" / "sft_next.parquet", {
        "overrides": VARIANTS[name], "seconds": round(time.time() - t0, 1), "align_seconds": align["seconds"],
        "align_steps": align["steps"], "align_loss_curve": align["loss_curve"],
        "alignment_after_align_stage": {k: align["alignment"][k] for k in ALIGNMENT},
        "alignment_after_timeline_sft": {k: sft["alignment"][k] for k in ALIGNMENT},
        "val_recall@10_by_epoch": [h["val_recall@10"] for h in sft["history"]]}


def main() -> None:
    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    set_threads(None)
    base = RUNS / "base"
    run_pipeline(load_config(str(CONFIG), []), base)
    per_row = scorer(base)
    reference = per_row(base / "eval" / "predictions" / "sft_next.parquet")
    results = {}
    for name in VARIANTS:
        path, info = run_variant(name, base)
        results[name] = {**info, "minus_default_sft": paired(per_row(path), reference)}
    rows = [{"variant": n, "align s": r["align_seconds"],
             "after align: title->SID / 4-choice SID, text by likelihood": "{title_to_sid:.2f} / {choice_sid_likelihood:.2f}, {choice_text_likelihood:.2f}".format(**r["alignment_after_align_stage"]),
             "after timeline SFT": "{title_to_sid:.2f} / {choice_sid_likelihood:.2f}, {choice_text_likelihood:.2f}".format(**r["alignment_after_timeline_sft"]),
             **{f"{m} diff [CI], p": "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}], {p:.3g}".format(**r["minus_default_sft"][m])
                for m in ("recall@10_h7", "fhr@20_h7", "recall@50_h7")}} for n, r in results.items()]
    print_table(rows, "Alignment, then the timeline SFT - the default SFT (no alignment), same test users (95% CI, p)")
    save_result("bench_align_ml100k", {"command": "python benchmarks/bench_align.py", "variants": results})


if __name__ == "__main__":
    main()
