"""What each part of negrec's shipped recipe adds, over training seeds, on ML-100K test users (H = 7).

Starts from the default run (`configs/ml100k.yaml` as shipped; runs/bench_ablation/base, run once,
then resumed) and retrains the timeline SFT under each variant at every seed of `--seeds` (the
default SFT itself at the seeds other than the base's 0), each in a run folder that shares the base
run's data, item encodings, semantic IDs, base model and, unless the variant drops it, alignment stage:

- no_alignment: neither the alignment stage nor its co-training (`bench_align.py`'s variant, which
  also reports what alignment teaches);
- no_feedback: every event's feedback token replaced by <|neu|>, so the model cannot tell the
  disliked history from the rest (the context-discerning ablation);
- sft_12_epochs: 12 epochs instead of 10 (the default until 5 December 2026, 20% more of the SFT's steps);

and GRPO at every seed of `--grpo-seeds`, seed s from the default SFT of seed s, kept as trained
(`grpo.select=last`, not the validation pick, so that what GRPO does to the policy shows whichever
way it falls):

- grpo_progressive: the default GRPO (progressive stages);
- grpo_plain: plain GRPO, the same steps on the final stage's context (the paper's ablation);
- grpo_beam_rank: MiniOneRec's beam-group rollouts and rank-aware reward at 5x the learning rate.

Each policy is ranked and scored on the base's test rows by negrec's own metric code
(`_common.score_on_base`). A variant is paired with the default SFT as each user's mean over the
same seeds (default - SFT variant: what the dropped part adds; GRPO variant - default: what GRPO
adds to its starts), progressive with plain GRPO likewise. A single run's CI over users does not
hold the training noise; the seed rows (default seed s - seed 0) show how large it is.

    python benchmarks/bench_ablation.py [--variants no_feedback ...] [--seeds 0 1] [--grpo-seeds 0 1 2] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import copy_stage, print_table, save_result, score_on_base  # noqa: E402
from bench_align import ALIGN, VARIANTS as ALIGN_VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_ablation"
SHARED_STAGES = ("data", "encode", "tokenize", "model")  # copied from the base run, never retrained

# name -> (stage it retrains, overrides, base folders it reuses besides SHARED_STAGES)
VARIANTS = {
    "default": ("sft-next", [], ("sft_align",)),
    "no_alignment": ("sft-next", [s for s in ALIGN_VARIANTS["no_alignment"] if s not in ALIGN], ()),
    "no_feedback": ("sft-next", ["prompt.feedback_tokens=false"], ("sft_align",)),
    "sft_12_epochs": ("sft-next", ["sft_next.epochs=12"], ("sft_align",)),
    # GRPO as trained (its last stage, not the validation pick), from the default SFT of the same seed
    "grpo_progressive": ("grpo", ["grpo.select=last"], ("sft_align", "sft_next")),
    "grpo_plain": ("grpo", ["grpo.progressive=false", "grpo.select=last"], ("sft_align", "sft_next")),
    "grpo_beam_rank": ("grpo", ["grpo.generation=beam", "grpo.learning_rate=0.0001", "rewards.weights.rank_penalty=1.0",
                                "grpo.select=last"], ("sft_align", "sft_next")),
}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")


def base_run(fresh: bool) -> Path:
    """The default run this benchmark compares against (run once, then resumed)."""
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    base = RUNS / "base"
    if fresh and RUNS.exists():
        shutil.rmtree(RUNS)
    run_pipeline(load_config(str(CONFIG)), base)
    return base


def train_variant(name: str, seed: int, base: Path) -> tuple[Path, dict]:
    """Retrain one stage under the variant's overrides and the seed, and predict with the policy it yields.

    The variant's folder starts as a copy of the base run's shared stages (a GRPO variant's SFT: the
    default SFT of the same seed); the pipeline then redoes whatever the overrides make stale (e.g.
    build-model for a prompt change) up to the variant's stage."""
    from negrec.config import load_config
    from negrec.eval import run_predict
    from negrec.io import read_json
    from negrec.pipeline import run_pipeline
    from negrec.stages import stage as stage_of

    stage, sets, reused = VARIANTS[name]
    policy = stage_of(stage).folder  # the policy is named after the folder its stage writes
    run = RUNS / f"{name}_seed{seed}"
    sft_source = base if seed == 0 else RUNS / f"default_seed{seed}"
    for part in SHARED_STAGES + reused:
        copy_stage(sft_source / part if part == "sft_next" else base / part, run / part)
    # seed 0 is the config's own: set explicitly, it would make the copied stages stale (the
    # fingerprint covers the config as written)
    seed_sets = ([f"sft_next.seed={seed}"] + ([f"grpo.seed={seed}"] if stage == "grpo" else [])) if seed else []
    raw = load_config(str(CONFIG), [*sets, *seed_sets, f"eval.policies=[{policy}]", f"pipeline.stop_after={stage}"])
    run_pipeline(raw, run)
    predictions = run / "eval" / "predictions" / f"{policy}.parquet"
    summary_path = run / policy / "summary.json"
    # a stage that trains rewrites its summary: predictions older than it are of an earlier policy
    if not predictions.exists() or predictions.stat().st_mtime < summary_path.stat().st_mtime:
        run_predict(raw, run)
    if not predictions.exists():
        raise RuntimeError(f"{name} seed {seed}: predict wrote no {predictions}")
    return predictions, _summary_view(read_json(summary_path))


