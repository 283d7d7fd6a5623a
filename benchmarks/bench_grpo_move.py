"""Does GRPO move the policy, and where does moving it take held-out recall? ML-100K, H = 7.

Every variant re-runs GRPO from the SFT policy of the default run (learning rate, steps and
rewards vary) and is paired with that SFT start on the same test users. Besides the paired
differences it reports how far the policy moved: the final KL to the SFT reference, the share of
each user's top-10 the SFT also has, and the distinct items over all users' top-10 lists; and the
sampled groups' exact future-negative hit rate over training (the reward that matters).

`grpo.select: last` everywhere but the `*_select` row, so each row shows what GRPO itself did;
the `_select` row is the same run under the default `grpo.select: validation`.

Sanity checks first, from the same SFT policy: GRPO with a reward it can learn (the SID's first
code is one fixed code), to show the machinery raises a learnable reward; and the exact-hit reward
on 16 fixed training prompts (sampled and beam groups), to show whether GRPO can raise the reward
that matters where prompts repeat.

    python benchmarks/bench_grpo_move.py [--variants NAME ...] [--checks-only]
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_result, paired_rows, print_table, rerun_from_base, save_result, trained_grpo_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"
RUNS = ROOT / "runs" / "bench_grpo_move"
HIT = "rewards.weights={future_neg_hit: 1.0, validity: 1.0}"  # the exact hit alone (no CoNRec, no prefix credit)
LAST = "grpo.select=last"


def stages(steps: int) -> str:
    """The default three progressive stages, `steps` each."""
    return ("grpo.stages=[{name: neg_recent, context_mix: 0.0, neg_window_days: 3, max_steps: %d, beta: 0.04},"
            "{name: neg_all, context_mix: 0.0, neg_window_days: null, max_steps: %d, beta: 0.04},"
            "{name: neg_pos, context_mix: 1.0, neg_window_days: null, max_steps: %d, beta: 0.04}]") % (steps, steps, steps)


BIG = ["grpo.learning_rate=0.0005", stages(32), "grpo.per_device_train_batch_size=64"]  # 96 steps x 8 prompts
VARIANTS = {  # name -> overrides of the default config
    "default": [LAST],
    "hit_lr1e-4": [LAST, HIT, "grpo.learning_rate=0.0001"],
    "hit_lr2e-4_48steps": [LAST, HIT, "grpo.learning_rate=0.0002", stages(16)],
    "hit_lr5e-4_96steps": [LAST, HIT, *BIG],
    "default_rewards_lr5e-4_96steps": [LAST, *BIG],
    "hit_lr5e-4_96steps_select": [HIT, *BIG],
}
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")


def top10_moves(run: Path) -> tuple[float, int]:
    """(mean share of a user's GRPO top-10 that the SFT top-10 also holds, distinct items in GRPO top-10s)."""
    import pandas as pd

    lists = {}
    for policy in ("grpo", "sft_next"):
        df = pd.read_parquet(run / "eval" / "predictions" / f"{policy}.parquet")
        lists[policy] = df[df["rank"] < 10].groupby("user_id")["item_id"].apply(set)
    a, b = lists["grpo"], lists["sft_next"]
    shared = [len(a[u] & b[u]) / max(len(a[u]), 1) for u in a.index if u in b.index]
    return round(sum(shared) / len(shared), 3), len(set().union(*a.values))


def chunk_means(values: list[float], size: int) -> list[float]:
    """Mean of each run of `size` values (the last run may be shorter), rounded."""
    return [round(sum(values[i:i + size]) / len(values[i:i + size]), 3) for i in range(0, len(values), size)]


def by_eighths(values: list[float]) -> list[float]:
    return chunk_means(values, max(1, len(values) // 8))


def run_variant(name: str, base: Path) -> dict:
    from negrec.io import read_jsonl

    run = RUNS / name
    seconds = rerun_from_base(base, run, CONFIG, VARIANTS[name])
    summary = trained_grpo_summary(run)
    log = read_jsonl(run / "grpo" / "log.jsonl")
    paired = paired_rows(run, "grpo", "sft_next", METRICS)
    shared, distinct = top10_moves(run)
    return {"overrides": VARIANTS[name], "seconds": seconds, "steps": summary["total_steps"],
            "hit_rate_by_eighths": by_eighths([r.get("rewards/future_neg_hit/mean", 0.0) for r in log]),
            "reward_by_eighths": by_eighths([r["reward"] for r in log]),
            "kl_last_4_steps": round(sum(r["kl"] for r in log[-4:]) / 4, 4),
            "top10_shared_with_sft": shared, "distinct_top10_items": distinct,
            "kept": summary["kept"]["name"], "validation": summary.get("validation"), "grpo_minus_sft": paired}


@functools.lru_cache(maxsize=None)
def sft_start(base: Path) -> SimpleNamespace:
    """The base run's SFT policy folder, prepared data, tokenizers and prompt builder, loaded once
    for every sanity check."""
    from negrec.config import load_config
    from negrec.data import Prepared
    from negrec.llm import PromptBuilder
    from negrec.llm.prompts import prompt_config
    from negrec.train.grpo import _load_sid_tokenizer
    from transformers import AutoTokenizer

    sft = base / "sft_next" / "final"
    prepared = Prepared.load(base / "data")
    sid_tok = _load_sid_tokenizer(base, sft)
    hf_tok = AutoTokenizer.from_pretrained(sft)
    builder = PromptBuilder(prompt_config(load_config(str(CONFIG), [])), sid_tok,
                            prepared.items, hf_tok)
    return SimpleNamespace(sft=sft, prepared=prepared, sid_tok=sid_tok, hf_tok=hf_tok, builder=builder)


def _grpo_from_sft(base: Path, name: str, rows: list[dict], reward_funcs, reward_weights=None, steps: int = 30,
                   generation: str = "sample", prompts_per_step: int = 4) -> dict:
    """GRPO (one plain stage, lr 5e-4, G = 8) from the base run's SFT policy on `rows`; the per-step log."""
    from negrec.io import read_jsonl
    from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, train_progressive_grpo

    start = sft_start(base)
    cfg = ProgressiveGRPOConfig(stages=[GRPOStageConfig("plain", context_mix=1.0, neg_window_days=None,
                                                        max_steps=steps, beta=0.04)],
                                learning_rate=5e-4, num_generations=8, per_device_train_batch_size=8 * prompts_per_step,
                                save_steps=10_000, generation=generation, select="last")
    out = RUNS / name
    shutil.rmtree(out, ignore_errors=True)
    constraint = start.builder.sid_constraint(start.hf_tok)
    t0 = time.time()
    train_progressive_grpo(cfg, sft_dir=start.sft, samples=rows, build_prompt=start.builder.build,
                           reward_funcs=reward_funcs, reward_weights=reward_weights, sid_constraint=constraint,
                           completion_length=constraint.new_tokens, out_dir=out)
    return {"seconds": round(time.time() - t0, 1), "steps": steps, "learning_rate": 5e-4, "generation": generation,
            "prompts_per_step": prompts_per_step, "log": read_jsonl(out / "log.jsonl")}


def by_5_steps(log: list[dict], key: str) -> list[float]:
    return chunk_means([r[key] for r in log], 5)


def learnable_reward_check(base: Path, steps: int = 30) -> dict:
    """GRPO from the same SFT policy toward a reward it can learn: the SID's first code is the code
    the SFT policy samples least often among the common ones (a few percent of samples at the start)."""
    from negrec.train.grpo import training_rows

    start = sft_start(base)
    sid_tok = start.sid_tok
    row_of = {int(i): r for r, i in enumerate(sid_tok.item_ids)}
    target = 5  # a level-1 code of the default tokenizer that the SFT policy rarely samples

    def first_code(prompts=None, completions=None, **kwargs):
        items = [sid_tok.item_for_tokens(c.strip()) for c in completions]
        return [float(i is not None and sid_tok.codes[row_of[int(i)], 0] == target) for i in items]

    rows = training_rows(start.prepared, 7, 2000, 0)
    run = _grpo_from_sft(base, "learnable_reward", rows, [first_code], steps=steps)
    return {"reward": f"first SID code == {target}", "steps": steps, "learning_rate": 5e-4, "seconds": run["seconds"],
            "reward_by_5_steps": by_5_steps(run["log"], "reward")}


def fixed_prompts_check(base: Path, generation: str, n_prompts: int = 16, steps: int = 40) -> dict:
    """The exact-hit reward on a fixed set of `n_prompts` training prompts, each seen about
    steps * 8 / n_prompts times: whether GRPO can raise the reward that matters where the prompts
    repeat (memorisation). If it can, the flat curve on fresh prompts is a failure to generalise
    across users, not a fault of the reward's plumbing (a prompt-blind reward could not show that)."""
    from negrec.rewards import RewardConfig, build_rewards
    from negrec.train.grpo import training_rows

    start = sft_start(base)
    weights = {"future_neg_hit": 1.0, "validity": 1.0} | ({"rank_penalty": 1.0} if generation == "beam" else {})
    rewards = build_rewards(RewardConfig(weights=weights), start.sid_tok)
    rows = training_rows(start.prepared, 7, n_prompts, 0) * 8
    run = _grpo_from_sft(base, f"fixed_prompts_{generation}", rows, rewards.functions, rewards.weights,
                         steps=steps, generation=generation, prompts_per_step=8)
    return {"prompts": n_prompts, "rewards": weights, **{k: run[k] for k in ("steps", "learning_rate", "generation",
                                                                           "prompts_per_step", "seconds")},
            "hit_rate_by_5_steps": by_5_steps(run["log"], "rewards/future_neg_hit/mean"),
            "kl_by_5_steps": by_5_steps(run["log"], "kl")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--checks-only", action="store_true",
                    help="run only the sanity checks; keep the variant rows (and their date) of the JSON")
    a = ap.parse_args()

    from negrec.cli import set_threads
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    set_threads(None)
    base = RUNS / "base"
    run_pipeline(load_config(str(CONFIG), []), base)
    learnable = learnable_reward_check(base)
    print(f"learnable reward ({learnable['reward']}), mean per 5 steps: {learnable['reward_by_5_steps']}")
    fixed = {g: fixed_prompts_check(base, g) for g in ("sample", "beam")}
    for g, r in fixed.items():
        print(f"exact hit on {r['prompts']} fixed prompts ({g} groups), mean per 5 steps: {r['hit_rate_by_5_steps']}")
    previous = load_result("bench_grpo_move_ml100k")
    if a.checks_only:
        results, variants_when = previous.get("variants", {}), previous.get("variants_when", previous.get("when"))
    else:
        results, variants_when = {name: run_variant(name, base) for name in a.variants}, time.strftime("%Y-%m-%d %H:%M:%S")
    rows = [{"variant": n, "steps": r["steps"], "KL": r["kl_last_4_steps"], "top-10 shared w/ SFT": r["top10_shared_with_sft"],
             "distinct": r["distinct_top10_items"], "kept": r["kept"],
             **{f"{m} diff [CI], p": "{diff:+.4f} [{lo:+.4f}, {hi:+.4f}], {p:.3g}".format(**r["grpo_minus_sft"][m])
                for m in ("recall@10_h7", "recall@50_h7") if m in r["grpo_minus_sft"]}}
            for n, r in results.items()]
    print_table(rows, "GRPO - its SFT start on the same test users (H = 7; 95% CI, paired bootstrap p)")
    for n, r in results.items():
        print(f"{n}: sampled hit rate by eighths of training {r['hit_rate_by_eighths']}")
    save_result("bench_grpo_move_ml100k", {"command": "python benchmarks/bench_grpo_move.py",
                                           "learnable_reward": learnable,
                                           "fixed_prompts": fixed, "variants_when": variants_when,
                                           "variants": results})


if __name__ == "__main__":
    main()
