"""Semantic-ID quantizers on synthetic item vectors (default 1M x 384, like MiniLM).

Measures RQ-VAE training items/s (a fixed number of steps), numpy assignment items/s (the
serving path: MLP encoder + greedy residual search), RQ-KMeans fit + assign time, peak memory,
and the reconstruction error of RQ-VAE, RQ-KMeans and faiss's own ResidualQuantizer at the same
code budget (L levels x log2 K bits). Prints a table; writes benchmarks/results/bench_tokenize.json.

    python benchmarks/bench_tokenize.py                 # 1M vectors
    python benchmarks/bench_tokenize.py --n 200000      # smaller, on a busy machine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random directions (sentence embeddings are clustered like this)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s:s + m] = centers[rng.integers(0, clusters, m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rel_err(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(((x - x_hat) ** 2).sum() / (x ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=200, help="RQ-VAE steps timed (batch --batch-size)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--eval-n", type=int, default=100_000, help="items used for the reconstruction errors")
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--skip-faiss-rq", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_tokenize.json"))
    args = ap.parse_args()

    import faiss
    import torch

    from negrec.tokenizer import TokenizeConfig
    from negrec.rqvae.model import train_rqvae
    from negrec.rqvae.rqkmeans import fit_rqkmeans

    res: dict = {"n": args.n, "dim": args.dim, "levels": args.levels, "codebook_size": args.codebook_size,
                 "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "faiss_gpus": faiss.get_num_gpus(),
                 "machine": platform.processor() or platform.machine(), "load_avg_start": os.getloadavg()[0]}
    t = time.time()
    x = synthetic(args.n, args.dim, args.clusters, 0)
    res["data_seconds"] = round(time.time() - t, 2)
    ev = x[: min(args.eval_n, args.n)]

    # RQ-VAE: train a fixed number of steps (throughput; the model is not converged)
    cfg = TokenizeConfig(method="rqvae", levels=args.levels, codebook_size=args.codebook_size, epochs=1,
                         batch_size=args.batch_size, warmup_steps=50, kmeans_init_items=20_000, dead_code_steps=50,
                         save_every=0, device="auto")
    t = time.time()
    q, hist = train_rqvae(x, cfg, max_steps=args.train_steps)
    res["rqvae_train"] = {"steps": hist["train_steps"], "items_per_s": hist["train_items_per_s"],
                          "loop_seconds": hist["train_seconds"], "total_seconds_incl_init": round(time.time() - t, 2)}
    t = time.time()
    codes, _ = q.assign(x)
    sec = time.time() - t
    res["rqvae_assign"] = {"items_per_s": round(args.n / sec, 1), "items_per_min": round(60 * args.n / sec), "seconds": round(sec, 2)}
    res["rqvae_recon_rel_err"] = rel_err(ev, q.reconstruct(codes[: len(ev)]))
    res["peak_rss_mb_after_rqvae"] = round(peak_rss_mb())

    # RQ-KMeans (faiss k-means per level) + numpy assignment
    t = time.time()
    qk = fit_rqkmeans(x, args.levels, args.codebook_size, niter=20, seed=0)
    fit_s = time.time() - t
    t = time.time()
    kcodes, _ = qk.assign(x)
    asg_s = time.time() - t
    res["rqkmeans"] = {"fit_seconds": round(fit_s, 2), "assign_seconds": round(asg_s, 2),
                       "assign_items_per_s": round(args.n / asg_s, 1),
                       "recon_rel_err": rel_err(ev, qk.reconstruct(kcodes[: len(ev)])),
                       "unique_fraction": round(len(np.unique(kcodes, axis=0)) / args.n, 4)}
    res["rqvae_unique_fraction"] = round(len(np.unique(codes, axis=0)) / args.n, 4)
    res["peak_rss_mb_after_rqkmeans"] = round(peak_rss_mb())

    # faiss ResidualQuantizer at the same budget (levels x log2 K bits), beam search as faiss defaults
    if not args.skip_faiss_rq:
        nbits = int(np.log2(args.codebook_size))
        rq = faiss.ResidualQuantizer(args.dim, args.levels, nbits)
        train = x[np.random.default_rng(1).choice(args.n, min(args.n, 256 * args.codebook_size), replace=False)]
        t = time.time()
        rq.train(train)
        tr_s = time.time() - t
        t = time.time()
        rcodes = rq.compute_codes(ev)
        enc_s = time.time() - t
        res["faiss_rq"] = {"train_seconds": round(tr_s, 2), "train_items": len(train), "beam": int(rq.max_beam_size),
                           "encode_items_per_s": round(len(ev) / enc_s, 1), "recon_rel_err": rel_err(ev, rq.decode(rcodes))}
    res["peak_rss_mb"] = round(peak_rss_mb())
    res["load_avg_end"] = os.getloadavg()[0]

    rows = [
        ("RQ-VAE train", f"{res['rqvae_train']['items_per_s']:,.0f} items/s ({res['rqvae_train']['steps']} steps x {args.batch_size})"),
        ("RQ-VAE assign (numpy)", f"{res['rqvae_assign']['items_per_s']:,.0f} items/s = {res['rqvae_assign']['items_per_min']:,} items/min"),
        ("RQ-KMeans fit / assign", f"{res['rqkmeans']['fit_seconds']} s / {res['rqkmeans']['assign_seconds']} s"),
        ("recon rel. err RQ-VAE*", f"{res['rqvae_recon_rel_err']:.3f}  (*{res['rqvae_train']['steps']} steps, not converged)"),
        ("recon rel. err RQ-KMeans", f"{res['rqkmeans']['recon_rel_err']:.3f}"),
    ]
    if "faiss_rq" in res:
        rows.append(("recon rel. err faiss RQ", f"{res['faiss_rq']['recon_rel_err']:.3f}  (beam {res['faiss_rq']['beam']}, train {res['faiss_rq']['train_seconds']} s)"))
    rows.append(("peak RSS", f"{res['peak_rss_mb']:,} MB"))
    print(f"\nbench_tokenize: n={args.n:,} dim={args.dim} {args.levels}x{args.codebook_size}, "
          f"{res['cpu_count']} CPUs, torch threads {res['torch_threads']}, faiss GPUs {res['faiss_gpus']}, load {res['load_avg_start']:.1f}")
    w = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"  {name:<{w}}  {val}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
