"""The quantizers (RQ-VAE, RQ-KMeans) that turn item vectors into semantic-ID codes, collision
handling and codebook metrics. Torch is imported only by the RQ-VAE trainer (`rqvae.model`).
Their settings are the `tokenize` section (`negrec.tokenizer.TokenizeConfig`: `cfg` below)."""
from negrec.rqvae.collisions import add_extra_level, collision_rate, sinkhorn_reassign
from negrec.rqvae.metrics import codebook_metrics
from negrec.rqvae.numpy_quantizer import NumpyQuantizer

__all__ = ["NumpyQuantizer", "add_extra_level", "sinkhorn_reassign", "collision_rate", "codebook_metrics"]
