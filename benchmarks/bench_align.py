"""What item-level alignment teaches the tiny model, and what it adds to next-negative recall. ML-100K, H = 7.

The default run (`configs/ml100k.yaml`) trains alignment: the `sft-align` stage (title -> SID and
SID -> title in the timeline loop, 3,200 steps, then the curriculum's phases: the stepwise SID
question alone, then all three), then the timeline SFT with the same examples
co-trained, `sft_next.align_per_batch` mixed into every batch. Each variant drops a part, retrains
from the default run's base model and is paired with the default SFT policy on the same test users
(default - variant: what the dropped part adds). Reported: alignment accuracy after the alignment
stage and after the timeline SFT (title -> SID, SID -> title, 4-choice lettered and by likelihood;
chance 0.25), the stage's time, and the paired test differences.

- no_alignment: neither the stage nor the co-training (the timeline SFT from the base model);
- no_cotraining: the stage, then the timeline SFT without the alignment examples (it forgets them).

Why the default trains no lettered question (`--lettered`, the alignment stage only, no SFT): the
stage with the two lettered 4-choice tasks added to its mix (`item_repeats: 4`, so each item is
asked with 4 different distractor sets and the letters cannot be memorised), on the default 2-layer
model and on a 4-layer one, beside the default stage's own accuracy; and the SID question answered
in two steps (`choose_sid_stepwise`: the first code, then the letter) in 2,000 more steps after the
default stage. These variants train one phase (`sft_align.phases=[]`), as before the curriculum.

    python benchmarks/bench_align.py [--lettered]   # reuses runs/bench_align/base when it is there
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import copy_stage, load_result, print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_align"
ALIGN = ["pipeline.skip=[grpo-plain]", "eval.policies=[sft_next]", "pipeline.stop_after=sft-next"]
VARIANTS = {
    "no_alignment": ALIGN + ["pipeline.skip=[sft-align,grpo-plain]", "sft_next.align_weight=0"],
    "no_cotraining": ALIGN + ["sft_next.align_weight=0"],
}
LETTERED_MIX = ["pipeline.stop_after=sft-align", "sft_align.phases=[]", "sft_align.item_repeats=4",
                "sft_align.tasks=[text_to_sid,sid_to_text,choose_text,choose_sid]"]
# the same question answered in two steps (first code, then letter), trained after the default stage
STEPWISE_AFTER = ["pipeline.stop_after=sft-align", "sft_align.phases=[]", f"sft_align.init_from={RUNS / 'base' / 'sft_align' / 'final'}",
                  "sft_align.tasks=[text_to_sid,sid_to_text,choose_sid_stepwise]", "sft_align.item_repeats=2",
                  "sft_align.max_steps=2000", "sft_align.learning_rate=0.003", "sft_align.warmup_ratio=0.0"]
LETTERED = {"lettered_in_mix": LETTERED_MIX, "lettered_in_mix_4_layers": LETTERED_MIX + ["model.num_layers=4"],
            "stepwise_after_alignment": STEPWISE_AFTER}
SHARED = ("data", "encode", "tokenize", "model")  # the base run's, never retrained
REUSED = {"no_cotraining": ("sft_align",)}  # the base run's alignment stage, the same config
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
ALIGNMENT = ("title_to_sid", "sid_to_title", "choose_text", "choose_sid", "choice_text_likelihood", "choice_sid_likelihood",
             "choose_sid_stepwise", "stepwise_first_code")


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


def seeded_run(name: str, base: Path, parts) -> Path:
    """RUNS/name with the base run's `parts` copied in (again when the base redid one): the pipeline retrains only what is stale."""
    run = RUNS / name
    for part in parts:
        copy_stage(base / part, run / part)
    return run


def run_variant(name: str, base: Path) -> tuple[Path, dict]:
    from negrec.config import load_config
    from negrec.eval import run_predict
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    run = seeded_run(name, base, SHARED + REUSED.get(name, ()))
    raw = load_config(str(CONFIG), VARIANTS[name])
    t0 = time.time()
    run_pipeline(raw, run)
    run_predict(raw, run)
    sft = read_json(run / "sft_next" / "summary.json")
    info = {"overrides": VARIANTS[name], "seconds": round(time.time() - t0, 1), **stage_info(run, sft)}
    return run / "eval" / "predictions" / "sft_next.parquet", info


def run_lettered(name: str, base: Path) -> dict:
    """The alignment stage alone under `LETTERED[name]` (a stale copied model is rebuilt)."""
    from negrec.config import load_config
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    run = seeded_run(name, base, SHARED)
    run_pipeline(load_config(str(CONFIG), LETTERED[name]), run)
    return {"overrides": LETTERED[name], **align_info(read_json(run / "sft_align" / "summary.json"))}