def _summary_view(summary: dict) -> dict:
    """What the JSON keeps of a stage's summary: its training time (that of the run that trained it,
    also when a later call resumed it), validation curve, alignment, reward curve."""
    out = {"stage_seconds": summary.get("seconds")}
    if "history" in summary:
        out["val_recall@10_by_epoch"] = [h.get("val_recall@10") for h in summary["history"]]  # None: not validated
    if "alignment" in summary:
        out["alignment"] = {k: summary["alignment"].get(k) for k in (
            "title_to_sid", "sid_to_title", "choice_text_likelihood", "choice_sid_likelihood", "chance_choice")}
    if "log" in summary:  # GRPO: the mean reward of every 4 steps, in training order
        from negrec.io import read_jsonl

        rewards = [r["reward"] for r in read_jsonl(summary["log"]) if "reward" in r]
        out["reward_by_4_steps"] = [round(sum(rewards[i:i + 4]) / len(rewards[i:i + 4]), 4)
                                    for i in range(0, len(rewards), 4)]
    return out


def comparisons(base: Path, files: dict) -> tuple[dict, list]:
    """(rows to score, pairs): every run on its own, the seed means, and what is paired with what.

    A variant is paired with the default SFT over the seeds both ran (default - SFT variant: what the
    dropped part adds; GRPO variant - default: what GRPO adds to the SFT it starts from); progressive
    with plain GRPO over the same seeds."""
    predictions = base / "eval" / "predictions"
    paths_by_seed = {"default": {0: predictions / "sft_next.parquet"}}
    for (name, seed), path in files.items():
        paths_by_seed.setdefault(name, {})[seed] = path
    rows = {"grpo (base run, as selected)": predictions / "grpo.parquet"}
    rows.update({f"{n}_seed{s}": p for n, by_seed in paths_by_seed.items() for s, p in by_seed.items()})

    def mean_row(name: str, over: list[int]) -> str:
        """The row of `name` over the seeds `over` (one seed: its own row; more: a row added for their mean)."""
        label = f"{name}_seed{over[0]}" if len(over) == 1 else f"{name} (seeds {','.join(map(str, over))})"
        rows.setdefault(label, [paths_by_seed[name][s] for s in over])
        return label

    pairs = [(f"default_seed{s}", "default_seed0") for s in paths_by_seed["default"] if s != 0]
    for name, by_seed in paths_by_seed.items():
        if name != "default":  # GRPO seed s starts from the default SFT of seed s: both sides over the same seeds
            both = sorted(set(by_seed) & set(paths_by_seed["default"]))
            pairs.append((mean_row(name, both), mean_row("default", both)) if VARIANTS[name][0] == "grpo"
                         else (mean_row("default", both), mean_row(name, both)))
    if "grpo_progressive" in paths_by_seed and "grpo_plain" in paths_by_seed:
        both = sorted(set(paths_by_seed["grpo_progressive"]) & set(paths_by_seed["grpo_plain"]))
        pairs.append((mean_row("grpo_progressive", both), mean_row("grpo_plain", both)))
    return rows, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=[n for n in VARIANTS if n != "default"],
                    choices=[n for n in VARIANTS if n != "default"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds of the SFT variants")
    ap.add_argument("--grpo-seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds of the GRPO variants")
    ap.add_argument("--fresh", action="store_true", help="delete runs/bench_ablation first")
    a = ap.parse_args()

    from negrec.cli import set_threads

    set_threads(None)
    t0 = time.time()
    base = base_run(a.fresh)
    grpo_seeds = a.grpo_seeds if any(VARIANTS[n][0] == "grpo" for n in a.variants) else []
    runs = [("default", s) for s in sorted(set(a.seeds) | set(grpo_seeds)) if s != 0]  # GRPO's starts too
    runs += [(n, s) for n in a.variants for s in (a.seeds if VARIANTS[n][0] == "sft-next" else a.grpo_seeds)]
    files, details = {}, {}
    for name, seed in runs:
        files[name, seed], details[f"{name}_seed{seed}"] = train_variant(name, seed, base)
    rows, pairs = comparisons(base, files)
    table, paired = score_on_base(base, rows, pairs, METRICS, CONFIG)
    print_table(table, "Test users, H = 7 days: each policy, and each user's mean over the seeds named")
    print_table(paired, "Paired differences a - b on the same test rows (95% CI, paired bootstrap p)")
    for name, d in details.items():
        print(f"{name}: {json.dumps(d)}")
    save_result("bench_ablation_ml100k", {
        "command": " ".join(["python", "benchmarks/bench_ablation.py", *sys.argv[1:]]), "seeds": a.seeds,
        "grpo_seeds": grpo_seeds,
        "variants": {n: {"stage": VARIANTS[n][0], "overrides": VARIANTS[n][1]} for n in ["default", *a.variants]},
        "runs": details, "table": table, "paired": paired, "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
