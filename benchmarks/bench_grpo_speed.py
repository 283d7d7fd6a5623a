"""Seconds per GRPO step: negrec's SidGRPOTrainer (SID-constrained groups) vs TRL's plain GRPOTrainer.

Same policy (negrec.llm's tiny default model over ML-100K-sized synthetic SIDs), same GRPOConfig
(batch, group size, completion length = SID levels + 1), same prompts and reward; only the
trainer class differs. Runs alternate (TRL, negrec-sample, negrec-beam, TRL, ...) so machine
noise hits all alike (the order rotates each round); the first step of each run (warm-up) is dropped. Target: negrec <= 1.2x TRL.

    python benchmarks/bench_grpo_speed.py [--steps 6] [--rounds 2] [--batch 16] [--group 8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result  # noqa: E402


def synthetic_setup(tmp: Path, n_items: int = 1682, n_users: int = 64, seed: int = 0):
    """A tiny default policy over random 3-level SIDs, plus sample rows shaped like negrec.data's."""
    from negrec.llm import ModelConfig, PromptBuilder, PromptConfig, build_policy, save_policy
    from negrec.tokenizer import SemanticIdTokenizer

    rng = np.random.default_rng(seed)
    sizes = [32, 32, 32]
    flat = rng.choice(np.prod(sizes), n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), axis=1)
    centroids = [rng.normal(size=(k, 16)).astype(np.float32) for k in sizes]
    item_ids = np.arange(1, n_items + 1)
    sid_tok = SemanticIdTokenizer.from_codes(item_ids, codes, sizes, centroids=centroids)
    words = "action comedy drama thriller romance horror family war western space night love city".split()
    items = pd.DataFrame({"item_id": item_ids, "title": [" ".join(rng.choice(words, 3)) for _ in item_ids],
                          "text": "", "genres": ""})
    builder = PromptBuilder(PromptConfig(format="verbose"), sid_tok, items)  # the prompts this benchmark timed
    model, hf_tok, _ = build_policy(ModelConfig(), sid_tok, items, builder.template_texts(), device="cpu")
    sft = save_policy(model, hf_tok, sid_tok, tmp / "sft")
    day = 86400
    rows = []
    for u in range(n_users):
        n_neg, n_pos = 10, 10
        rows.append({
            "user_id": u, "cut_ts": 100 * day,
            "neg_items": rng.choice(item_ids, n_neg, replace=False).tolist(),
            "neg_ts": sorted(rng.integers(80 * day, 100 * day, n_neg).tolist()), "neg_kinds": ["low rating"] * n_neg,
            "pos_items": rng.choice(item_ids, n_pos, replace=False).tolist(),
            "pos_ts": sorted(rng.integers(80 * day, 100 * day, n_pos).tolist()), "pos_kinds": ["liked"] * n_pos,
            "future_neg_h7": rng.choice(item_ids, 5, replace=False).tolist(),
            "future_pos_h7": rng.choice(item_ids, 3, replace=False).tolist(),
            "context_items": [],
        })
    return sft, sid_tok, builder, rows


class StepTimer:
    def __new__(cls):
        from transformers import TrainerCallback

        class _T(TrainerCallback):
            def __init__(self):
                self.times, self._t = [], None

            def on_step_begin(self, args, state, control, **kw):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self._t)

        return _T()


def run_once(kind: str, sft: Path, sid_tok, builder, rows, args_kw: dict, steps: int, out: Path) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from negrec.llm import SidConstraint
    from negrec.rewards import RewardConfig, build_rewards
    from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, grpo_args
    from negrec.train.grpo_trainer import SidGRPOTrainer

    cfg = ProgressiveGRPOConfig(**args_kw, generation="beam" if kind == "negrec-beam" else "sample")
    stage = GRPOStageConfig("bench", context_mix=1.0, neg_window_days=None, max_steps=steps, beta=0.04)
    rewards = build_rewards(RewardConfig(weights={"future_neg_hit": 1.0}), sid_tok)
    args = grpo_args(cfg, stage, out / kind, steps, sid_tok.levels + 1, seed=cfg.seed, reward_weights=rewards.weights)
    args.save_strategy = "no"
    args.disable_tqdm = True
    args.logging_steps = 10**6
    hf_tok = AutoTokenizer.from_pretrained(sft)
    hf_tok.padding_side = "left"
    prompts = [builder.build(r) for r in rows]
    ds = Dataset.from_dict({"prompt": prompts, **{k: [r[k] for r in rows] for k in rows[0]}})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(sft)
    timer = StepTimer()
    common = dict(model=model, reward_funcs=rewards.functions, args=args, train_dataset=ds, processing_class=hf_tok,
                  callbacks=[timer])
    if kind == "trl":
        trainer = GRPOTrainer(**common)
    else:
        trainer = SidGRPOTrainer(**common, sid_constraint=SidConstraint(sid_tok, hf_tok), generation=cfg.generation)
    trainer.train()
    return timer.times[1:]  # drop the warm-up step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="completions per step (per_device_train_batch_size)")
    ap.add_argument("--group", type=int, default=8, help="num_generations G")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="bench_grpo_speed_"))
    sft, sid_tok, builder, rows = synthetic_setup(tmp)
    args_kw = dict(num_generations=a.group, per_device_train_batch_size=a.batch, learning_rate=1e-5, seed=0)
    kinds = ["trl", "negrec-sample", "negrec-beam"]
    times = {k: [] for k in kinds}
    for r in range(a.rounds):
        for k in kinds[r % 3:] + kinds[:r % 3]:  # rotate the order: no kind always pays for running first
            times[k] += run_once(k, sft, sid_tok, builder, rows, args_kw, a.steps, tmp)
            print(f"round {r + 1}/{a.rounds} {k}: median {statistics.median(times[k]):.3f} s/step", flush=True)
    base = statistics.median(times["trl"])
    table = [{"trainer": k, "s/step (median)": statistics.median(v), "s/step (mean)": statistics.fmean(v),
              "steps timed": len(v), "x TRL": statistics.median(v) / base} for k, v in times.items()]
    print_table(table, f"GRPO step time, batch {a.batch} completions, G={a.group}, completion length "
                       f"{sid_tok.levels + 1}, torch threads {torch.get_num_threads()}")
    ratio = statistics.median(times["negrec-sample"]) / base
    print(f"\nnegrec (constrained sampling) / TRL GRPOTrainer = {ratio:.2f}x (target <= 1.2x): "
          f"{'OK' if ratio <= 1.2 else 'SLOWER THAN TARGET'}")
    save_result("bench_grpo_speed", {"settings": vars(a), "results": table, "ratio_sample_vs_trl": ratio,
                                      "ratio_beam_vs_trl": statistics.median(times["negrec-beam"]) / base,
                                      "params": sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                                                    .from_pretrained(sft).parameters())})


if __name__ == "__main__":
    main()
