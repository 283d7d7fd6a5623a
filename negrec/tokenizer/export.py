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

This module writes the export; `negrec.tokenizer.serving` loads it (numpy only) and verifies it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negrec.io import atomic_dir, file_sha256, read_json, write_json
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.tokenizer.serving import MANIFEST, verify_export
from negrec.tokenizer.sid import SemanticIdTokenizer, format_sid

USAGE = """\
negrec codebook export: how to use it in a serving stack (numpy only; no torch, no pandas)

  pip install negrec   # or vendor negrec/tokenizer/serving.py + sid.py, negrec/io.py and negrec/rqvae/

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
  python -c "from negrec.tokenizer.serving import verify_export; verify_export('{path}')"
"""


@dataclass
class ExportConfig:
    out_dir: str = ""  # default: <run_dir>/export
    csv: bool = True  # also write the tables as CSV beside Parquet
    include_embeddings: bool = True  # item_embeddings.npy (needed by --verify)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def write_export(out_dir: Path, tok: SemanticIdTokenizer, quantizer: NumpyQuantizer, raw_codes: np.ndarray,
                 embeddings: np.ndarray | None, collision: str, source: dict, cfg: ExportConfig = ExportConfig(),
                 final_dir: Path | None = None) -> dict:
    """Write the export folder atomically; returns the manifest. `final_dir`: where the folder will
    live when `out_dir` is a staging folder (its README names that path)."""
    import pandas as pd
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file({f"codebook_{i}": np.ascontiguousarray(c) for i, c in enumerate(quantizer.codebooks)}, str(tmp / "codebooks.safetensors"))
        (tmp / "codebooks").mkdir()
        for i, c in enumerate(quantizer.codebooks):
            _save_npy(tmp / "codebooks" / f"level_{i}.npy", c)
        quantizer.save(tmp)
        sid_strings = [format_sid(row, tok.level_chars) for row in tok.codes.tolist()]
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
        (tmp / "README.txt").write_text(USAGE.format(path=final_dir or out_dir, input_dim=quantizer.input_dim))
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
    """Export run_dir/tokenize (+ run_dir/encode embeddings) for serving, unless done by the stage
    contract; optionally verify it."""
    from negrec.config import section_config
    from negrec.contract import stage_dir, stage_folder, up_to_date

    cfg = section_config(ExportConfig, raw, "export")
    run_dir = Path(run_dir)
    if out_dir:  # --out: the stage's folder for this call (its marker goes there)
        raw = {**raw, "export": {**(raw.get("export") or {}), "out_dir": str(out_dir)}}
        cfg = section_config(ExportConfig, raw, "export")
    out = stage_dir(raw, run_dir, "export")
    summary = {"out_dir": str(out)}
    if up_to_date(raw, run_dir, "export"):
        manifest = read_json(out / MANIFEST)
    else:
        check_export_target(out, run_dir)
        with stage_folder(raw, run_dir, "export") as tmp:
            manifest = _export(cfg, run_dir, tmp, final_dir=out)
        print(f"[export] {manifest['num_items']} items, {manifest['levels']} levels {manifest['codebook_sizes']}, "
              f"{len(manifest['files'])} files -> {out}")
    summary.update({"files": len(manifest["files"]), "num_items": manifest["num_items"]})
    if (out / "item_id_map.parquet").exists():
        summary["item_id_map"] = str(out / "item_id_map.parquet")
    if verify:
        summary["verify"] = verify_export(out)
    return summary


def check_export_target(out: Path, run_dir: Path) -> None:
    """The export replaces its folder whole: refuse one that holds the run folder, or that exists
    with other content than a negrec export (`--out ~/models` must not delete ~/models)."""
    out, run = Path(out).resolve(), Path(run_dir).resolve()
    if run == out or out in run.parents:
        raise ValueError(f"export out_dir {out}: holds the run folder {run}, which the export would replace; "
                         "choose a folder of its own")
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists()):
        raise ValueError(f"export out_dir {out}: exists and is not a negrec export (no {MANIFEST}); the export "
                         "replaces its folder whole: choose a new or empty folder")


def _export(cfg: ExportConfig, run_dir: Path, out: Path, final_dir: Path | None = None) -> dict:
    """Write the export of run_dir/tokenize and run_dir/encode into `out`; returns the manifest."""
    from negrec.config import to_dict
    from negrec.encode import load_encoded

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
    source = {"run_dir": str(run_dir.resolve()), "tokenize_config": metrics.get("config"),
              "tokenize_metrics": {k: metrics.get(k) for k in ("recon_mse", "collision_rate", "unique_fraction",
                                                                "items_needing_collision_handling")},
              "export_config": to_dict(cfg)}
    manifest = write_export(out, tok, quantizer, raw_table[:, 1:], emb, metrics.get("collision", "extra_level"), source, cfg,
                            final_dir=final_dir)
    id_map = run_dir / "data" / "id_map_items.parquet"  # the log's own item ids, where the run mapped them
    if id_map.exists():
        import shutil

        shutil.copyfile(id_map, out / "item_id_map.parquet")
    return manifest
