"""`negrec export-codebook [--verify]`: the files a serving stack needs to give items semantic IDs.

Layout of the export folder (written as a whole, atomically):
  manifest.json                levels, sizes, token format, collision strategy, sha256 of every file, source run
  codebooks.safetensors        codebook_{l} (K_l, d) per semantic level; also codebooks/level_{l}.npy
  quantizer.safetensors/.json  the same codebooks plus, for RQ-VAE, encoder/decoder MLP weights and shapes
  item_sid.parquet/.csv        item_id, sid (token string), c0..c{L-1} (final SID), r0..r{S-1} (raw codes)
  sid_item.parquet/.csv        sid -> item_id, in trie (lexicographic) order
  trie.json                    nested {code: {code: ... item_id}} over the final SIDs
  item_embeddings.npy          the item vectors the SIDs were computed from (verification, re-indexing)
  sid_tokenizer/               SemanticIdTokenizer.save_pretrained
  README.txt                   how a serving stack uses it (`negrec.tokenizer.serving`, numpy only)

Everything below `load_export` runs on numpy (+ pyarrow or csv) only; it must not import torch.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negrec.io import atomic_dir, file_sha256, read_json, write_json
from negrec.rqvae.collisions import add_extra_level
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.tokenizer.sid import SemanticIdTokenizer

MANIFEST = "manifest.json"


@dataclass
class ExportConfig:
    out_dir: str = ""  # default: <run_dir>/export
    csv: bool = True  # also write the tables as CSV beside Parquet
    include_embeddings: bool = True  # item_embeddings.npy (needed by --verify)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def write_export(out_dir: Path, tok: SemanticIdTokenizer, quantizer: NumpyQuantizer, raw_codes: np.ndarray,
                 embeddings: np.ndarray | None, collision: str, source: dict, cfg: ExportConfig = ExportConfig()) -> dict:
    """Write the export folder atomically; returns the manifest."""
    import pandas as pd
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file({f"codebook_{i}": np.ascontiguousarray(c) for i, c in enumerate(quantizer.codebooks)}, str(tmp / "codebooks.safetensors"))
        (tmp / "codebooks").mkdir()
        for i, c in enumerate(quantizer.codebooks):
            _save_npy(tmp / "codebooks" / f"level_{i}.npy", c)
        quantizer.save(tmp)
        sid_strings = ["".join(tok.token(lvl, c) for lvl, c in enumerate(row)) for row in tok.codes.tolist()]
        table = pd.DataFrame({"item_id": tok.item_ids, "sid": sid_strings})
        for lvl in range(tok.levels):
            table[f"c{lvl}"] = tok.codes[:, lvl]
        for lvl in range(raw_codes.shape[1]):
            table[f"r{lvl}"] = raw_codes[:, lvl]
        reverse = table[["sid", "item_id"] + [f"c{lvl}" for lvl in range(tok.levels)]].iloc[tok.trie.order].reset_index(drop=True)
        for name, df in (("item_sid", table), ("sid_item", reverse)):
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            if cfg.csv:
                df.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "trie.json").write_text(json.dumps(tok.trie.to_nested(tok.item_ids), separators=(",", ":")))
        if embeddings is not None and cfg.include_embeddings:
            _save_npy(tmp / "item_embeddings.npy", np.ascontiguousarray(embeddings, dtype=np.float32))
        tok.save_pretrained(tmp / "sid_tokenizer")
        from negrec.tokenizer.serving import USAGE

        (tmp / "README.txt").write_text(USAGE.format(path=out_dir, input_dim=quantizer.input_dim))
        files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": "negrec-sid-export/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": quantizer.method,
            "levels": tok.levels,
            "codebook_sizes": tok.codebook_sizes,
            "semantic_levels": quantizer.levels,
            "semantic_codebook_sizes": quantizer.codebook_sizes,
            "collision": collision,
            "collision_rule": ("last level numbers the items sharing the semantic codes, in item table order"
                               if collision == "extra_level" else
                               "colliding items were moved to free trailing codes (Sinkhorn + Hungarian); item_sid holds the result"),
            "token_format": "<{level_char}_{code}>",
            "level_chars": tok.level_chars,
            "num_items": len(tok),
            "input_dim": quantizer.input_dim,
            "quantizer": quantizer.spec(),
            "files": files,
            "source": source,
            "serving": {
                "module": "negrec.tokenizer.serving",
                "requires": ["numpy", "safetensors", "pyyaml", "pyarrow (optional: falls back to the CSV tables)"],
                "usage": ("from negrec.tokenizer.serving import ExportedCodebook, filter_candidates; "
                          f"cb = ExportedCodebook.load({str(out_dir)!r}); sids = cb.assign(new_item_vectors); "
                          "emb = cb.decode(sids); keep = filter_candidates(candidate_emb, cb.decode(predicted_dislike_sids), theta=0.9)"),
                "readme": "README.txt",
            },
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def run_export(raw: dict, run_dir, out_dir=None, verify: bool = False) -> dict:
    """Export run_dir/tokenize (+ run_dir/encode embeddings) for serving; optionally verify it."""
    from negrec.config import section_config, to_dict
    from negrec.rqvae.encoders import load_encoded

    cfg = section_config(ExportConfig, raw, "export")
    run_dir = Path(run_dir)
    tdir = run_dir / "tokenize"
    for p in (tdir / "sid_tokenizer", tdir / "quantizer", tdir / "raw_codes.npy", tdir / "metrics.json"):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; run `negrec tokenize` first")
    tok = SemanticIdTokenizer.from_pretrained(tdir / "sid_tokenizer")
    quantizer = NumpyQuantizer.load(tdir / "quantizer")
    raw_table = np.load(tdir / "raw_codes.npy")
    item_ids, emb, _ = load_encoded(run_dir)
    if not np.array_equal(raw_table[:, 0], tok.item_ids) or not np.array_equal(item_ids, tok.item_ids):
        raise ValueError(f"{tdir}: item order differs between sid_tokenizer, raw_codes.npy and encode/; re-run tokenize")
    metrics = read_json(tdir / "metrics.json")
    out = Path(out_dir or cfg.out_dir or run_dir / "export")
    source = {"run_dir": str(run_dir.resolve()), "tokenize_config": metrics.get("config"),
              "tokenize_metrics": {k: metrics.get(k) for k in ("recon_mse", "collision_rate", "unique_fraction",
                                                                "items_needing_collision_handling")},
              "export_config": to_dict(cfg)}
    manifest = write_export(out, tok, quantizer, raw_table[:, 1:], emb, metrics.get("collision", "extra_level"), source, cfg)
    print(f"[export] {manifest['num_items']} items, {manifest['levels']} levels {manifest['codebook_sizes']}, "
          f"{len(manifest['files'])} files -> {out}")
    summary = {"out_dir": str(out), "files": len(manifest["files"]), "num_items": manifest["num_items"]}
    if verify:
        summary["verify"] = verify_export(out)
    return summary


# ---------------------------------------------------------------------------------------------
# numpy-only serving side
# ---------------------------------------------------------------------------------------------
class ExportError(ValueError):
    """An export folder is incomplete, corrupted, or does not reproduce its SIDs."""


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of item_sid as arrays: Parquet through pyarrow when present, else the CSV."""
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