def align_info(align: dict) -> dict:
    """The alignment stage's time, loss curve and closing accuracy from its summary."""
    return {"align_seconds": align["seconds"], "align_steps": align["steps"], "align_loss_curve": align["loss_curve"],
            "alignment_after_align_stage": _alignment_view(align["alignment"])}


def _alignment_view(a: dict) -> dict:
    """The `ALIGNMENT` figures a stage's summary holds (older summaries lack the stepwise ones)."""
    return {k: a[k] for k in ALIGNMENT if k in a}


def lettered_table(results: dict) -> None:
    fmt = "{title_to_sid:.2f} / {sid_to_title:.2f} / {choice_sid_likelihood:.2f}, {choice_text_likelihood:.2f} / {choose_sid:.2f}, {choose_text:.2f}"
    print_table([{"variant": n, "align s": r["align_seconds"],
                  "after the alignment stage: title->SID / SID->title / 4-choice by likelihood / lettered":
                  fmt.format(**r["alignment_after_align_stage"]),
                  "code then letter (first code right)": _stepwise_cell(r["alignment_after_align_stage"])}
                 for n, r in results.items()],
                "The lettered 4-choice trained in the alignment stage (chance 0.25)")


def _stepwise_cell(a: dict) -> str:
    if "choose_sid_stepwise" not in a:
        return "-"
    return f"{a['choose_sid_stepwise']:.2f} ({a['stepwise_first_code']:.2f})" if "stepwise_first_code" in a else \
        f"{a['choose_sid_stepwise']:.2f}"


def lettered_only(base: Path, previous: dict) -> None:
    """`--lettered`: the base run's alignment stage and the `LETTERED` rows; the JSON's other rows are kept."""
    from negrec.config import load_config
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    run_pipeline(load_config(str(CONFIG), ["pipeline.stop_after=sft-align"]), base)
    lettered = {"default": align_info(read_json(base / "sft_align" / "summary.json")),
                **{name: run_lettered(name, base) for name in LETTERED}}
    lettered_table(lettered)
    kept = {k: v for k, v in previous.items() if k in ("command", "variants")}
    save_result("bench_align_ml100k", {**kept, "variants_when": previous.get("variants_when", previous.get("when")),
                                       "lettered": lettered, "lettered_when": time.strftime("%Y-%m-%d %H:%M:%S")})


def stage_info(run: Path, sft: dict) -> dict:
    """The alignment stage's time and accuracy (when it ran) and the timeline SFT's."""
    from negrec.io import read_json

    # an epoch the SFT did not validate (sft_next.val_every) reads None
    out = {"sft_seconds": sft["seconds"],
           "alignment_after_timeline_sft": _alignment_view(sft["alignment"]),
           "val_recall@10_by_epoch": [h.get("val_recall@10") for h in sft["history"]]}
    if (run / "sft_align" / "summary.json").exists():
        out.update(align_info(read_json(run / "sft_align" / "summary.json")))
    return out


def main() -> None:
    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lettered", action="store_true", help="only the lettered rows; the JSON's other rows are kept")
    a = ap.parse_args()
    set_threads(None)
    base = RUNS / "base"
    previous = load_result("bench_align_ml100k")
    if a.lettered:
        return lettered_only(base, previous)
    run_pipeline(load_config(str(CONFIG), []), base)  # up to date when it is already there
    per_row = scorer(base)
    reference = per_row(base / "eval" / "predictions" / "sft_next.parquet")
    results = {"default": stage_info(base, read_json(base / "sft_next" / "summary.json"))}
    for name in VARIANTS:
        path, info = run_variant(name, base)
        results[name] = {**info, "default_minus_variant": paired(reference, per_row(path))}
    fmt = "{title_to_sid:.2f} / {sid_to_title:.2f} / {choice_sid_likelihood:.2f}, {choice_text_likelihood:.2f} / {choose_sid:.2f}"
    rows = [{"variant": n, "align s": r.get("align_seconds", 0), "SFT s": r["sft_seconds"],
             "after timeline SFT: title->SID / SID->title / 4-choice by likelihood / lettered": fmt.format(**r["alignment_after_timeline_sft"]),
             **{f"default - variant {m} [CI], p": "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}], {p:.3g}".format(**r["default_minus_variant"][m])
                if "default_minus_variant" in r else "(reference)" for m in ("recall@10_h7", "fhr@20_h7", "recall@50_h7")}}
            for n, r in results.items()]
    print_table(rows, "Alignment in the default run, and what each part adds (default - variant, same test users, 95% CI, p)")
    save_result("bench_align_ml100k", {"command": "python benchmarks/bench_align.py", "variants": results,
                                       **{k: previous[k] for k in ("lettered", "lettered_when") if k in previous}})


if __name__ == "__main__":
    main()
