"""Residual k-means on faiss (RQ-KMeans, as OneRec uses): no autoencoder, one k-means per level
on the residuals the previous levels leave. Also the k-means that initialises RQ-VAE codebooks."""
from __future__ import annotations

import numpy as np

from negrec.rqvae.numpy_quantizer import NumpyQuantizer, nearest_code


def faiss_kmeans(x: np.ndarray, k: int, niter: int = 25, seed: int = 0) -> np.ndarray:
    """(k, d) k-means centroids; faiss on GPU when one is visible, CPU otherwise."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:  # too few points: take every point and pad with jittered copies
        rng = np.random.default_rng(seed)
        extra = x[rng.integers(0, len(x), k - len(x))] + 1e-3 * rng.standard_normal((k - len(x), x.shape[1])).astype(np.float32)
        return np.concatenate([x, extra]).astype(np.float32)
    # faiss's random init lands in poor local minima on clustered data: seed its Lloyd
    # iterations with k-means++ on a subsample, then train on the subsample faiss would use.
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= 256 * k else x[rng.choice(len(x), 256 * k, replace=False)]
    init = kmeans_plusplus(sample[: 32 * k], k, rng)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, gpu=faiss.get_num_gpus() > 0, verbose=False,
                      max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(sample, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling), O(n k d)."""
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(len(x))]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for i in range(1, k):
        total = d2.sum()
        j = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centers[i] = x[j]
        d2 = np.minimum(d2, ((x - centers[i]) ** 2).sum(1))
    return centers


def fit_rqkmeans(x: np.ndarray, levels: int = 3, codebook_size: int = 256, niter: int = 25, seed: int = 0,
                 log=None) -> NumpyQuantizer:
    """Fit L residual codebooks: level l clusters what levels < l failed to explain."""
    from tqdm.auto import tqdm

    r = np.array(x, dtype=np.float32, copy=True)
    codebooks = []
    for lvl in tqdm(range(levels), desc="rq-kmeans levels"):
        cb = faiss_kmeans(r, codebook_size, niter, seed + lvl)
        codes = nearest_code(r, cb)
        r -= cb[codes]
        codebooks.append(cb)
        if log:
            log(lvl, float((r ** 2).sum(1).mean()))
    return NumpyQuantizer(codebooks, method="rqkmeans")