@dataclass
class SidExport:
    """A loaded export: the numpy quantizer plus the item <-> SID tables."""

    path: Path
    manifest: dict
    quantizer: NumpyQuantizer
    item_ids: np.ndarray
    codes: np.ndarray  # final SIDs (n, levels)
    raw_codes: np.ndarray  # semantic codes before collision handling (n, semantic_levels)

    def token_string(self, codes) -> str:
        return "".join(f"<{self.manifest['level_chars'][lvl]}_{int(c)}>" for lvl, c in enumerate(codes))

    def assign_sids(self, embeddings: np.ndarray, unique: bool = False) -> np.ndarray:
        """Codes for item vectors (n, input_dim).

        unique=False: the raw semantic codes (n, semantic_levels), what re-quantisation gives.
        unique=True: full SIDs (n, levels) that collide neither with exported items nor each other:
        extra_level numbers new items after the existing ones sharing their codes; sinkhorn moves a
        colliding new item to the nearest free last-level code under its prefix. Rows that cannot
        be placed (level full) are -1.
        """
        raw, _ = self.quantizer.assign(np.asarray(embeddings, dtype=np.float32))
        if not unique:
            return raw
        taken = {tuple(c) for c in self.codes.tolist()}
        out = np.full((len(raw), self.manifest["levels"]), -1, dtype=np.int64)
        sizes = self.manifest["codebook_sizes"]
        if self.manifest["collision"] == "extra_level":
            for i, r in enumerate(raw.tolist()):
                free = next((k for k in range(sizes[-1]) if (*r, k) not in taken), None)
                if free is not None:
                    out[i] = (*r, free)
                    taken.add(tuple(out[i]))
            return out
        last_cb = self.quantizer.codebooks[-1]
        residual = self.quantizer.level_residuals(np.asarray(embeddings, dtype=np.float32))[-1]
        for i, r in enumerate(raw.tolist()):
            order = np.argsort(((residual[i][None] - last_cb) ** 2).sum(1))
            free = next((int(k) for k in order if (*r[:-1], int(k)) not in taken), None)
            if free is not None:
                out[i] = (*r[:-1], free)
                taken.add(tuple(out[i]))
        return out


