"""What the default run's training budget buys, on ML-100K test users (H = 7), with paired 95% CIs.

The default recipe is sized to the 10-minute run (`configs/ml100k.yaml`): 5,200 alignment steps and
10 epochs of timeline SFT at lr 5e-3 (12 epochs until the night of 5 December 2026; 6,200 steps and
3e-3 before that day, when the committed JSON was written: its `sft_lr_5e-3` variant is today's rate). Starting from a finished default run
(`--base`, or one made under runs/bench_budget/base), each variant retrains the timeline SFT in its
own folder, sharing the base's data, item encodings, semantic IDs and base model, and its SFT policy
is paired with the base's on the same test users:

- sft_24_epochs: 2.4 times the epochs (is the default SFT converged?);
- sft_lr_3e-3: the same epochs at the rate before 5 December (what the higher default rate buys);
- no_alignment: neither the alignment stage nor the co-trained alignment examples (the run's
  fastest recipe: what alignment costs in time and gives in recall), then progressive and plain
  GRPO from that SFT policy (`no_alignment_grpo`, `no_alignment_grpo_plain`: paired with their SFT
  start and with each other too);
- no_alignment_seed1, no_alignment_seed2: the same two GRPO runs from the same SFT policy under
  other GRPO seeds (sampled groups, row order): how far a GRPO rerun moves its gain.

Reported: each variant's SFT time, validation curve and alignment after the SFT, beside the base's;
the paired differences variant - base at Recall@5/10/50 and FHR@20.

    python benchmarks/bench_budget.py [--base runs/ml100k] [--variants no_alignment ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import copy_stage, print_table, save_result, score_on_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_budget"
SHARED_STAGES = ("data", "encode", "tokenize", "model")  # copied from the base run, never retrained
NO_GRPO = "pipeline.skip=[grpo, grpo-plain]"
NO_ALIGN = ["pipeline.skip=[sft-align]", "sft_next.align_weight=0"]
GRPOS = ["grpo", "grpo_plain"]
# name -> (config overrides, the run whose stages it starts from and which, the policies it yields;
# a GRPO row is also paired with the SFT row it starts from)
VARIANTS = {
    "sft_24_epochs": ([NO_GRPO, "sft_next.epochs=24"], ("base", SHARED_STAGES + ("sft_align",)), ["sft_next"]),
    "sft_lr_3e-3": ([NO_GRPO, "sft_next.learning_rate=0.003"], ("base", SHARED_STAGES + ("sft_align",)), ["sft_next"]),
    "no_alignment": (NO_ALIGN, ("base", SHARED_STAGES), ["sft_next", *GRPOS]),
    "no_alignment_seed1": ([*NO_ALIGN, "grpo.seed=1"], ("no_alignment", SHARED_STAGES + ("sft_next",)), GRPOS),
    "no_alignment_seed2": ([*NO_ALIGN, "grpo.seed=2"], ("no_alignment", SHARED_STAGES + ("sft_next",)), GRPOS),
}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")


def base_run(base: Path | None) -> Path:
    """The finished default run the variants start from (made under RUNS/base when not given)."""
    if base is not None:
        return base
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    run_pipeline(load_config(str(CONFIG)), RUNS / "base")
    return RUNS / "base"


def train_variant(name: str, base: Path) -> tuple[dict[str, Path], dict]:
    """Retrain the timeline SFT (and GRPO, when the variant yields it) under the variant's overrides;
    predict with each policy. ({row name: predictions file}, details)."""
    from negrec.config import load_config
    from negrec.eval import run_predict
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    sets, (source, parts), policies = VARIANTS[name]
    run, source = RUNS / name, base if source == "base" else RUNS / source
    for part in parts:
        copy_stage(source / part, run / part)
    last = "grpo-plain" if "grpo_plain" in policies else "grpo" if "grpo" in policies else "sft-next"
    raw = load_config(str(CONFIG), [*sets, f"eval.policies=[{', '.join(policies)}]", f"pipeline.stop_after={last}"])
    run_pipeline(raw, run)  # a stage already done in the variant's folder is not trained again
    details = sft_view(read_json(run / "sft_next" / "summary.json"))
    run_predict(raw, run)
    files = {row_name(name, p): run / "eval" / "predictions" / f"{p}.parquet" for p in policies}
    for p in set(policies) & set(GRPOS):
        g = read_json(run / p / "summary.json")
        details[p] = {"seconds": g.get("seconds"), "kept": g["kept"]["name"],
                      "validation": {v["name"]: v["val_recall@10"] for v in g.get("validation", [])}}
    return files, details


def row_name(variant: str, policy: str) -> str:
    return variant if policy == "sft_next" else f"{variant}_{policy}"


def grpo_pairs(variant: str) -> list[tuple[str, str]]:
    """A variant's GRPO rows against the SFT row they start from, and progressive against plain."""
    _, (source, parts), policies = VARIANTS[variant]
    start = variant if "sft_next" in policies else source
    out = [(row_name(variant, p), start) for p in policies if p in GRPOS]
    return out + ([(row_name(variant, "grpo"), row_name(variant, "grpo_plain"))] if set(GRPOS) <= set(policies) else [])


def sft_view(summary: dict) -> dict:
    """What the table shows of an SFT summary: time, validation curve, kept epoch, alignment."""
    out = {"sft_seconds": summary.get("seconds"), "kept_epoch": summary.get("kept_epoch"),
           "val_recall@10_by_epoch": {h["epoch"]: h["val_recall@10"] for h in summary.get("history", [])
                                      if "val_recall@10" in h}}
    if "alignment" in summary:
        out["title_to_sid_after_sft"] = summary["alignment"].get("title_to_sid")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, default=None, help="a finished default run (configs/ml100k.yaml)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = ap.parse_args()

    from negrec.cli import set_threads
    from negrec.io import read_json

    set_threads(None)
    t0 = time.time()
    base = base_run(a.base)
    files, details = {}, {"base": sft_view(read_json(base / "sft_next" / "summary.json"))}
    details["base"]["align_seconds"] = read_json(base / "sft_align" / "summary.json").get("seconds")
    # a variant that starts from another one's stages runs after it (its start is trained first)
    a.variants = list(dict.fromkeys(v for name in a.variants for v in (VARIANTS[name][1][0], name) if v != "base"))
    for name in a.variants:
        made, details[name] = train_variant(name, base)
        files.update(made)
    # each row against the base's SFT policy; the GRPO rows also against their start and each other
    pairs = [(n, "sft_next") for n in files] + [pair for v in a.variants for pair in grpo_pairs(v)]
    rows, paired = score_on_base(base, {"sft_next": base / "eval" / "predictions" / "sft_next.parquet", **files},
                                 pairs, METRICS, CONFIG)
    print_table(rows, "Test users, H = 7 days: the base run's SFT policy (sft_next) and each variant's")
    print_table(paired, "Paired differences variant - base on the same test rows (95% CI, paired bootstrap p)")
    for name, d in details.items():
        print(f"{name}: {json.dumps(d)}")
    save_result("bench_budget_ml100k", {
        "command": " ".join(["python", "benchmarks/bench_budget.py", *sys.argv[1:]]),
        "variants": {n: {"overrides": VARIANTS[n][0], **details[n]} for n in a.variants}, "base": details["base"],
        "base_run": str(base),
        "table": rows, "paired": paired, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
