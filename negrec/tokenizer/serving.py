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

This module is the loading side of the export (`negrec.tokenizer.export` writes it): one class,
`ExportedCodebook`, for a loaded export folder, and `verify_export`, the numpy-only parity check.
Nothing here imports torch or pandas.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from negrec.io import file_sha256
from negrec.rqvae.collisions import add_extra_level
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.tokenizer.sid import format_sid, parse_sid

__all__ = ["ExportError", "ExportedCodebook", "assign_sids", "filter_candidates", "unit_rows", "verify_export"]

MANIFEST = "manifest.json"


class ExportError(ValueError):
    """An export folder is incomplete, corrupted, or does not reproduce its SIDs."""


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


def read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of an export table (item_sid, sid_item) as arrays: Parquet through pyarrow when
    present, else the CSV."""
    pq_path, csv_path = path.with_suffix(".parquet"), path.with_suffix(".csv")
    try:
        import pyarrow.parquet as pq

        t = pq.read_table(pq_path)
        return {name: t.column(name).to_numpy() for name in t.column_names}
    except ImportError:
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        return {h: np.asarray([r[i] for r in body], dtype=object if h == "sid" else np.int64) for i, h in enumerate(header)}


class ExportedCodebook:
    """An export folder loaded with numpy: SIDs for new items, SID -> embedding, item <-> SID lookups."""

    def __init__(self, path, manifest: dict, quantizer: NumpyQuantizer, item_ids: np.ndarray, codes: np.ndarray,
                 raw_codes: np.ndarray):
        self.path = Path(path)
        self.manifest = manifest
        self.quantizer = quantizer
        self.item_ids = item_ids
        self.codes = codes  # final SIDs (n, levels)
        self.raw_codes = raw_codes  # semantic codes before collision handling (n, semantic_levels)
        self.levels: int = int(manifest["levels"])
        self.semantic_levels: int = int(manifest["semantic_levels"])
        self.level_chars: str = manifest["level_chars"]
        self._by_item = {int(i): r for r, i in enumerate(self.item_ids.tolist())}
        self._by_codes = {tuple(c): int(i) for c, i in zip(self.codes.tolist(), self.item_ids.tolist())}

    @classmethod
    def load(cls, path, check_hashes: bool = True) -> "ExportedCodebook":
        """Load an export folder; with `check_hashes` every file must match the manifest's sha256."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise ExportError(f"{path / MANIFEST}: missing; not a codebook export folder")
        manifest = json.loads((path / MANIFEST).read_text())
        if check_hashes:
            for name, digest in manifest["files"].items():
                if not (path / name).exists():
                    raise ExportError(f"{path / name}: listed in the manifest but missing")
                if file_sha256(path / name) != digest:
                    raise ExportError(f"{path / name}: sha256 differs from the manifest (corrupted or edited)")
        table = read_table(path / "item_sid")
        codes = np.stack([table[f"c{lvl}"] for lvl in range(manifest["levels"])], 1).astype(np.int64)
        raw = np.stack([table[f"r{lvl}"] for lvl in range(manifest["semantic_levels"])], 1).astype(np.int64)
        return cls(path, manifest, NumpyQuantizer.load(path), table["item_id"].astype(np.int64), codes, raw)

    def __len__(self) -> int:
        return len(self.item_ids)

    # ---- lookups --------------------------------------------------------------------------
    def sid_of(self, item_id) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[self._by_item[int(item_id)]])

    def item_of(self, codes: Sequence[int]) -> int | None:
        return self._by_codes.get(tuple(int(c) for c in codes))

    def token_string(self, codes: Sequence[int]) -> str:
        return format_sid(codes, self.level_chars)

    def parse(self, sids: str | Iterable[str]) -> np.ndarray:
        """SID strings ("<a_3><b_17><c_0>") -> codes (n, levels); raises ValueError on a malformed one."""
        sids = [sids] if isinstance(sids, str) else list(sids)
        out = np.empty((len(sids), self.levels), dtype=np.int64)
        for i, s in enumerate(sids):
            codes = parse_sid(s, self.levels, self.level_chars)
            if codes is None:
                raise ValueError(f"not a {self.levels}-level SID string: {s!r}")
            out[i] = codes
        return out

    # ---- quantization ---------------------------------------------------------------------
    def assign(self, embeddings: np.ndarray, unique: bool = True) -> np.ndarray:
        """Codes for item vectors (n, input_dim).

        unique=False: the raw semantic codes (n, semantic_levels), what re-quantisation gives.
        unique=True: full SIDs (n, levels) that collide neither with exported items nor each other:
        extra_level numbers new items after the existing ones sharing their codes, and when every
        number there is taken moves on to the nearest last-level code with a free one; sinkhorn
        moves a colliding new item to the nearest free last-level code under its prefix. Rows that
        cannot be placed (every code under the prefix full) are -1.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        raw, residual = self.quantizer.assign(embeddings)  # residual: what entered the last level
        if not unique:
            return raw
        taken = {tuple(c) for c in self.codes.tolist()}
        out = np.full((len(raw), self.levels), -1, dtype=np.int64)
        extra = self.manifest["codebook_sizes"][-1] if self.manifest["collision"] == "extra_level" else 0
        for i, r in enumerate(raw.tolist()):
            order = self._last_codes_by_nearness(r[-1], residual[i])
            if extra:  # the next free number after the exported items sharing the codes
                candidates = ((*r[:-1], k, j) for k in order for j in range(extra))
            else:
                candidates = ((*r[:-1], k) for k in order)
            free = next((c for c in candidates if c not in taken), None)
            if free is not None:
                out[i] = free
                taken.add(tuple(out[i]))
        return out

    def _last_codes_by_nearness(self, own: int, residual: np.ndarray):
        """The last level's codes, the item's own first, then by nearness to its last residual
        (sorted only when the own code is full: the common case never needs it)."""
        yield own
        dist = ((residual[None] - self.quantizer.codebooks[-1]) ** 2).sum(1)
        yield from (int(k) for k in np.argsort(dist) if k != own)

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


def assign_sids(embeddings: np.ndarray, export_dir, unique: bool = False) -> np.ndarray:
    """Semantic codes for item vectors from an export folder; see `ExportedCodebook.assign`."""
    return ExportedCodebook.load(export_dir, check_hashes=False).assign(embeddings, unique=unique)


def _collision_rule_mismatches(cb: ExportedCodebook, raw: np.ndarray) -> np.ndarray:
    """Rows whose exported SID is not what the collision rule gives their re-quantised codes."""
    if cb.manifest["collision"] == "extra_level":
        expected, _, _ = add_extra_level(raw)
        return np.flatnonzero((expected != cb.codes).any(1))
    # re-assigned SIDs are stored; items that did not collide keep their raw codes
    _, inverse, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
    alone = counts[inverse.reshape(-1)] == 1
    return np.flatnonzero(alone & (cb.codes != raw).any(1))


def verify_export(path) -> dict:
    """Reload the export with numpy only, re-quantise the stored item vectors, and check that every
    item gets its exported SID. Raises ExportError naming the first mismatching items."""
    t0 = time.time()
    cb = ExportedCodebook.load(path)
    emb_path = Path(path) / "item_embeddings.npy"
    if not emb_path.exists():
        raise ExportError(f"{emb_path}: missing; export with include_embeddings: true to verify")
    raw = cb.assign(np.load(emb_path), unique=False)
    bad = np.flatnonzero((raw != cb.raw_codes).any(1))
    if len(bad):
        raise ExportError(f"{len(bad)} of {len(raw)} items re-quantise to other codes, e.g. items {cb.item_ids[bad[:5]].tolist()}")
    bad = _collision_rule_mismatches(cb, raw)
    if len(bad):
        raise ExportError(f"{len(bad)} items have SIDs the collision rule does not give, e.g. items {cb.item_ids[bad[:5]].tolist()}")
    if len(np.unique(cb.codes, axis=0)) != len(cb.codes):
        raise ExportError("exported SIDs are not unique")
    report = {"items": int(len(raw)), "mismatches": 0, "seconds": round(time.time() - t0, 3)}
    print(f"[export] verified with numpy: all {report['items']} items re-quantise to their exported SIDs ({report['seconds']}s)")
    return report
