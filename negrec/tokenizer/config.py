"""Config of the `tokenize` stage (YAML section `tokenize:`): the quantizer that turns item vectors
into semantic IDs. The quantizers themselves (`negrec.rqvae`) read these fields."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from negrec.config import ConfigError


@dataclass
class TokenizeConfig:
    """Quantizer turning item vectors into semantic IDs."""

    method: str = "rqvae"  # rqvae | rqkmeans
    levels: int = 3
    codebook_size: int = 0  # codes per level; 0 = sized to the catalogue (`auto_codebook_size`)
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])  # RQ-VAE MLP encoder (decoder mirrors it)
    latent_dim: int = 32
    activation: str = "relu"  # relu | gelu | silu
    epochs: int = 300
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    beta: float = 0.25  # commitment weight
    kmeans_iters: int = 25  # faiss k-means iterations (init of RQ-VAE levels; RQ-KMeans levels)
    warmup_steps: int = 100  # autoencoder-only steps before the k-means init (keeps the init from going stale)
    kmeans_init: bool = True  # false: random codebooks (ablation; collapses more)
    kmeans_init_items: int = 20000  # first batch used for the k-means init of every level
    dead_code_steps: int = 50  # restart codes unused over this many steps (on batch residuals); 0 disables
    collision: str = "extra_level"  # extra_level (TIGER) | sinkhorn (LC-Rec re-assignment of the last level)
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 100
    save_every: int = 50  # epochs between resumable checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    level_chars: str = "abcdefghijklmnopqrstuvwxyz"

    def __post_init__(self):
        for name, allowed in (("method", ("rqvae", "rqkmeans")), ("collision", ("extra_level", "sinkhorn")),
                              ("activation", ("relu", "gelu", "silu"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"tokenize.{name}: expected {' | '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "latent_dim", "kmeans_iters", "kmeans_init_items", "sinkhorn_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tokenize.{name}: must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"tokenize: lr must be positive, got {self.lr}")
        for name in ("weight_decay", "beta", "warmup_steps", "dead_code_steps", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"tokenize: {name} must not be negative, got {getattr(self, name)}")
        if self.levels < 1 or self.codebook_size == 1 or self.codebook_size < 0:
            raise ConfigError(f"tokenize: levels must be >= 1 and codebook_size >= 2 or 0 (sized to the catalogue) "
                              f"(got {self.levels}, {self.codebook_size})")


def auto_codebook_size(n_items: int, levels: int) -> int:
    """Codes per level for `codebook_size: 0`: (16 n)^(1/levels), in [4, 256], about 16 SIDs per item.
    A fixed 256 leaves a small catalogue's codebooks mostly unused (120 items: 5 of 256 codes in use,
    every item colliding); the hand-tuned configs sit near this rule (1,682 items: 32, rule 30; 9,359: 64, rule 54)."""
    return int(min(256, max(4, math.ceil((16 * max(n_items, 1)) ** (1 / levels) - 1e-9))))
