"""Seconds to evaluate N synthetic users at K = 50 (target: 100K users in <= 10 s).

Two paths: `evaluate_arrays` (rankings + CSR target sets, what GRPO eval and baselines use)
and `evaluate_predictions` (the `negrec evaluate` contract: predictions/targets/log frames).

    python benchmarks/bench_eval.py [--users 100000] [--items 20000] [--k 50]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from negrec.eval.metrics import DAY, MetricsConfig, evaluate_arrays, evaluate_predictions
from negrec.io import write_json
from negrec.rewards.matching import ItemSets, swing_similarity


def synthetic(n_users: int, n_items: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rankings = rng.integers(0, n_items, size=(n_users, k))
    n_future = rng.poisson(6, n_users)
    future_rows = np.repeat(np.arange(n_users), n_future)
    future_items = rng.integers(0, n_items, len(future_rows))
    future_days = rng.integers(0, 7, len(future_rows))
    n_ctx = rng.poisson(40, n_users)
    ctx_rows = np.repeat(np.arange(n_users), n_ctx)
    ctx_items = rng.integers(0, n_items, len(ctx_rows))
    return rankings, (future_rows, future_items, future_days), (ctx_rows, ctx_items)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/bench_eval.json")
    args = ap.parse_args()
    cfg = MetricsConfig()
    rankings, (fr, fi, fd), (cr, ci) = synthetic(args.users, args.items, args.k)
    n = args.users
    results = {"users": n, "items": args.items, "k": args.k}

    # Swing from synthetic training negatives (the context), timed on its own
    t = time.perf_counter()
    swing = swing_similarity(cr[: 400_000], ci[: 400_000], top_n=cfg.swing_top_n)
    results["swing_fit_s (400K events)"] = time.perf_counter() - t

    t = time.perf_counter()
    future = {h: ItemSets.from_pairs(fr[fd < h], fi[fd < h], n) for h in cfg.horizons}
    context = ItemSets.from_pairs(cr, ci, n)
    user_negs = np.bincount(cr, minlength=n)
    item_negs = np.bincount(ci, minlength=args.items)
    m = evaluate_arrays(rankings, future, cfg, context=context, next_neg=future[1],
                        user_train_negatives=user_negs, item_train_negatives=item_negs, swing=swing)
    results["evaluate_arrays_s"] = time.perf_counter() - t
    results["recall@50_h7 (random)"] = m["recall@50_h7"]

    preds = pd.DataFrame({"user_id": np.repeat(np.arange(n), args.k), "cut_ts": 100 * DAY,
                          "rank": np.tile(np.arange(args.k), n), "item_id": rankings.reshape(-1),
                          "score": -np.tile(np.arange(args.k), n).astype(float)})
    targets = pd.DataFrame({"user_id": fr, "cut_ts": 100 * DAY, "item_id": fi, "ts": 100 * DAY + fd * DAY + 60,
                            "kind": "hated"})
    log = pd.DataFrame({"user_id": np.concatenate([cr, fr]), "item_id": np.concatenate([ci, fi]),
                        "ts": np.concatenate([np.full(len(cr), 50 * DAY), targets["ts"].to_numpy()]),
                        "feedback": np.concatenate([np.where(np.arange(len(cr)) % 3 == 0, -1, 1), -np.ones(len(fr), int)])})
    t = time.perf_counter()
    evaluate_predictions(preds, targets, log, cfg, swing=swing)
    results["evaluate_predictions_s (frames + log, candidates)"] = time.perf_counter() - t

    width = max(len(k) for k in results)
    print(f"bench_eval: {n} synthetic users, K = {args.k}")
    for key, v in results.items():
        print(f"  {key:<{width}}  {v:.3f}" if isinstance(v, float) else f"  {key:<{width}}  {v}")
    write_json(Path(args.out), results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
