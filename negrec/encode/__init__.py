"""Item encoders, the `negrec encode` stage: text (sentence-transformers), collaborative (signed
SVD of the user x item feedback matrix) and categorical-feature vectors, fused into one vector per
item that `negrec.rqvae` quantizes. Torch is imported only by the text encoder."""
from negrec.encode.config import PACKAGED_MINILM, EncodeConfig
from negrec.encode.encoders import encode_items, encode_texts, load_encoded, run_encode

__all__ = ["EncodeConfig", "PACKAGED_MINILM", "encode_items", "encode_texts", "load_encoded", "run_encode"]
