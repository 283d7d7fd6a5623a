"""Item encoders: text (sentence-transformers), collaborative (signed SVD), categorical features,
and their fused, weighted concatenation. `run_encode` is the `negrec encode` stage."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from negrec.config import section_config, to_dict
from negrec.data.schema import FEATURE_PREFIX, feature_columns
from negrec.io import atomic_path, read_json, write_json
from negrec.encode.config import PACKAGED_MINILM, EncodeConfig
from negrec.runtime import resolve_device


def resolve_text_model(name: str) -> Path:
    """A local sentence-transformers folder: `name` itself, or the `model/` folder of an installed package."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p.resolve()
    try:
        import importlib

        pkg = importlib.import_module(name)
        model_dir = Path(pkg.__file__).parent / "model"
        if model_dir.is_dir():
            return model_dir
    except ImportError:
        pass
    hint = f" (pip install {PACKAGED_MINILM.replace('_', '-')})" if name == PACKAGED_MINILM else ""
    raise FileNotFoundError(f"encode.text_model: {name!r} is neither a local model folder nor an installed model package{hint}")


def _model_fingerprint(model_dir: Path) -> str:
    """Cheap identity of a model folder: file names, sizes and the small config files' bytes."""
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(model_dir)}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()


def encode_texts(texts: list[str], model: str = PACKAGED_MINILM, batch_size: int = 256, device: str = "cpu",
                 cache_dir: str | None = None) -> np.ndarray:
    """(n, d) L2-normalised sentence embeddings, cached on disk by a hash of the model and the texts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the model is a local folder
    model_dir = resolve_text_model(model)
    cache_file = None
    if cache_dir:
        key = hashlib.sha256(_model_fingerprint(model_dir).encode())
        for t in texts:
            key.update(t.encode("utf-8", "replace") + b"\x00")
        cache_file = Path(cache_dir).expanduser() / f"{key.hexdigest()[:32]}.npy"
        if cache_file.exists():
            emb = np.load(cache_file)
            if emb.shape[0] == len(texts):
                print(f"[encode] text embeddings from cache {cache_file}")
                return emb
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device=str(resolve_device(device)), local_files_only=True)
    emb = st.encode(list(texts), batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True,
                    normalize_embeddings=True).astype(np.float32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, emb)
    return emb


def collaborative_vectors(interactions: pd.DataFrame, item_ids: np.ndarray, dim: int = 64,
                          neutral_value: float = 0.0, seed: int = 0) -> np.ndarray:
    """(n_items, dim) item factors from a truncated SVD of the signed user x item matrix.

    Negatives enter as -1 and positives as +1 (repeats add up), so items that the same users
    dislike end up close, not just items they consume. Items without interactions get zeros.
    """
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    for col in ("user_id", "item_id", "feedback"):
        if col not in interactions.columns:
            raise KeyError(f"interactions: missing column {col!r} needed for collaborative vectors")
    item_pos = pd.Index(item_ids)
    rows = item_pos.get_indexer(interactions["item_id"].to_numpy())
    keep = rows >= 0
    users, user_rows = np.unique(interactions["user_id"].to_numpy()[keep], return_inverse=True)
    fb = interactions["feedback"].to_numpy()[keep].astype(np.float32)
    values = np.where(fb == 0, np.float32(neutral_value), np.sign(fb))
    mat = csr_matrix((values, (rows[keep], user_rows)), shape=(len(item_ids), max(len(users), 1)), dtype=np.float32)
    mat.sum_duplicates()
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    k = min(dim, min(mat.shape) - 1)
    if k < 1 or mat.nnz == 0:
        return out
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    out[:, :k] = svd.fit_transform(mat).astype(np.float32)
    return out


def feature_vectors(items: pd.DataFrame, min_count: int = 5) -> tuple[np.ndarray, list[str]]:
    """One-hot of every `feat_*` column (rare values pooled into `<other>`); returns (matrix, column names)."""
    cols = feature_columns(items)
    if not cols:
        return np.zeros((len(items), 0), dtype=np.float32), []
    parts = []
    for c in cols:
        v = items[c].astype("string").fillna("<na>")
        counts = v.value_counts()
        v = v.where(v.map(counts).to_numpy() >= min_count, "<other>")
        parts.append(pd.get_dummies(v, prefix=c, prefix_sep="="))
    onehot = pd.concat(parts, axis=1)
    return onehot.to_numpy(dtype=np.float32), list(onehot.columns)


def _l2_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def fuse(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Row-normalise each part, scale by its weight, concatenate, normalise the whole vector."""
    blocks = [weights[name] * _l2_rows(x.astype(np.float32)) for name, x in parts.items() if weights.get(name, 0) > 0 and x.shape[1]]
    if not blocks:
        raise ValueError("encode: no item vector part has a positive weight and data: give the items text "
                         "(an items table with a title or text column) or set encode.collab_weight above 0")
    return _l2_rows(np.concatenate(blocks, axis=1))


