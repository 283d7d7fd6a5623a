"""SFT vs plain GRPO vs progressive GRPO on ML-100K with the tiny default model, in one script.

1. The pipeline up to build-model (data, encode, tokenize, model) in one run folder, then the
   SFT policy: alignment SFT then next-negative SFT with negrec.llm.prompts' example builders and
   `train_sft` (stages already done are skipped, so a second run starts at step 2).
2. Plain GRPO (final-stage context only) and progressive GRPO (recent negatives -> all negatives
   -> negatives + positives), the same total steps, group size and rewards, from the same SFT policy.
3. Each policy ranks the same validation users (constrained beam search, the user's context
   excluded, full context in the prompt): future-negative Recall@10 / NDCG@10 at H = 7.
4. Forgetting: item-alignment accuracy (negrec.llm.evaluation.alignment_accuracy) before and after GRPO.

    python benchmarks/bench_grpo_quality.py [--run-dir runs/bench_grpo_quality] [--steps-per-stage 10]
        [--users 200] [--set grpo.generation=beam ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Small settings so the whole script runs in about 10 minutes on 2 idle CPU cores.
BASE = {
    "_source": "benchmarks/bench_grpo_quality.py",
    "data": {"format": "movielens", "path": str(ROOT.parent / "shared" / "data" / "ml-100k"),
             "split": {"train_event_stride": 10}},
    "encode": {},
    "tokenize": {"method": "rqkmeans", "levels": 3, "codebook_size": 32},
    "model": {"source": "tiny"},
    "prompt": {"max_neg": 10, "max_pos": 10},
    # alignment is taught on a 100-item subset long enough to be learned (the tiny model stays at
    # chance on 1,682 items in a few minutes), so that forgetting it under GRPO can be measured
    "sft_align": {"epochs": 30.0, "max_items": 100, "eval_items": 0, "logging_steps": 20, "batch_size": 32,
                  "tasks": ["text_to_sid", "sid_to_text", "choose_text", "choose_sid"]},
    "sft_next": {"epochs": 1.0, "max_samples": 600, "context_mix": 1.0, "eval_items": 0, "logging_steps": 5},
    "rewards": {"horizon": 7},
    "grpo": {"num_generations": 8, "per_device_train_batch_size": 32, "learning_rate": 5e-5, "save_steps": 1000,
             "max_samples": 2000},
    "pipeline": {"stop_after": "build-model"},
}


def sft_policy(raw: dict, run_dir: Path) -> Path:
    """Alignment SFT then next-negative SFT from run_dir/model; returns the policy folder."""
    from negrec.config import section_config
    from negrec.data import Prepared
    from negrec.llm import PromptBuilder, load_policy, save_policy
    from negrec.llm.prompts import alignment_examples, next_negative_examples, prompt_config
    from negrec.train.sft import SFTStageConfig, train_sft

    data = Prepared.load(run_dir / "data")
    init = run_dir / "model"
    for task in ("align", "next"):
        out = run_dir / "bench" / f"sft_{task}"
        if not (out / "final" / "config.json").exists():
            cfg = section_config(SFTStageConfig, raw, f"sft_{task}")
            model, hf_tok, sid_tok = load_policy(init, device="cpu")
            builder = PromptBuilder(prompt_config(raw), sid_tok, data.items, hf_tok)
            if task == "align":
                examples = alignment_examples(builder, sid_tok, data.items, cfg.tasks, cfg.max_items,
                                              cfg.item_repeats, cfg.seed)
            else:
                examples = next_negative_examples(builder, data.samples["train"], sid_tok, cfg.horizon or data.main_horizon,
                                                  cfg.context_mix, cfg.neg_window_days, cfg.max_samples,
                                                  cfg.targets_per_sample, cfg.seed)
                # replay the alignment examples (multi-task SFT, as LC-Rec trains): without it
                # next-negative SFT erases the alignment before GRPO starts and there is nothing
                # left for GRPO to forget
                acfg = section_config(SFTStageConfig, raw, "sft_align")
                examples += alignment_examples(builder, sid_tok, data.items, acfg.tasks, acfg.max_items,
                                               max(1, int(acfg.epochs) // 5), acfg.seed)
            print(f"[sft_{task}] {len(examples)} examples")
            trainer = train_sft(model, hf_tok, examples, cfg, out, tb_dir=None)
            save_policy(trainer.model, hf_tok, sid_tok, out / "final")
        init = out / "final"
    return init


def rank_users(model_dir: Path, samples, raw: dict, top_k: int = 10, num_beams: int = 20):
    """(n, top_k) item rankings: constrained beam search over the full-context prompt, context excluded."""
    from negrec.data import Prepared  # noqa: F401  (documents where `samples` comes from)
    from negrec.llm import PromptBuilder, constrained_beam_search, load_policy
    from negrec.llm.prompts import prompt_config

    model, hf_tok, sid_tok = load_policy(model_dir, device="cpu")
    builder = PromptBuilder(prompt_config(raw), sid_tok, None, hf_tok)
    prompts = [builder.build(r, context_mix=1.0) for r in samples.to_dict("records")]
    exclude = [list(map(int, c)) for c in samples["context_items"]]
    ranked = constrained_beam_search(model, hf_tok, builder.sid_constraint(hf_tok), prompts, num_beams=num_beams,
                                     top_k=top_k, exclude=exclude, batch_size=16)
    out = np.full((len(prompts), top_k), -1, dtype=np.int64)
    for i, r in enumerate(ranked):
        out[i, :len(r)] = [item for item, _ in r]
    return out, model, hf_tok, sid_tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench_grpo_quality"))
    ap.add_argument("--steps-per-stage", type=int, default=6)
    ap.add_argument("--users", type=int, default=150, help="validation users evaluated")
    ap.add_argument("--align-items", type=int, default=100, help="aligned items in the forgetting probe")
    ap.add_argument("--set", action="append", default=[], help="config override k=v (YAML value)")
    a = ap.parse_args()

    import torch

    from negrec.config import apply_overrides, section_config
    from negrec.data import Prepared
    from negrec.eval.metrics import MetricsConfig, evaluate_samples
    from negrec.llm import PromptBuilder, load_policy
    from negrec.llm.prompts import prompt_config
    from negrec.pipeline import run_pipeline
    from negrec.rewards import RewardConfig, build_rewards
    from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, train_progressive_grpo, training_rows
    from negrec.llm.evaluation import alignment_accuracy
    from negrec.llm.prompts import aligned_item_ids
    from negrec.train.sft import SFTStageConfig

    from negrec.cli import set_threads

    set_threads(None)  # as the CLI does: one torch thread on a small CPU
    torch.manual_seed(0)
    raw = apply_overrides(dict(BASE), a.set)
    n = a.steps_per_stage
    stages = [GRPOStageConfig("neg_recent", 0.0, 3.0, n, 0.04, plateau_window=2, plateau_min_improvement=0.0),
              GRPOStageConfig("neg_all", 0.0, None, n, 0.04, plateau_window=2, plateau_min_improvement=0.0),
              GRPOStageConfig("neg_pos", 1.0, None, n, 0.04)]
    run_dir = Path(a.run_dir)
    t0 = time.time()
    run_pipeline(raw, run_dir)
    sft_dir = sft_policy(raw, run_dir)
    t_pipeline = time.time() - t0

    prepared = Prepared.load(run_dir / "data")
    rcfg = section_config(RewardConfig, raw, "rewards")
    model, hf_tok, sid_tok = load_policy(sft_dir, device="cpu")
    builder = PromptBuilder(prompt_config(raw), sid_tok, prepared.items, hf_tok)
    rows = training_rows(prepared, rcfg.horizon, raw["grpo"].get("max_samples"), seed=0)
    rewards = build_rewards(rcfg, sid_tok, train_log=prepared.fit_log("train"))
    constraint = builder.sid_constraint(hf_tok)

    # The forgetting probe asks about the items alignment SFT taught (same pick as alignment_examples).
    align_cfg = section_config(SFTStageConfig, raw, "sft_align")
    ids = aligned_item_ids(sid_tok, prepared.items, align_cfg.max_items, align_cfg.seed)
    aligned_items = prepared.items[prepared.items["item_id"].isin(ids)]

    valid = prepared.samples["valid"]
    valid = valid[valid[f"future_neg_h{rcfg.horizon}"].map(len) > 0]
    valid = valid.sample(n=min(a.users, len(valid)), random_state=0).reset_index(drop=True)
    mcfg = MetricsConfig(ks=[5, 10, 50], horizons=[rcfg.horizon], main_horizon=rcfg.horizon, fhr_k=10)

    results, align = {}, {}
    grpo_info = {}
    # sampled groups (TRL's way) and constrained beam groups (MiniOneRec's) for the progressive run
    grpo_runs = {"plain_grpo": (False, "sample"), "progressive_grpo": (True, "sample"),
                 "progressive_grpo_beam": (True, "beam")}
    yaml_grpo = section_config(ProgressiveGRPOConfig, raw, "grpo")
    chosen = yaml_grpo.stages if "stages" in raw.get("grpo", {}) else stages  # --set grpo.stages=... wins
    for name in ("align_only", "sft", *grpo_runs):
        t1 = time.time()
        if name == "align_only":  # after alignment SFT, before next-negative SFT: what alignment taught
            model_dir = run_dir / "bench" / "sft_align" / "final"
        elif name == "sft":
            model_dir = sft_dir
        else:
            progressive, generation = grpo_runs[name]
            cfg = dataclasses.replace(yaml_grpo, stages=chosen, progressive=progressive, generation=generation)
            out = run_dir / "bench" / name
            summary = train_progressive_grpo(
                cfg, sft_dir=sft_dir, samples=rows, build_prompt=builder.build, reward_funcs=rewards.functions,
                reward_weights=rewards.weights, sid_constraint=constraint, completion_length=constraint.new_tokens,
                out_dir=out, tb_dir=run_dir / "tb" / f"bench_{name}")
            grpo_info[name] = {"steps": summary["total_steps"], "seconds": summary["seconds"],
                               "stage_steps": [s["steps"] for s in summary["stages"]],
                               "reward_first": summary["mean_reward_first"], "reward_last": summary["mean_reward_last"],
                               "zero_std_share": summary["zero_std_share_mean"]}
            model_dir = out / "final"
        rankings, m, tok, stok = rank_users(model_dir, valid, raw, top_k=50, num_beams=50)
        metrics = evaluate_samples(rankings, valid, mcfg, sid_tok=stok)
        results[name] = metrics
        align[name] = alignment_accuracy(m, tok, stok, aligned_items, n=a.align_items)
        print(f"[{name}] done in {time.time() - t1:.0f}s: recall@10={_get(metrics, 'recall', 10, rcfg.horizon)}")

    H = rcfg.horizon
    table = []
    for name, m in results.items():
        al = align[name]
        mean_align = float(np.mean([al[k] for k in ALIGN_KEYS]))
        base_align = float(np.mean([align["sft"][k] for k in ALIGN_KEYS]))
        table.append({"policy": name, f"recall@5 (H={H})": _get(m, "recall", 5, H), f"recall@10 (H={H})": _get(m, "recall", 10, H),
                      f"recall@50 (H={H})": _get(m, "recall", 50, H), f"ndcg@10 (H={H})": _get(m, "ndcg", 10, H),
                      "align acc (mean of 4)": mean_align, "title->sid": al["title_to_sid"],
                      "sid->title": al["sid_to_title"], "4-choice text": al["choice_text_likelihood"],
                      "4-choice sid": al["choice_sid_likelihood"],
                      "forgotten": None if name in ("sft", "align_only") or base_align == 0 else (base_align - mean_align) / base_align,
                      "grpo steps": grpo_info.get(name, {}).get("steps", 0)})
    print_table(table, f"ML-100K, {len(valid)} validation users, tiny default model "
                       f"(pipeline {t_pipeline:.0f}s, total {time.time() - t0:.0f}s)")
    for name, info in grpo_info.items():
        print(f"  {name}: stage steps {info['stage_steps']}, reward {info['reward_first']} -> {info['reward_last']}, "
              f"zero-std group share {info['zero_std_share']}")
    r = {row["policy"]: row[f"recall@10 (H={H})"] for row in table}
    print(f"\nprogressive >= SFT: {r['progressive_grpo'] >= r['sft']}; progressive > plain: "
          f"{r['progressive_grpo'] > r['plain_grpo']}; beam groups vs sampled groups: "
          f"{r['progressive_grpo_beam']:.4f} vs {r['progressive_grpo']:.4f} (one seed, {len(valid)} users: differences of a few "
          f"hits are noise)")
    save_result("bench_grpo_quality", {"settings": {**vars(a), "config": raw}, "table": table, "grpo": grpo_info,
                                        "metrics": results, "alignment": align})


# the forgetting probe: title -> SID, SID -> title and both 4-choice questions answered by likelihood
ALIGN_KEYS = ("title_to_sid", "sid_to_title", "choice_text_likelihood", "choice_sid_likelihood")


def _get(metrics: dict, name: str, k: int, h: int):
    for key in (f"{name}@{k}_h{h}", f"{name}@{k}@h{h}", f"{name}_h{h}@{k}", f"h{h}/{name}@{k}"):
        if key in metrics:
            return metrics[key]
    cands = [key for key in metrics if name in key and str(k) in key and str(h) in key]
    return metrics[cands[0]] if cands else None


if __name__ == "__main__":
    main()
