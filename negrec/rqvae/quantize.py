"""Fit a quantizer (RQ-VAE or RQ-KMeans) and turn item vectors into unique semantic IDs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from negrec.rqvae.collisions import add_extra_level, sinkhorn_reassign
from negrec.rqvae.numpy_quantizer import NumpyQuantizer


def fit_quantizer(x: np.ndarray, cfg, checkpoint: Path | None = None, tb_dir: Path | None = None,
                  resume_key: str = "") -> tuple[NumpyQuantizer, dict]:
    """Train `cfg.method` on item vectors; returns the numpy quantizer and a training summary."""
    if cfg.method == "rqvae":
        from negrec.rqvae.model import train_rqvae  # torch only when needed

        return train_rqvae(x, cfg, checkpoint=checkpoint, tb_dir=tb_dir, resume_key=resume_key)
    import time

    from negrec.rqvae.rqkmeans import fit_rqkmeans

    writer = None
    if tb_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tb_dir))
    t0 = time.time()
    q = fit_rqkmeans(x, cfg.levels, cfg.codebook_size, cfg.kmeans_iters, cfg.seed,
                     log=(lambda lvl, err: writer.add_scalar("rqkmeans/residual_sq_err", err, lvl)) if writer else None)
    if writer:
        writer.close()
    return q, {"train_seconds": round(time.time() - t0, 3)}


def unique_sids(quantizer: NumpyQuantizer, x: np.ndarray, cfg) -> dict:
    """Raw codes of `x`, then collision handling; every row of `codes` is unique.

    Returns codes, raw_codes, codebook_sizes (of `codes`), n_handled (items whose SID needed the
    collision step) and centroid_levels (levels with codebook centroids).
    """
    raw, _ = quantizer.assign(x)
    extra = {}
    sizes = quantizer.codebook_sizes
    if cfg.collision == "extra_level":
        codes, extra_size, n_handled = add_extra_level(raw)
        sizes = [*sizes, extra_size]
    else:
        codes, stats = sinkhorn_reassign(raw, lambda rows: quantizer.level_residuals(x[rows]), quantizer.codebooks,
                                         cfg.sinkhorn_epsilon, cfg.sinkhorn_iters)
        n_handled, extra = stats["moved"], {"moved_at_depth": stats["moved_at_depth"]}
    return {"codes": codes, "raw_codes": raw, "codebook_sizes": sizes, "n_handled": int(n_handled),
            "centroid_levels": quantizer.levels, **extra}