def load_export(path, check_hashes: bool = True) -> SidExport:
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
    table = _read_table(path / "item_sid")
    codes = np.stack([table[f"c{lvl}"] for lvl in range(manifest["levels"])], 1).astype(np.int64)
    raw = np.stack([table[f"r{lvl}"] for lvl in range(manifest["semantic_levels"])], 1).astype(np.int64)
    return SidExport(path, manifest, NumpyQuantizer.load(path), table["item_id"].astype(np.int64), codes, raw)


def assign_sids(embeddings: np.ndarray, export_dir, unique: bool = False) -> np.ndarray:
    """Semantic codes for item vectors from an export folder (numpy only); see `SidExport.assign_sids`."""
    return load_export(export_dir, check_hashes=False).assign_sids(embeddings, unique=unique)


def verify_export(path) -> dict:
    """Reload the export with numpy only, re-quantise the stored item vectors, and check that every
    item gets its exported SID. Raises ExportError naming the first mismatching items."""
    t0 = time.time()
    ex = load_export(path)
    emb_path = Path(path) / "item_embeddings.npy"
    if not emb_path.exists():
        raise ExportError(f"{emb_path}: missing; export with include_embeddings: true to verify")
    emb = np.load(emb_path)
    raw = ex.assign_sids(emb)
    bad = np.flatnonzero((raw != ex.raw_codes).any(1))
    if len(bad):
        raise ExportError(f"{len(bad)} of {len(raw)} items re-quantise to other codes, e.g. items {ex.item_ids[bad[:5]].tolist()}")
    if ex.manifest["collision"] == "extra_level":
        expected, _, _ = add_extra_level(raw)
        bad = np.flatnonzero((expected != ex.codes).any(1))
    else:  # re-assigned SIDs are stored; items that did not collide keep their raw codes
        _, inverse, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
        alone = counts[inverse.reshape(-1)] == 1
        bad = np.flatnonzero(alone & (ex.codes != raw).any(1))
    if len(bad):
        raise ExportError(f"{len(bad)} items have SIDs the collision rule does not give, e.g. items {ex.item_ids[bad[:5]].tolist()}")
    if len(np.unique(ex.codes, axis=0)) != len(ex.codes):
        raise ExportError("exported SIDs are not unique")
    report = {"items": int(len(raw)), "mismatches": 0, "seconds": round(time.time() - t0, 3)}
    print(f"[export] verified with numpy: all {report['items']} items re-quantise to their exported SIDs ({report['seconds']}s)")
    return report
