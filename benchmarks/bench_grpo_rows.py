"""Which rows GRPO should train on: the train split's cuts (`grpo.rows: train`, whose futures the
timeline SFT with `fit_until: test` already fit) or the SFT validation users' held-out rows
(`grpo.rows: sft_validation`, the only futures before the test cut the SFT never saw), at the
default and a 5x learning rate and over GRPO seeds. Each variant re-runs GRPO from the same SFT
policy of the default ML-100K run and is paired with that SFT start on the same test users.

    python benchmarks/bench_grpo_rows.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import paired_rows, print_table, rerun_from_base, save_result, trained_grpo_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_grpo_rows"
VARIANTS = {  # name -> overrides of the default config (the base run is the default itself)
    "train_lr2e-5": ["grpo.select=last"],
    "train_lr1e-4": ["grpo.select=last", "grpo.learning_rate=0.0001"],
    "heldout_lr2e-5": ["grpo.select=last", "grpo.rows=sft_validation"],
    "heldout_lr1e-4_seed0": ["grpo.select=last", "grpo.rows=sft_validation", "grpo.learning_rate=0.0001"],
    "heldout_lr1e-4_seed1": ["grpo.select=last", "grpo.rows=sft_validation", "grpo.learning_rate=0.0001", "grpo.seed=1"],
}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")


def run_variant(name: str, base: Path) -> dict:
    """GRPO (and what reads it) re-run under the variant's overrides in a copy of the base run."""
    from negrec.io import read_jsonl

    run = RUNS / name
    seconds = rerun_from_base(base, run, CONFIG, VARIANTS[name])
    summary = trained_grpo_summary(run)
    rewards = [r["reward"] for r in read_jsonl(run / "grpo" / "log.jsonl") if "reward" in r]
    paired = paired_rows(run, "grpo", "sft_next", METRICS)
    return {"overrides": VARIANTS[name], "seconds": seconds, "train_rows": summary["train_rows"],
            "reward_by_4_steps": [round(sum(rewards[i:i + 4]) / len(rewards[i:i + 4]), 3) for i in range(0, len(rewards), 4)],
            "grpo_minus_sft": paired}


def main() -> None:
    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    set_threads(None)
    base = RUNS / "base"
    run_pipeline(load_config(str(CONFIG), []), base)
    results = {name: run_variant(name, base) for name in VARIANTS}
    rows = [{"variant": n, "rows": r["train_rows"], **{f"{m} diff [CI], p": "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}], {p:.3g}".format(**r["grpo_minus_sft"][m])
                                                     for m in METRICS if m in r["grpo_minus_sft"]}}
            for n, r in results.items()]
    print_table(rows, "GRPO - its SFT start on the same test users (H = 7; 95% CI, paired bootstrap p)")
    for n, r in results.items():
        print(f"{n}: mean reward per 4 steps {r['reward_by_4_steps']}")
    save_result("bench_grpo_rows_ml100k", {"command": "python benchmarks/bench_grpo_rows.py", "variants": results})


if __name__ == "__main__":
    main()
