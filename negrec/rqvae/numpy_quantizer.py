"""Numpy-only residual quantizer: what serving stacks run to give new items semantic IDs.

It holds the residual codebooks and, for an RQ-VAE, the MLP encoder/decoder weights
(torch `nn.Linear` layout: y = x @ W.T + b, the activation between layers, none after the
last). The tokenize stage computes the final codes with this same class, so an export
reloaded here reproduces every item's SID exactly. Do not import torch from this module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPEC_NAME = "quantizer.json"
WEIGHTS_NAME = "quantizer.safetensors"


def activation_fn(name: str):
    if name == "relu":
        return lambda x: np.maximum(x, 0, dtype=x.dtype)
    if name == "gelu":  # tanh approximation, as nn.GELU(approximate="tanh") in the torch model
        return lambda x: (0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x ** 3)))).astype(np.float32)
    if name == "silu":
        return lambda x: (x / (1.0 + np.exp(-x))).astype(np.float32)
    raise ValueError(f"unknown activation {name!r}")


def mlp_forward(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], activation: str) -> np.ndarray:
    act = activation_fn(activation)
    h = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = act(h)
    return h


def nearest_code(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """argmin_k ||x - c_k||^2 per row, chunked so memory stays at chunk x K floats."""
    c_sq = (centroids.astype(np.float32) ** 2).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        d = c_sq[None, :] - 2.0 * (x[s:s + chunk] @ centroids.T)
        out[s:s + chunk] = d.argmin(1)
    return out


def residual_assign(x: np.ndarray, codebooks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual quantisation: (codes (n, L), residual entering the last level (n, d))."""
    r = np.array(x, dtype=np.float32, copy=True)
    codes = np.empty((len(r), len(codebooks)), dtype=np.int64)
    last_in = r
    for lvl, cb in enumerate(codebooks):
        if lvl == len(codebooks) - 1:
            last_in = r.copy()
        codes[:, lvl] = nearest_code(r, cb)
        r -= cb[codes[:, lvl]]
    return codes, last_in


@dataclass
class NumpyQuantizer:
    codebooks: list[np.ndarray]  # per level (K_l, d_latent)
    encoder: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # empty: identity (RQ-KMeans)
    decoder: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    activation: str = "relu"
    method: str = "rqkmeans"

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(c.shape[0]) for c in self.codebooks]

    @property
    def input_dim(self) -> int:
        return int(self.encoder[0][0].shape[1]) if self.encoder else int(self.codebooks[0].shape[1])

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected embeddings of shape (n, {self.input_dim}), got {x.shape}")
        return mlp_forward(x, self.encoder, self.activation) if self.encoder else x

    def assign(self, x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Raw semantic codes (n, L) of item embeddings and the residual entering the last level."""
        codes, last = [], []
        for s in range(0, len(x), chunk):
            c, r = residual_assign(self.encode(x[s:s + chunk]), self.codebooks)
            codes.append(c)
            last.append(r)
        if not codes:
            return np.empty((0, self.levels), np.int64), np.empty((0, self.codebooks[0].shape[1]), np.float32)
        return np.concatenate(codes), np.concatenate(last)

    def level_residuals(self, x: np.ndarray) -> list[np.ndarray]:
        """The residual entering each level, for items `x` (n, d_in): L arrays (n, d_latent)."""
        r = self.encode(x).copy()
        out = []
        for cb in self.codebooks:
            out.append(r.copy())
            r -= cb[nearest_code(r, cb)]
        return out

    def latent_from_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        return sum(cb[codes[:, lvl]] for lvl, cb in enumerate(self.codebooks)).astype(np.float32)

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Input-space reconstruction of raw codes (through the decoder for an RQ-VAE)."""
        z = self.latent_from_codes(codes)
        return mlp_forward(z, self.decoder, self.activation) if self.decoder else z

    # ---- persistence: safetensors tensors + a JSON spec numpy can run from -----------
    def tensors(self) -> dict[str, np.ndarray]:
        t = {f"codebook_{i}": np.ascontiguousarray(c, dtype=np.float32) for i, c in enumerate(self.codebooks)}
        for part, layers in (("encoder", self.encoder), ("decoder", self.decoder)):
            for i, (w, b) in enumerate(layers):
                t[f"{part}.{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
                t[f"{part}.{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
        return t

    def spec(self) -> dict:
        return {
            "method": self.method,
            "levels": self.levels,
            "codebook_sizes": self.codebook_sizes,
            "latent_dim": int(self.codebooks[0].shape[1]),
            "input_dim": self.input_dim,
            "activation": self.activation,
            "layer_rule": "y = x @ weight.T + bias; activation between layers, none after the last",
            "encoder_shapes": [list(w.shape) for w, _ in self.encoder],
            "decoder_shapes": [list(w.shape) for w, _ in self.decoder],
            "assignment": "greedy residual: code_l = argmin_k ||r_l - codebook_l[k]||^2, r_{l+1} = r_l - codebook_l[code_l], r_0 = encoder(x)",
        }

    def save(self, directory: str | Path) -> list[Path]:
        from safetensors.numpy import save_file

        from negrec.io import atomic_path, write_json

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / WEIGHTS_NAME) as tmp:
            save_file(self.tensors(), str(tmp))
        write_json(d / SPEC_NAME, self.spec())
        return [d / WEIGHTS_NAME, d / SPEC_NAME]

    @classmethod
    def load(cls, directory: str | Path) -> "NumpyQuantizer":
        from safetensors.numpy import load_file

        d = Path(directory)
        for name in (SPEC_NAME, WEIGHTS_NAME):
            if not (d / name).exists():
                raise FileNotFoundError(f"{d / name}: missing; not a saved quantizer folder")
        spec = json.loads((d / SPEC_NAME).read_text())
        t = load_file(str(d / WEIGHTS_NAME))
        layers = {part: [(t[f"{part}.{i}.weight"], t[f"{part}.{i}.bias"]) for i in range(len(spec[f"{part}_shapes"]))]
                  for part in ("encoder", "decoder")}
        return cls([t[f"codebook_{i}"] for i in range(spec["levels"])], layers["encoder"], layers["decoder"],
                   spec["activation"], spec["method"])
