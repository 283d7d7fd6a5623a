"""What each part of negrec's recipe adds, on ML-100K test users (H = 7), with paired 95% CIs.

Starts from a base run (`configs/ml100k.yaml` with the 6-epoch timeline SFT it had before 12 epochs
became the default: `BASE_SETS`; run once under runs/bench_ablation/base, then resumed) and trains
one variant per row, each in its own run folder that shares the base run's data, item encodings,
semantic IDs and base model:

- sft_seed1, sft_seed2: the default timeline SFT under other seeds (batch order, dropout): the
  spread between reruns, which the bootstrap over users does not see;
- sft_12_epochs: twice the base's epochs (its validation curve was still rising at epoch 6): today's default;
- sft_no_feedback: the timeline SFT with every event's feedback token replaced by <|neu|>, so the
  model cannot tell negative from positive history (the context-discerning ablation);
- sft_align_cotrain: the timeline SFT co-trained with the four item-level alignment tasks
  (title -> SID, SID -> title, both 4-choice forms); its alignment accuracy is reported too;
- grpo_beam_rank: GRPO from the base SFT with MiniOneRec's beam-group rollouts and the rank-aware
  reward at a 5x learning rate (the setting under which the reward curve rises).

Every variant's predictions are scored beside the base run's policies on the base's test rows by
negrec's own metric code (`_common.score_on_base`), which gives the paired differences (variant -
reference, same test rows).

    python benchmarks/bench_ablation.py [--variants sft_no_feedback ...] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result, score_on_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_ablation"
SHARED_STAGES = ("data", "encode", "tokenize", "model")  # copied from the base run, never retrained
# the base recipe: the default config as it was before 12 epochs became the default (sft_12_epochs),
# validated after every epoch as it was then (the default now validates every second one)
BASE_SETS = ["sft_next.epochs=6", "sft_next.patience=2", "sft_next.val_every=1"]

# name -> (stage it retrains, the policy folder it yields, config overrides, reference rows compared)
VARIANTS = {
    # the default recipe again under other training seeds: how far a rerun moves the figures
    "sft_seed1": ("sft-next", "sft_next", ["sft_next.seed=1"], ["sft_next"]),
    "sft_seed2": ("sft-next", "sft_next", ["sft_next.seed=2"], ["sft_next"]),
    "sft_12_epochs": ("sft-next", "sft_next", ["sft_next.epochs=12", "sft_next.patience=3"], ["sft_next"]),
    "sft_no_feedback": ("sft-next", "sft_next", ["prompt.feedback_tokens=false"], ["sft_next"]),
    "sft_align_cotrain": ("sft-next", "sft_next", [
        "sft_next.align_weight=1.0", "sft_next.tasks=[text_to_sid,sid_to_text,choose_text,choose_sid]"], ["sft_next"]),
    "grpo_beam_rank": ("grpo", "grpo", ["grpo.generation=beam", "grpo.learning_rate=0.0001",
                                        "rewards.weights.rank_penalty=1.0"], ["grpo", "sft_next"]),
}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")


def base_run(fresh: bool) -> Path:
    """The default run this benchmark compares against (run once, then resumed)."""
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    base = RUNS / "base"
    if fresh and RUNS.exists():
        shutil.rmtree(RUNS)
    run_pipeline(load_config(str(CONFIG), BASE_SETS), base)
    return base


def train_variant(name: str, base: Path) -> tuple[Path, dict]:
    """Retrain one stage under the variant's overrides and predict with the policy it yields.

    The variant's folder starts as a copy of the base run's shared stages; the pipeline then redoes
    whatever the overrides make stale (e.g. build-model for a prompt change) up to the variant's stage."""
    from negrec.config import load_config
    from negrec.eval import run_predict
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline

    stage, policy, sets, _ = VARIANTS[name]
    run = RUNS / name
    for part in SHARED_STAGES + (("sft_next",) if stage == "grpo" else ()):
        if not (run / part).exists():
            shutil.copytree(base / part, run / part)
    raw = load_config(str(CONFIG), [*BASE_SETS, *sets, f"eval.policies=[{policy}]", f"pipeline.stop_after={stage}"])
    t0 = time.time()
    run_pipeline(raw, run)
    seconds = round(time.time() - t0, 1)
    run_predict(raw, run)
    summary = read_json(run / policy / "summary.json")
    return run / "eval" / "predictions" / f"{policy}.parquet", {"train_seconds": seconds, **_summary_view(summary)}


def _summary_view(summary: dict) -> dict:
    """What the table shows of a stage's summary: validation curve, alignment, reward curve."""
    out = {}
    if "history" in summary:
        out["val_recall@10_by_epoch"] = [h.get("val_recall@10") for h in summary["history"]]  # None: not validated
    if "alignment" in summary:
        out["alignment"] = {k: summary["alignment"][k] for k in (
            "title_to_sid", "sid_to_title", "choose_text", "choose_sid", "choice_text_likelihood",
            "choice_sid_likelihood", "chance_choice")}
    if "log" in summary:  # GRPO: the mean reward of every 4 steps, in training order
        from negrec.io import read_jsonl

        rewards = [r["reward"] for r in read_jsonl(summary["log"]) if "reward" in r]
        out["reward_by_4_steps"] = [round(sum(rewards[i:i + 4]) / len(rewards[i:i + 4]), 4)
                                    for i in range(0, len(rewards), 4)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--fresh", action="store_true", help="delete runs/bench_ablation first")
    a = ap.parse_args()

    from negrec.cli import set_threads

    set_threads(None)
    t0 = time.time()
    base = base_run(a.fresh)
    files, details = {}, {}
    for name in a.variants:
        files[name], details[name] = train_variant(name, base)
    # the base run's policies and every variant, scored on the base's test rows; each variant against its references
    refs = {m: base / "eval" / "predictions" / f"{m}.parquet" for m in ("sft_next", "grpo")}
    pairs = [(name, ref) for name in files for ref in VARIANTS[name][3]]
    rows, paired = score_on_base(base, {**refs, **files}, pairs, METRICS, CONFIG)
    print_table(rows, "Test users, H = 7 days: the base run's policies and each variant")
    print_table(paired, "Paired differences a - b on the same test rows (95% CI, paired bootstrap p)")
    for name, d in details.items():
        print(f"{name}: {json.dumps(d)}")
    save_result("bench_ablation_ml100k", {
        "command": " ".join(["python", "benchmarks/bench_ablation.py", *sys.argv[1:]]), "base_overrides": BASE_SETS,
        "variants": {n: {"stage": VARIANTS[n][0], "overrides": VARIANTS[n][2], **details[n]} for n in files},
        "table": rows, "paired": paired, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
