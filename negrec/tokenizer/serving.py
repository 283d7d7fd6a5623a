"""Serving side of the codebook export, numpy only (no torch, no pandas).

A serving stack that loads `negrec export-codebook` output needs three things, all here:

- give new items semantic IDs from their embeddings (the exported quantizer, re-run in numpy);
- decode a SID back to an embedding (sum of the per-level centroids it picks);
- the dislike filter the paper deploys: drop a ranking candidate whose embedding lies within
  cosine θ of any of the user's predicted dislikes (`filter_candidates`).

Usage (also written as README.txt into every export folder):

    import numpy as np
    from negrec.tokenizer.serving import ExportedCodebook, filter_candidates

    cb = ExportedCodebook.load("runs/ml100k/export")       # checks the manifest's sha256 by default
    sids = cb.assign(new_item_vectors)                        # (n, levels) unique SIDs for new items
    disliked = cb.decode(cb.parse(["<a_3><b_17><c_0>"]))      # SID strings the model generated -> vectors
    keep = filter_candidates(cb.decode(candidate_sids), disliked, theta=0.9)

Compare like with like: `decode` returns vectors in the quantizer's latent space (the item
vector space itself for RQ-KMeans; the RQ-VAE latent for RQ-VAE), so filter candidates decoded
the same way, or pass `space="input"` to decode through the RQ-VAE decoder into item-vector space.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ExportedCodebook", "filter_candidates", "unit_rows", "USAGE"]

USAGE = """\
negrec codebook export: how to use it in a serving stack (numpy only; no torch, no pandas)

  pip install negrec   # or vendor negrec/tokenizer/serving.py + export.py + negrec/rqvae/numpy_quantizer.py

  import numpy as np
  from negrec.tokenizer.serving import ExportedCodebook, filter_candidates

  cb = ExportedCodebook.load("{path}")
  cb.sid_of(item_id)                      # exported SID codes of a known item
  cb.item_of(codes)                       # item id for a SID (None when unknown)
  new = cb.assign(new_item_vectors)       # (n, levels) unique SIDs for new items (input_dim={input_dim})
  raw = cb.assign(vectors, unique=False)  # raw semantic codes, what the quantizer gives
  emb = cb.decode(cb.parse(["<a_3><b_17><c_0>"]))   # SID -> embedding (sum of per-level centroids)

  # the predicted-dislike filter: drop candidates within cosine theta of any predicted dislike
  keep = filter_candidates(cb.decode(candidate_codes), cb.decode(predicted_dislike_codes), theta=0.9)
  candidates = candidates[keep]

Files: manifest.json (levels, sizes, token format, sha256 of every file), codebooks/level_<l>.npy,
quantizer.safetensors/.json (codebooks + RQ-VAE encoder/decoder, layer rule in the JSON),
item_sid.parquet/.csv, sid_item.parquet/.csv, trie.json, item_embeddings.npy, sid_tokenizer/.
Check the export: `negrec export-codebook --verify` or
  python -c "from negrec.tokenizer.export import verify_export; verify_export('{path}')"
