"""`negrec tokenize`: quantize the encoded items into unique semantic IDs and save the SID tokenizer."""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negrec.config import section_config, to_dict
from negrec.io import read_json, write_json
from negrec.rqvae.metrics import codebook_metrics, format_metrics
from negrec.rqvae.numpy_quantizer import NumpyQuantizer
from negrec.rqvae.quantize import fit_quantizer, unique_sids
from negrec.tokenizer.config import TokenizeConfig, auto_codebook_size
from negrec.tokenizer.sid import SemanticIdTokenizer


@dataclass
class TokenizeResult:
    tokenizer: SemanticIdTokenizer
    quantizer: NumpyQuantizer
    raw_codes: np.ndarray  # (n, L) codes before collision handling, rows in item order
    metrics: dict


def sized_config(cfg: TokenizeConfig, n_items: int) -> TokenizeConfig:
    """`cfg` with `codebook_size: 0` replaced by the size the catalogue calls for."""
    if cfg.codebook_size:
        return cfg
    size = auto_codebook_size(n_items, cfg.levels)
    print(f"[tokenize] codebook_size 0: {size} codes per level for {n_items} items")
    return dataclasses.replace(cfg, codebook_size=size)


def tokenize_items(cfg: TokenizeConfig, item_ids: np.ndarray, x: np.ndarray, checkpoint: Path | None = None,
                   tb_dir: Path | None = None, resume_key: str = "") -> TokenizeResult:
    """Fit the quantizer on item vectors `x` (rows = `item_ids`) and build the SID tokenizer."""
    cfg = sized_config(cfg, len(item_ids))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(item_ids):
        raise ValueError(f"item vectors must be (n_items, d); got {x.shape} for {len(item_ids)} items")
    if not np.isfinite(x).all():
        raise ValueError("item vectors contain NaN or inf")
    quantizer, train = fit_quantizer(x, cfg, checkpoint=checkpoint, tb_dir=tb_dir, resume_key=resume_key)
    t0 = time.time()
    sids = unique_sids(quantizer, x, cfg)
    assign_s = time.time() - t0
    err = ((x - quantizer.reconstruct(sids["raw_codes"])) ** 2).sum(1)
    metrics = codebook_metrics(sids["raw_codes"], quantizer.codebook_sizes)
    metrics.update({
        "method": cfg.method,
        "collision": cfg.collision,
        "recon_mse": float(err.mean() / x.shape[1]),  # per coordinate
        "recon_sq_err": float(err.mean()),  # per item, summed over dims
        "recon_rel_err": float(err.sum() / max((x ** 2).sum(), 1e-12)),
        "items_needing_collision_handling": sids["n_handled"],
        "collision_moves_by_depth": {str(k): v for k, v in sids.get("moved_at_depth", {}).items()},
        "final_levels": len(sids["codebook_sizes"]),
        "final_codebook_sizes": sids["codebook_sizes"],
        "final_unique": bool(len(np.unique(sids["codes"], axis=0)) == len(x)),
        "assign_items_per_s": round(len(x) / max(assign_s, 1e-9), 1),
        "train": {k: v for k, v in train.items() if k != "epochs"},
    })
    if train.get("epochs"):
        metrics["train"]["last_epoch"] = train["epochs"][-1]
    tok = SemanticIdTokenizer.from_codes(
        item_ids, sids["codes"], sids["codebook_sizes"], centroids=quantizer.codebooks, level_chars=cfg.level_chars,
        metadata={"method": cfg.method, "collision": cfg.collision, "centroid_space": "rqvae latent" if cfg.method == "rqvae" else "item vector",
                  "semantic_levels": quantizer.levels})
    return TokenizeResult(tok, quantizer, sids["raw_codes"], metrics)


def run_tokenize(raw: dict, run_dir) -> dict:
    """Read run_dir/encode, write run_dir/tokenize/{sid_tokenizer/, quantizer/, raw_codes.npy, metrics.json}."""
    from negrec.encode import load_encoded

    from negrec.contract import fingerprint, stage_folder, up_to_date, work_dir

    cfg = section_config(TokenizeConfig, raw, "tokenize")
    run_dir = Path(run_dir)
    out = run_dir / "tokenize"
    if up_to_date(raw, run_dir, "tokenize"):
        return read_json(out / "metrics.json")
    item_ids, x, _ = load_encoded(run_dir)
    auto_sized = cfg.codebook_size == 0  # before sizing: the metrics record the sized codebooks
    cfg = sized_config(cfg, len(item_ids))
    work = work_dir(run_dir, "tokenize")  # the RQ-VAE checkpoint: outside the folder that is swapped
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = tokenize_items(cfg, item_ids, x, checkpoint=work / "checkpoint.pt", tb_dir=run_dir / "tb" / "tokenize",
                         resume_key=fingerprint(raw, run_dir, "tokenize"))
    metrics = res.metrics
    metrics["seconds"] = round(time.time() - t0, 2)
    metrics["config"] = to_dict(cfg)
    with stage_folder(raw, run_dir, "tokenize") as tmp:
        res.tokenizer.save_pretrained(tmp / "sid_tokenizer")
        res.quantizer.save(tmp / "quantizer")
        with open(tmp / "raw_codes.npy", "wb") as f:
            np.save(f, np.concatenate([item_ids[:, None], res.raw_codes], axis=1))
        write_json(tmp / "metrics.json", metrics)
    print(f"[tokenize] {cfg.method} {cfg.levels}x{cfg.codebook_size}, collisions by {cfg.collision}: "
          f"{metrics['items_needing_collision_handling']} items needed it; final SID levels {metrics['final_codebook_sizes']}")
    print(format_metrics(metrics))
    print(f"  recon MSE {metrics['recon_mse']:.3g} per coordinate (relative error {metrics['recon_rel_err']:.1%}); "
          f"{metrics['seconds']}s -> {out}")
    warning = collapse_warning(metrics, auto_sized)
    if warning:
        print(f"[tokenize] warning: {warning}", file=sys.stderr)
    return metrics


def collapse_warning(metrics: dict, auto_sized: bool) -> str:
    """A line when most items share their quantized codes (the SIDs then tell items apart by the
    collision step alone), else "", naming the settings not yet tried (`auto_sized`: the config asked
    for codebook_size 0). ML-100K's default: 14% share them."""
    share = metrics["collision_rate"]
    if share <= 0.5:
        return ""
    worst = min(metrics["levels"], key=lambda lv: lv["used"] / lv["size"])
    cfg = metrics.get("config") or {}
    tries = [setting for setting, tried in (("tokenize.codebook_size: 0 (sized to the catalogue)", auto_sized),
                                            ("tokenize.method: rqkmeans", cfg.get("method") == "rqkmeans")) if not tried]
    return (f"{share:.0%} of the {metrics['n_items']} items share their quantized codes with another item (level "
            f"{worst['level']} uses {worst['used']} of {worst['size']} codes): the item vectors carry little to tell "
            f"them apart (encode's warnings say which have none)" + (f"; try {' or '.join(tries)}" if tries else ""))
