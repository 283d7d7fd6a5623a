"""Codebook health: usage, perplexity, collisions, items per first-level code."""
from __future__ import annotations

import numpy as np

from negrec.rqvae.collisions import collision_rate


def codebook_metrics(codes: np.ndarray, codebook_sizes: list[int]) -> dict:
    """Metrics of raw (pre-collision) codes (n, L)."""
    n = len(codes)
    per_level = []
    for lvl, k in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, lvl], minlength=k)
        p = counts[counts > 0] / max(n, 1)
        entropy = float(-(p * np.log(p)).sum())
        per_level.append({
            "level": lvl,
            "used": int((counts > 0).sum()),
            "size": int(k),
            "unused_share": round(float((counts == 0).mean()), 4),
            "perplexity": round(float(np.exp(entropy)), 2),
            "entropy_bits": round(entropy / np.log(2), 3),
        })
    first = np.bincount(codes[:, 0], minlength=codebook_sizes[0]) if n else np.zeros(1, int)
    used_first = first[first > 0] if (first > 0).any() else np.zeros(1, int)
    n_unique = len(np.unique(codes, axis=0)) if n else 0
    return {
        "n_items": n,
        "levels": per_level,
        "items_per_first_code": {"min": int(used_first.min()), "median": float(np.median(used_first)),
                                 "max": int(used_first.max()), "min_over_all_codes": int(first.min())},
        "collision_rate": round(collision_rate(codes), 4),
        "unique_fraction": round(n_unique / max(n, 1), 4),
    }


def format_metrics(m: dict) -> str:
    lines = [f"  items {m['n_items']}, unique raw SIDs {m['unique_fraction']:.1%}, collision rate {m['collision_rate']:.1%}"]
    for lv in m["levels"]:
        lines.append(f"  level {lv['level']}: used {lv['used']}/{lv['size']} (unused {lv['unused_share']:.1%}), "
                     f"perplexity {lv['perplexity']:.1f}, entropy {lv['entropy_bits']:.2f} bits")
    f = m["items_per_first_code"]
    lines.append(f"  items per first-level code (used codes): min {f['min']}, median {f['median']:.0f}, max {f['max']}")
    return "\n".join(lines)