"""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def filter_candidates(candidate_emb: np.ndarray, predicted_dislike_emb: np.ndarray, theta: float) -> np.ndarray:
    """Keep-mask over candidates: False where cos(candidate, some predicted dislike) >= theta.

    candidate_emb (n, d), predicted_dislike_emb (m, d); with m = 0 every candidate is kept.
    """
    candidate_emb = np.atleast_2d(np.asarray(candidate_emb, dtype=np.float32))
    predicted_dislike_emb = np.asarray(predicted_dislike_emb, dtype=np.float32)
    predicted = (np.atleast_2d(predicted_dislike_emb) if len(predicted_dislike_emb)
                 else np.zeros((0, candidate_emb.shape[1]), np.float32))
    if predicted.shape[0] == 0 or candidate_emb.shape[0] == 0:
        return np.ones(candidate_emb.shape[0], dtype=bool)
    if predicted.shape[1] != candidate_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: candidates {candidate_emb.shape[1]}, dislikes {predicted.shape[1]}")
    return (unit_rows(candidate_emb) @ unit_rows(predicted).T).max(1) < theta


_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


class ExportedCodebook:
    """An export folder loaded with numpy: SIDs for new items, SID -> embedding, item <-> SID lookups."""

    def __init__(self, export):
        self._ex = export  # negrec.tokenizer.export.SidExport
        self.path: Path = export.path
        self.manifest: dict = export.manifest
        self.quantizer = export.quantizer
        self.item_ids: np.ndarray = export.item_ids
        self.codes: np.ndarray = export.codes
        self.levels: int = int(self.manifest["levels"])
        self.semantic_levels: int = int(self.manifest["semantic_levels"])
        self.level_chars: str = self.manifest["level_chars"]
        self._by_item = {int(i): r for r, i in enumerate(self.item_ids.tolist())}
        self._by_codes = {tuple(c): int(i) for c, i in zip(self.codes.tolist(), self.item_ids.tolist())}

    @classmethod
    def load(cls, path, check_hashes: bool = True) -> "ExportedCodebook":
        from negrec.tokenizer.export import load_export

        return cls(load_export(path, check_hashes=check_hashes))

    def __len__(self) -> int:
        return len(self.item_ids)

    # ---- lookups --------------------------------------------------------------------------
    def sid_of(self, item_id) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[self._by_item[int(item_id)]])

    def item_of(self, codes: Sequence[int]) -> int | None:
        return self._by_codes.get(tuple(int(c) for c in codes))

    def token_string(self, codes: Sequence[int]) -> str:
        return "".join(f"<{self.level_chars[lvl]}_{int(c)}>" for lvl, c in enumerate(codes))

    def parse(self, sids: str | Iterable[str]) -> np.ndarray:
        """SID strings ("<a_3><b_17><c_0>") -> codes (n, levels); raises ValueError on a malformed one."""
        sids = [sids] if isinstance(sids, str) else list(sids)
        out = np.empty((len(sids), self.levels), dtype=np.int64)
        for i, s in enumerate(sids):
            toks = _TOKEN_RE.findall(s)
            if len(toks) != self.levels or "".join(ch for ch, _ in toks) != self.level_chars[:self.levels] \
                    or _TOKEN_RE.sub("", s).strip():
                raise ValueError(f"not a {self.levels}-level SID string: {s!r}")
            out[i] = [int(c) for _, c in toks]
        return out

    # ---- quantization ---------------------------------------------------------------------
    def assign(self, embeddings: np.ndarray, unique: bool = True) -> np.ndarray:
        """Codes for item vectors (n, input_dim): unique full SIDs (default) or raw semantic codes.

        See `SidExport.assign_sids`: unique SIDs never collide with the exported items or each
        other; rows that cannot be placed are -1.
        """
        return self._ex.assign_sids(embeddings, unique=unique)

    def decode(self, codes: np.ndarray, space: str = "latent") -> np.ndarray:
        """SID codes (n, levels or semantic_levels) -> embeddings: the sum of the picked centroids.

        A trailing collision level (TIGER extra level) has no centroids and is ignored.
        space="latent": the quantizer's space (item-vector space for RQ-KMeans).
        space="input": through the RQ-VAE decoder into item-vector space (same as latent for RQ-KMeans).
        """
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        if codes.shape[1] < self.semantic_levels:
            raise ValueError(f"codes have {codes.shape[1]} levels; need at least {self.semantic_levels}")
        sem = codes[:, :self.semantic_levels]
        sizes = np.asarray(self.quantizer.codebook_sizes)
        if ((sem < 0) | (sem >= sizes)).any():
            raise ValueError("codes outside the codebooks (e.g. -1 for an unplaced item)")
        if space == "latent":
            return self.quantizer.latent_from_codes(sem)
        if space == "input":
            return self.quantizer.reconstruct(sem)
        raise ValueError(f"space must be 'latent' or 'input', not {space!r}")

    def item_embeddings(self, item_ids, space: str = "latent") -> np.ndarray:
        """Decoded embeddings of exported items (their SIDs through the codebooks)."""
        rows = [self._by_item[int(i)] for i in np.atleast_1d(item_ids)]
        return self.decode(self.codes[rows], space=space)

    def filter(self, candidate_codes: np.ndarray, predicted_dislike_codes: np.ndarray, theta: float,
               space: str = "latent") -> np.ndarray:
        """`filter_candidates` on SIDs: keep-mask over candidates, both sides decoded through the codebooks."""
        cand = self.decode(candidate_codes, space)
        dis = np.asarray(predicted_dislike_codes)
        dis = self.decode(dis, space) if dis.size else np.zeros((0, cand.shape[1]), np.float32)
        return filter_candidates(cand, dis, theta)

    def __repr__(self) -> str:
        return (f"ExportedCodebook({str(self.path)!r}, items={len(self)}, levels={self.levels}, "
                f"sizes={self.manifest['codebook_sizes']}, method={self.manifest['method']!r})")
