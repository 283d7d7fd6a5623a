"""A policy's candidates re-ranked with a baseline's ranking: a row of its own, never the policy's.

The LLM's constrained generation decides which items are candidates (its top K); the baseline only
re-orders them, by weighted reciprocal rank fusion (Cormack et al., 2009):

    score(item) = 1 / (rrf_k + 1 + policy rank) + weight / (rrf_k + 1 + baseline rank)

(ranks 0-based; the baseline term is 0 for an item outside the baseline's list), ties kept in the
policy's order. So Recall@K at the policy's K is the policy's own, and the fusion can only move
items the LLM proposed; `weight` sets how much the baseline counts (0: the policy's order).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

KEYS = ["user_id", "cut_ts"]
SEP = "+"  # a blend's method name: "<policy>+<baseline>"


@dataclass
class BlendConfig:
    """Section `blend`, read by `negrec evaluate` alone (changing it reruns no ranking): one re-ranked
    row per named baseline the run scored; [] for none."""

    baselines: list[str] = field(default_factory=lambda: ["user_knn"])
    weight: float = 0.5
    rrf_k: int = 60

    def __post_init__(self):
        check_fusion(self.weight, self.rrf_k)


def check_fusion(weight: float, rrf_k: float) -> None:
    """Refuse a negative weight or rank offset (the config's check and `rerank`'s)."""
    if weight < 0 or rrf_k < 0:
        raise ValueError(f"blend.weight and blend.rrf_k must be >= 0, got {weight} and {rrf_k}")


def blend_name(policy: str, baseline: str) -> str:
    return f"{policy}{SEP}{baseline}"


def is_blend(method: str) -> bool:
    return SEP in method


def rerank(policy: pd.DataFrame, baseline: pd.DataFrame, weight: float = 0.5, rrf_k: int = 60) -> pd.DataFrame:
    """`policy`'s items per (user, cut) row ordered by the fused score above; both frames in the
    predictions layout (user_id, cut_ts, rank, item_id, score), and so is the result (score: the
    fused score). Rows the baseline lacks keep the policy's order."""
    check_fusion(weight, rrf_k)
    base = (baseline[KEYS + ["item_id", "rank"]].sort_values("rank")
            .drop_duplicates(KEYS + ["item_id"]).rename(columns={"rank": "base_rank"}))
    out = policy[KEYS + ["item_id", "rank"]].merge(base, on=KEYS + ["item_id"], how="left")
    out["score"] = 1.0 / (rrf_k + 1.0 + out["rank"]) + (weight / (rrf_k + 1.0 + out["base_rank"])).fillna(0.0)
    out = out.sort_values(KEYS + ["score", "rank"], ascending=[True, True, False, True], kind="stable")
    out["rank"] = out.groupby(KEYS).cumcount()
    return out[KEYS + ["rank", "item_id", "score"]].reset_index(drop=True).astype(
        {"user_id": "int64", "cut_ts": "int64", "rank": "int64", "item_id": "int64", "score": "float64"})
