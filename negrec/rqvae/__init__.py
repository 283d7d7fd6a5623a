"""Item encoders (text, collaborative, features) and the quantizers (RQ-VAE, RQ-KMeans) that
turn item vectors into semantic-ID codes. Torch is imported only by the RQ-VAE trainer."""
from negrec.rqvae.collisions import add_extra_level, collision_rate, sinkhorn_reassign
from negrec.rqvae.config import EncodeConfig, TokenizeConfig
from negrec.rqvae.metrics import codebook_metrics
from negrec.rqvae.numpy_quantizer import NumpyQuantizer


def run_encode(raw: dict, run_dir):
    from negrec.rqvae.encoders import run_encode as _run

    return _run(raw, run_dir)


__all__ = ["EncodeConfig", "TokenizeConfig", "NumpyQuantizer", "add_extra_level", "sinkhorn_reassign",
           "collision_rate", "codebook_metrics", "run_encode"]