def encode_items(cfg: EncodeConfig, items: pd.DataFrame, interactions=None) -> tuple[np.ndarray, dict]:
    """Fused item vectors (rows in `items` order) and a meta dict describing the parts.
    `interactions`: the fitting log, or a function that loads it (only called when it is needed).
    Items with no text and no features get collaborative vectors alone, whatever `collab_weight` says:
    a log without an items table still trains."""
    if "item_id" not in items.columns:
        raise KeyError("items: missing column 'item_id'")
    item_ids = items["item_id"].to_numpy(np.int64)
    parts, weights, meta = {}, {}, {"parts": {}}
    if cfg.text_weight > 0:
        if cfg.text_field not in items.columns:
            raise KeyError(f"items: missing column {cfg.text_field!r} (encode.text_field)")
        texts = items[cfg.text_field].fillna("").astype(str).tolist()
        if any(t.strip() for t in texts):
            parts["text"], weights["text"] = encode_texts(texts, cfg.text_model, cfg.batch_size, cfg.device, cfg.cache_dir or None), cfg.text_weight
            meta["parts"]["text"] = {"dim": parts["text"].shape[1], "model": str(resolve_text_model(cfg.text_model)),
                                     "empty_texts": int(sum(not t.strip() for t in texts))}
        else:
            print(f"[encode] items have no {cfg.text_field!r} text: text part skipped")
    if cfg.collab_weight > 0:
        _add_collab(parts, weights, meta, cfg, item_ids, interactions, cfg.collab_weight)
    if cfg.features_weight > 0:
        feats, names = feature_vectors(items, cfg.feature_min_count)
        if feats.shape[1]:
            parts["features"], weights["features"] = feats, cfg.features_weight
            meta["parts"]["features"] = {"dim": feats.shape[1], "columns": sorted({n.split("=")[0] for n in names})}
        else:
            print("[encode] items have no feat_* columns: features part skipped")
    elif unused := [c[len(FEATURE_PREFIX):] for c in feature_columns(items)]:  # named in data.generic.feature_columns
        print(f"[encode] warning: the items' feature columns {unused} "
              "are not in the item vectors (encode.features_weight: 0); set encode.features_weight (e.g. 0.5, as "
              "configs/kuairand.yaml) to use them", file=sys.stderr)
    if not parts and interactions is not None:
        print("[encode] no text or feature vectors (none in the items, or weight 0): collaborative vectors only "
              "(encode.collab_weight 1.0)")
        _add_collab(parts, weights, meta, cfg, item_ids, interactions, 1.0)
    emb = fuse(parts, weights)
    blank = int((~emb.any(axis=1)).sum())
    meta.update({"n_items": len(item_ids), "dim": emb.shape[1], "weights": weights, "items_without_signal": blank})
    if blank:
        _warn_blank_items(blank, len(item_ids))
    return emb, meta


def _warn_blank_items(blank: int, n: int) -> None:
    """Items with no text, no features and no interactions in the fitting log (on a log without an
    items table: the items first seen after the cuts) get a zero vector, so the tokenizer gives them
    one code tuple and its collision step alone tells them apart: say so, it is not a bug."""
    print(f"[encode] warning: {blank:,} of {n:,} items ({blank / n:.0%}) have no text, features or interactions "
          "before the cuts: their vectors are zero, so they share one SID prefix, told apart by the collision "
          "step alone (an items table with text or features gives them vectors)")


def _add_collab(parts: dict, weights: dict, meta: dict, cfg: EncodeConfig, item_ids, interactions, weight: float) -> None:
    if interactions is None:
        raise ValueError("encode.collab_weight > 0 needs interactions")
    log = interactions() if callable(interactions) else interactions
    parts["collab"] = collaborative_vectors(log, item_ids, cfg.svd_dim, cfg.neutral_value, cfg.seed)
    weights["collab"] = weight
    meta["parts"]["collab"] = {"dim": cfg.svd_dim, "split": cfg.collab_split, "n_interactions": len(log),
                               "items_without_interactions": int((np.abs(parts["collab"]).sum(1) == 0).sum())}


def run_encode(raw: dict, run_dir) -> dict:
    """`negrec encode`: read run_dir/data, write run_dir/encode/{embeddings.npy, item_ids.npy, meta.json}."""
    from negrec.data import Prepared

    from negrec.contract import stage_folder, up_to_date

    cfg = section_config(EncodeConfig, raw, "encode")
    run_dir = Path(run_dir)
    out = run_dir / "encode"
    if up_to_date(raw, run_dir, "encode"):
        return read_json(out / "meta.json")
    t0 = time.time()
    prep = Prepared.load(run_dir / "data")
    emb, meta = encode_items(cfg, prep.items, lambda: prep.fit_log(cfg.collab_split))
    meta.update({"config": to_dict(cfg), "seconds": round(time.time() - t0, 2)})
    with stage_folder(raw, run_dir, "encode") as tmp:
        for name, arr in (("embeddings.npy", emb), ("item_ids.npy", prep.items["item_id"].to_numpy(np.int64))):
            with open(tmp / name, "wb") as f:
                np.save(f, arr)
        write_json(tmp / "meta.json", meta)
    dims = ", ".join(f"{k} {v['dim']}d x{meta['weights'][k]}" for k, v in meta["parts"].items())
    print(f"[encode] {meta['n_items']} items -> {meta['dim']}-d fused vectors ({dims}) in {meta['seconds']}s -> {out}")
    return meta


def load_encoded(run_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """(item_ids, embeddings, meta) written by `run_encode`."""
    d = Path(run_dir) / "encode"
    for name in ("embeddings.npy", "item_ids.npy", "meta.json"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name}: missing; run `negrec encode` first")
    emb, ids = np.load(d / "embeddings.npy"), np.load(d / "item_ids.npy")
    if len(emb) != len(ids):
        raise ValueError(f"{d}: embeddings.npy has {len(emb)} rows but item_ids.npy {len(ids)}")
    return ids, emb, read_json(d / "meta.json")
