"""Offline future-negative metrics, vectorised over users (numpy; no loop per user per item).

Definitions (a "row" is one (user, cut) pair; ts in UTC seconds, H in days):
- F_H: the items the user gives negative feedback to in [cut, cut + H days), minus the items
  in the user's context (everything the user touched before the cut).
- Rankings are cleaned first: padding, repeated items and context items are dropped and the
  rest move up (`negrec.rewards.matching.clean_rankings`), so a context item is never counted,
  neither as a hit nor as a slot.
- recall@K = |top-K ∩ F_H| / min(K, |F_H|) (capped, so a perfect top-K scores 1 even when
  |F_H| > K); std_recall@K = |top-K ∩ F_H| / |F_H| (the standard IR recall, as in ranx/trec_eval);
  hit@K = 1 if |top-K ∩ F_H| > 0; ndcg@K with binary gains and the ideal DCG of min(K, |F_H|) hits;
  mrr@K = 1 / rank of the first hit within the top K (0 if none). Rows with an empty F_H are left
  out of these means; their count is reported (`n_empty_h{H}`).
- per_row=True adds `per_row`: a frame of the per-row values of the main metrics (recall, std_recall,
  hit, ndcg, mrr at each K of `ks`, fhr, next_hit) with each row's user_id, NaN where F_H is empty,
  so that confidence intervals can be taken over users (`negrec.eval.stats`).
- fhr@K: the paper's Future Hit Rate, the share of rows with at least one of the top K in F_H
  (the same quantity as hit@K, reported under the paper's name at K = fhr_k).
- next_hit@K: conventional next-negative Hit@K; the target is the item(s) of the user's first
  negative event after the cut (all items sharing that first timestamp count).
- coll_recall@K / coll_hit@K: the same against GTS = F_H widened by each item's top Swing
  co-negatives computed on training negatives only (the CoNRec reward's set).
- prefix{l}_recall@K: share of F_H whose first l SID codes match some top-K item's, counted at
  most K and divided by min(K, |F_H|) (so l = L gives recall@K).
- lt_user/...: rows of users with fewer than `long_tail_user_negatives` training negatives.
  lt_item/...: F_H restricted to items with fewer than `long_tail_item_negatives` training
  negatives (rows whose restricted F_H is empty are left out).
- candidate_acc: see `candidate_sets`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from negrec.data.splits import DAY
from negrec.rewards.matching import (
    ItemSets,
    ItemSimilarity,
    clean_rankings,
    hits,
    isin_rows,
    lookup,
    prefix_key_table,
    swing_from_log,
    widen_with_co_negatives,
)

NEGATIVE_KINDS = {"hated", "skipped", "low rating", "neg", "negative", "dislike"}
POSITIVE_KINDS = {"liked", "pos", "positive", "like"}


@dataclass
class MetricsConfig:
    """Metric settings (fields of the YAML section `eval`)."""

    ks: list = field(default_factory=lambda: [5, 10, 20, 50])
    horizons: list = field(default_factory=lambda: [1, 3, 7])
    main_horizon: int = 7
    fhr_k: int = 20
    swing_top_n: int = 10  # collaborative variant: co-negatives added per future negative
    swing_alpha: float = 1.0
    swing_max_items_per_user: int = 200
    prefix_levels: list = field(default_factory=lambda: [1, 2])
    long_tail_user_negatives: int = 3
    long_tail_item_negatives: int = 5
    candidate_size: int = 20
    bootstrap: int = 1000         # bootstrap replicates (over users) of every confidence interval
    bootstrap_seed: int = 0
    ci_level: float = 0.95


# ---- per-row ranking metrics ----------------------------------------------------------------
def rank_metrics(rankings: np.ndarray, targets: ItemSets, ks, hit: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-row recall@K (capped), std_recall@K, hit@K, ndcg@K, mrr@K (NaN where the target set is empty).

    `rankings` must be cleaned (see `clean_rankings`) and at least max(ks) wide; `hit` is
    `hits(rankings, targets)` when the caller has it already.
    """
    hit = hits(rankings, targets) if hit is None else hit
    n_t = targets.lengths
    empty = n_t == 0
    discount = 1.0 / np.log2(np.arange(2, rankings.shape[1] + 2))
    ideal = np.concatenate([[1.0], np.cumsum(discount)])  # ideal[m] = DCG of m hits (ideal[0] unused)
    # 0-based place of each row's first hit (width if none): mrr@K for every K from one argmax
    first = np.where(hit.any(1), hit.argmax(1), hit.shape[1]) if hit.size else np.zeros(len(hit), dtype=np.int64)
    out = {}
    for k in ks:
        h = hit[:, :k]
        n_hit = h.sum(1)
        denom = np.minimum(k, n_t)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"recall@{k}"] = np.where(empty, np.nan, n_hit / np.maximum(denom, 1))
            out[f"std_recall@{k}"] = np.where(empty, np.nan, n_hit / np.maximum(n_t, 1))
            out[f"hit@{k}"] = np.where(empty, np.nan, (n_hit > 0).astype(float))
            out[f"ndcg@{k}"] = np.where(empty, np.nan, (h * discount[:k]).sum(1) / ideal[np.maximum(denom, 1)])
            out[f"mrr@{k}"] = np.where(empty, np.nan, np.where(first < k, 1.0 / (first + 1), 0.0))
    return out


def prefix_recall(rankings: np.ndarray, targets: ItemSets, ks, sid_tok, level: int) -> dict[str, np.ndarray]:
    """Per-row share of targets whose level-`level` SID prefix some top-K item shares."""
    table = prefix_key_table(sid_tok, level)
    pred_keys = lookup(table, rankings)
    target_keys = lookup(table, targets.indices)
    n_t = targets.lengths
    out = {}
    for k in ks:
        covered = isin_rows(targets.rows, target_keys, ItemSets.from_dense(pred_keys[:, :k])) & (target_keys >= 0)
        n_cov = np.bincount(targets.rows[covered], minlength=len(targets))
        denom = np.minimum(k, n_t)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"prefix{level}_recall@{k}"] = np.where(n_t == 0, np.nan, np.minimum(n_cov, k) / np.maximum(denom, 1))
    return out


def _mean(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    v = values if mask is None else values[mask]
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


def _put(out: dict, prefix: str, sfx: str, per_row: dict, mask=None) -> None:
    """Means of per-row values into `out` as {prefix}{name}{sfx}."""
    for name, values in per_row.items():
        out[f"{prefix}{name}{sfx}"] = _mean(values, mask)


def _drop_context(sets: ItemSets, context: ItemSets | None) -> ItemSets:
    return sets if context is None else sets.drop(isin_rows(sets.rows, sets.indices, context))


def _at_ks(per_row: dict, ks) -> dict:
    """The entries of rank_metrics' output at the K values in `ks` (it also has fhr_k)."""
    return {k: v for k, v in per_row.items() if int(k.split("@")[1]) in ks}


def evaluate_arrays(
    rankings: np.ndarray,
    future_neg: dict[int, ItemSets],
    cfg: MetricsConfig | None = None,
    context: ItemSets | None = None,
    next_neg: ItemSets | None = None,
    user_train_negatives: np.ndarray | None = None,
    item_train_negatives: np.ndarray | None = None,
    swing: ItemSimilarity | None = None,
    sid_tok=None,
    per_row: bool = False,
    row_users: np.ndarray | None = None,
) -> dict:
    """All ranking metrics from arrays: rankings (n, >=max K) item ids, F_H per horizon.

    user_train_negatives: (n,) training negatives of each row's user (long-tail users);
    item_train_negatives: item id -> training negatives (long-tail items); swing for the
    collaborative variant; sid_tok for SID-prefix recall. Any of them may be None (skipped).
    per_row: also return `per_row`, a frame of per-row values (user_id = row_users, default the row index).
    """
    cfg = cfg or MetricsConfig()
    ks = sorted(int(k) for k in set(cfg.ks) | {cfg.fhr_k})
    n = len(rankings)
    ranked = clean_rankings(rankings, context, k=max(ks))
    out: dict = {"n_rows": n}
    rows: dict = {}  # per-row values of the main metrics, keyed like their means in `out`
    lt_user = None
    if user_train_negatives is not None:
        lt_user = np.asarray(user_train_negatives) < cfg.long_tail_user_negatives
        out["n_long_tail_user_rows"] = int(lt_user.sum())
    item_negs = None if item_train_negatives is None else np.asarray(item_train_negatives)
    # long-tail-ness of each ranked item: the same for every horizon
    lt_ranked = None if item_negs is None else lookup(item_negs, ranked, missing=0) < cfg.long_tail_item_negatives
    for h in sorted(future_neg):
        targets = _drop_context(future_neg[h], context)
        if len(targets) != n:
            raise ValueError(f"F_H for H={h} has {len(targets)} rows for {n} rankings")
        sfx = f"_h{h}"
        empty = targets.lengths == 0
        out[f"n_empty{sfx}"] = int(empty.sum())
        out[f"n_eval{sfx}"] = int((~empty).sum())
        hit = hits(ranked, targets)
        values = rank_metrics(ranked, targets, ks, hit=hit)
        main = _at_ks(values, cfg.ks)
        main[f"fhr@{cfg.fhr_k}"] = values[f"hit@{cfg.fhr_k}"]
        _put(out, "", sfx, main)
        rows.update({f"{name}{sfx}": v for name, v in main.items()})
        _long_tail_variants(out, ranked, targets, values, hit, ks, sfx, cfg, lt_user, (item_negs, lt_ranked))
        _extra_variants(out, ranked, targets, ks, sfx, cfg, context, swing, sid_tok)
    if next_neg is not None:
        nxt = _drop_context(next_neg, context)
        out["n_eval_next"] = int((nxt.lengths > 0).sum())
        nxt_hit = {f"next_{k}": v for k, v in rank_metrics(ranked, nxt, ks).items() if k.startswith("hit")}
        _put(out, "", "", nxt_hit)
        rows.update(nxt_hit)
    if per_row:
        users = np.arange(n) if row_users is None else np.asarray(row_users)
        out["per_row"] = pd.DataFrame({"user_id": users, **rows})
    return out


def _long_tail_variants(out: dict, ranked, targets: ItemSets, values: dict, hit, ks, sfx: str, cfg: MetricsConfig,
                        lt_user, lt_items) -> None:
    """Long-tail users' recall/FHR (rows where lt_user) and long-tail items' recall, into `out`.
    lt_items = (training negatives per item id, long-tail-ness of each ranked item) or (None, None)."""
    if lt_user is not None:
        _put(out, "lt_user/", sfx, {k: v for k, v in values.items() if k.startswith("recall")}, lt_user)
        out[f"lt_user/fhr@{cfg.fhr_k}{sfx}"] = _mean(values[f"hit@{cfg.fhr_k}"], lt_user)
    item_negs, lt_ranked = lt_items
    if item_negs is not None:
        counts = lookup(item_negs, targets.indices, missing=0)
        lt_targets = targets.drop(counts >= cfg.long_tail_item_negatives)
        out[f"lt_item/n_eval{sfx}"] = int((lt_targets.lengths > 0).sum())
        # the drop is per item: a ranked item hits lt_targets iff it hits targets and is long-tail itself
        lt_values = rank_metrics(ranked, lt_targets, ks, hit=hit & lt_ranked)
        _put(out, "lt_item/", sfx, {k: v for k, v in lt_values.items() if k.startswith("recall")})


def _extra_variants(out: dict, ranked, targets: ItemSets, ks, sfx: str, cfg: MetricsConfig, context, swing,
                    sid_tok) -> None:
    """The collaborative (Swing-widened) and SID-prefix variants of one horizon, into `out`."""
    if swing is not None:
        gts = _drop_context(widen_with_co_negatives(targets, swing, cfg.swing_top_n), context)
        # recall and hit only: the collaborative variant's keys stay as they were before std_recall/mrr
        coll = rank_metrics(ranked, gts, ks)
        _put(out, "coll_", sfx, {k: v for k, v in coll.items() if k.startswith(("recall", "hit"))})
    if sid_tok is not None:
        for level in cfg.prefix_levels:
            if level <= sid_tok.levels:
                _put(out, "", sfx, prefix_recall(ranked, targets, ks, sid_tok, level))


# ---- frames -> arrays -----------------------------------------------------------------------
def _require(df: pd.DataFrame, columns, what: str):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _row_index(keys: pd.DataFrame, df: pd.DataFrame) -> np.ndarray:
    """Row of each (user_id, cut_ts) of df in `keys` (-1 if absent)."""
    idx = pd.MultiIndex.from_frame(keys[["user_id", "cut_ts"]])
    return np.asarray(idx.get_indexer(pd.MultiIndex.from_frame(df[["user_id", "cut_ts"]].astype("int64"))), dtype=np.int64)


def _rank_order(row: np.ndarray, rank: np.ndarray, neg_score, item: np.ndarray) -> np.ndarray:
    """Order of prediction rows by (row, rank, -score, item), stably.

    Fast path (100K users x 50: 3.3 s -> 0.3 s): integer ranks unique within each row make one
    packed int64 key, and files written in order need no sort at all."""
    n = len(row)
    if n and np.issubdtype(rank.dtype, np.integer):
        lo = int(rank.min())
        span = int(rank.max()) - lo + 1
        if span * (int(row.max()) + 1) < 2**62:
            key = row * span + (rank - lo)
            if bool(np.all(key[1:] > key[:-1])):
                return np.arange(n)
            order = np.argsort(key, kind="stable")
            sk = key[order]
            if bool(np.all(sk[1:] != sk[:-1])):
                return order
    neg_score = np.broadcast_to(np.asarray(neg_score, dtype=float), (n,))
    return np.lexsort((item, neg_score, rank, row))  # last key is the primary one


def rankings_from_frame(predictions: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """(n_rows, K) item ids ordered by rank (ties: higher score, then smaller item id)."""
    rows = _row_index(keys, predictions)
    ok = rows >= 0
    r = rows[ok]
    rank = predictions["rank"].to_numpy()[ok]
    neg_score = -predictions["score"].to_numpy(dtype=float)[ok] if "score" in predictions else 0.0
    item = predictions["item_id"].to_numpy(dtype=np.int64)[ok]
    order = _rank_order(r, rank, neg_score, item)
    r, item = r[order], item[order]
    pos = np.arange(len(r)) - np.searchsorted(r, r)
    width = int(pos.max()) + 1 if len(pos) else 1
    out = np.full((len(keys), width), -1, dtype=np.int64)
    out[r, pos] = item
    return out


def _is_negative(targets: pd.DataFrame) -> np.ndarray:
    if "feedback" in targets.columns:
        return targets["feedback"].to_numpy() < 0
    if "kind" in targets.columns:
        kind = targets["kind"].astype(str).str.lower()
        unknown = ~kind.isin(NEGATIVE_KINDS | POSITIVE_KINDS | {"neutral"})
        if unknown.any():
            raise ValueError(f"targets: unknown kind {kind[unknown].iloc[0]!r}; expected one of "
                             f"{sorted(NEGATIVE_KINDS | POSITIVE_KINDS)}")
        return kind.isin(NEGATIVE_KINDS).to_numpy()
    return np.ones(len(targets), dtype=bool)  # no kind column: every target row is a negative


def target_sets(targets: pd.DataFrame, keys: pd.DataFrame, horizons, negative: bool = True) -> tuple[dict, ItemSets]:
    """F_H per horizon (negatives with cut <= ts < cut + H days) and the next-negative sets."""
    rows = _row_index(keys, targets)
    ok = (rows >= 0) & (_is_negative(targets) == negative)
    ts = targets["ts"].to_numpy(dtype=np.int64)
    cut = targets["cut_ts"].to_numpy(dtype=np.int64)
    item = targets["item_id"].to_numpy(dtype=np.int64)
    ok &= ts >= cut
    delta = ts - cut
    sets = {int(h): ItemSets.from_pairs(rows[ok & (delta < h * DAY)], item[ok & (delta < h * DAY)], len(keys))
            for h in horizons}
    first = np.full(len(keys), np.iinfo(np.int64).max)
    np.minimum.at(first, rows[ok], ts[ok])
    is_first = ok.copy()
    is_first[ok] = ts[ok] == first[rows[ok]]
    return sets, ItemSets.from_pairs(rows[is_first], item[is_first], len(keys))


def context_sets(log: pd.DataFrame, keys: pd.DataFrame) -> ItemSets:
    """Every item each (user, cut) row's user touched before the cut."""
    m = log[["user_id", "item_id", "ts"]].merge(keys[["user_id", "cut_ts"]].reset_index(names="row"), on="user_id")
    m = m[m["ts"].to_numpy() < m["cut_ts"].to_numpy()]
    return ItemSets.from_pairs(m["row"].to_numpy(), m["item_id"].to_numpy(), len(keys))


def train_log_stats(train_log: pd.DataFrame, row_users: pd.Series, cfg: MetricsConfig,
                    swing: ItemSimilarity | None = None) -> tuple[np.ndarray, np.ndarray, ItemSimilarity | None]:
    """What the long-tail and collaborative metrics need from the training log: each row's user's
    training negatives, training negatives per item id, and the Swing co-negatives (fitted here
    unless given; None without training negatives or with swing_top_n = 0)."""
    neg = train_log[train_log["feedback"].to_numpy() < 0]
    user_negs = row_users.map(neg.groupby("user_id").size()).fillna(0).to_numpy()
    item_negs = np.bincount(neg["item_id"].to_numpy(dtype=np.int64)) if len(neg) else np.zeros(1, dtype=np.int64)
    if swing is None and cfg.swing_top_n > 0 and len(neg):
        swing = swing_from_log(train_log, alpha=cfg.swing_alpha, top_n=cfg.swing_top_n,
                               max_items_per_user=cfg.swing_max_items_per_user)
    return user_negs, item_negs, swing


def training_log(log: pd.DataFrame, keys: pd.DataFrame, other_limits: pd.Series | None = None) -> pd.DataFrame:
    """Events before each evaluated user's (earliest) cut. Users not evaluated keep their events
    before `other_limits[user]` (a run's own per-user fit limits, e.g. for an `eval.max_users`
    sample), or all of them when no limit is known (an outside log)."""
    first_cut = keys.groupby("user_id")["cut_ts"].min()
    cut = log["user_id"].map(first_cut)
    if other_limits is not None:
        cut = cut.fillna(log["user_id"].map(other_limits))
    cut = cut.fillna(np.iinfo(np.int64).max).to_numpy()
    return log[log["ts"].to_numpy() < cut]


# ---- candidate accuracy ------------------------------------------------------------------------
def candidate_sets(log: pd.DataFrame, keys: pd.DataFrame, size: int = 20, context: ItemSets | None = None):
    """Same-day candidates for each (user, cut) row: (target item per row, candidate ItemSets).

    The target is the item of the user's first negative event at or after the cut (ties on
    ts: the smaller item id). Its candidates are that item plus up to size - 1 other items the
    user met on the same UTC day (at or after the cut) with no negative feedback that day, not in
    the context, the ones closest in time first. Rows without a negative or without another item
    that day get target -1 and an empty set (left out of the accuracy).
    """
    _require(log, ["user_id", "item_id", "ts", "feedback"], "log")
    m = log[["user_id", "item_id", "ts", "feedback"]].merge(keys[["user_id", "cut_ts"]].reset_index(names="row"), on="user_id")
    m = m[m["ts"].to_numpy() >= m["cut_ts"].to_numpy()]
    neg = m[m["feedback"].to_numpy() < 0].sort_values(["row", "ts", "item_id"], kind="stable").drop_duplicates("row")
    if context is not None and len(neg):
        neg = neg[~isin_rows(neg["row"].to_numpy(), neg["item_id"].to_numpy(), context)]
    target = np.full(len(keys), -1, dtype=np.int64)
    t_ts = np.zeros(len(keys), dtype=np.int64)
    target[neg["row"].to_numpy()] = neg["item_id"].to_numpy()
    t_ts[neg["row"].to_numpy()] = neg["ts"].to_numpy()
    r = m["row"].to_numpy()
    that_day = (target[r] >= 0) & (m["ts"].to_numpy() // DAY == t_ts[r] // DAY)
    others = m[that_day & (m["feedback"].to_numpy() >= 0) & (m["item_id"].to_numpy() != target[r])].copy()
    # an item met without a negative but also disliked that day is no "not disliked" candidate
    disliked = m[that_day & (m["feedback"].to_numpy() < 0)]
    disliked = ItemSets.from_pairs(disliked["row"].to_numpy(), disliked["item_id"].to_numpy(), len(keys))
    others = others[~isin_rows(others["row"].to_numpy(), others["item_id"].to_numpy(), disliked)]
    if context is not None and len(others):
        others = others[~isin_rows(others["row"].to_numpy(), others["item_id"].to_numpy(), context)]
    others["gap"] = np.abs(others["ts"].to_numpy() - t_ts[others["row"].to_numpy()])
    others = others.sort_values(["row", "gap", "item_id"], kind="stable").drop_duplicates(["row", "item_id"])
    ro = others["row"].to_numpy()
    rank = np.arange(len(ro)) - np.searchsorted(ro, ro)
    others = others[rank < size - 1]
    has_other = np.bincount(others["row"].to_numpy(), minlength=len(keys)) > 0
    target[~has_other] = -1
    keep = has_other[others["row"].to_numpy()]
    rows = np.concatenate([np.flatnonzero(target >= 0), others["row"].to_numpy()[keep]])
    items = np.concatenate([target[target >= 0], others["item_id"].to_numpy()[keep]])
    return target, ItemSets.from_pairs(rows, items, len(keys))


def candidate_accuracy(scores: np.ndarray, is_target: np.ndarray, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row accuracy of picking the target among candidates by score, and chance (1 / size).

    Flat candidate pairs (rows, scores, is_target). The target scores 1 if it alone has the top
    score, 1/t if it ties with t - 1 others at the top, 0 otherwise. Rows without
    candidates get NaN.
    """
    best = np.full(n_rows, -np.inf)
    np.maximum.at(best, rows, scores)
    at_top = scores == best[rows]
    n_top = np.bincount(rows[at_top], minlength=n_rows)
    size = np.bincount(rows, minlength=n_rows)
    won = np.zeros(n_rows)
    t = is_target & at_top
    won[rows[t]] = 1.0 / n_top[rows[t]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, won, np.nan), np.where(size > 0, 1.0 / size, np.nan)


# ---- the `negrec evaluate` contract -------------------------------------------------------------
def evaluate_predictions(
    predictions: pd.DataFrame,
    targets: pd.DataFrame,
    log: pd.DataFrame | None = None,
    cfg: MetricsConfig | None = None,
    train_log: pd.DataFrame | None = None,
    sid_tok=None,
    candidate_scores: pd.DataFrame | None = None,
    swing: ItemSimilarity | None = None,
    per_row: bool = False,
) -> dict:
    """Score a predictions file against a targets file (+ the interaction log).

    predictions: user_id, cut_ts, rank, item_id[, score] (rank 0 or 1 = best; only the order
    matters). targets: user_id, cut_ts, item_id, ts[, kind | feedback]: the future events of each
    row (negatives: kind hated / skipped / low rating or feedback -1; other kinds are ignored;
    without kind/feedback every row is a negative). Rows are the (user_id, cut_ts) pairs of
    either file; a row with targets but no predictions scores as a miss.

    log (the interactions: user_id, item_id, ts, feedback) gives the context items (touched
    before the cut: never counted), the training negatives (long-tail users/items, Swing for the
    collaborative variant; `train_log` overrides, default = events before each user's cut) and
    the same-day candidates. candidate_scores (user_id, cut_ts, item_id, score) scores those
    candidates; without it a candidate scores by its place in the ranking (absent = lowest).
    """
    cfg = cfg or MetricsConfig()
    _require(predictions, ["user_id", "cut_ts", "rank", "item_id"], "predictions")
    _require(targets, ["user_id", "cut_ts", "item_id", "ts"], "targets")
    keys = (pd.concat([predictions[["user_id", "cut_ts"]], targets[["user_id", "cut_ts"]]])
            .astype("int64").drop_duplicates().sort_values(["user_id", "cut_ts"]).reset_index(drop=True))
    rankings = rankings_from_frame(predictions, keys)
    future_neg, next_neg = target_sets(targets, keys, cfg.horizons)
    context = user_negs = item_negs = None
    if log is not None:
        _require(log, ["user_id", "item_id", "ts", "feedback"], "log")
        context = context_sets(log, keys)
        train_log = training_log(log, keys) if train_log is None else train_log
    if train_log is not None:
        user_negs, item_negs, swing = train_log_stats(train_log, keys["user_id"], cfg, swing)
    out = evaluate_arrays(rankings, future_neg, cfg, context=context, next_neg=next_neg,
                          user_train_negatives=user_negs, item_train_negatives=item_negs, swing=swing, sid_tok=sid_tok,
                          per_row=per_row, row_users=keys["user_id"].to_numpy())
    if per_row:
        out["per_row"].insert(1, "cut_ts", keys["cut_ts"].to_numpy())
    out["n_rows_without_predictions"] = int((rankings[:, 0] < 0).sum())
    if log is not None:
        out.update(_candidate_metrics(log, keys, rankings, context, cfg, candidate_scores))
    return out


def _pair_values(rows, items, value_rows, value_items, values, default=-np.inf) -> np.ndarray:
    """values at each (row, item) query, looked up among (value_rows, value_items); else default."""
    out = np.full(len(rows), default, dtype=float)
    if len(value_rows) == 0 or len(rows) == 0:
        return out
    base = int(max(value_items.max(), items.max())) + 1
    vkeys = value_rows * base + value_items
    order = np.argsort(vkeys, kind="stable")
    vkeys, values = vkeys[order], np.asarray(values, dtype=float)[order]
    q = rows * base + items
    pos = np.minimum(np.searchsorted(vkeys, q), len(vkeys) - 1)
    found = vkeys[pos] == q
    out[found] = values[pos[found]]
    return out


def _candidate_metrics(log, keys, rankings, context, cfg, candidate_scores) -> dict:
    target, cands = candidate_sets(log, keys, cfg.candidate_size, context)
    rows, items = cands.rows, cands.indices
    if candidate_scores is not None:
        _require(candidate_scores, ["user_id", "cut_ts", "item_id", "score"], "candidate_scores")
        srows = _row_index(keys, candidate_scores)
        ok = srows >= 0
        scores = _pair_values(rows, items, srows[ok], candidate_scores["item_id"].to_numpy(dtype=np.int64)[ok],
                              candidate_scores["score"].to_numpy(dtype=float)[ok])
    else:  # the ranking's order: earlier = higher; absent from the ranking = -inf
        ranked = clean_rankings(rankings, context)
        prows, places = np.nonzero(ranked >= 0)
        scores = _pair_values(rows, items, prows, ranked[prows, places], -places.astype(float))
    acc, chance = candidate_accuracy(scores, items == target[rows], rows, len(keys))
    return {"candidate_acc": _mean(acc), "candidate_chance": _mean(chance),
            "n_candidate_rows": int((~np.isnan(acc)).sum())}


def evaluate_samples(rankings: np.ndarray, samples: pd.DataFrame, cfg: MetricsConfig | None = None,
                     train_log: pd.DataFrame | None = None, sid_tok=None, swing: ItemSimilarity | None = None,
                     per_row: bool = False) -> dict:
    """Metrics of rankings (one row per sample row) against `Prepared.samples[split]` columns.

    Uses future_neg_h{H}, context_items and next_neg; train_log (e.g. Prepared.fit_log(split))
    adds long-tail and collaborative metrics. No candidate accuracy (needs the full log).
    per_row=True adds `per_row` (user_id and the per-row values of the main metrics).
    """
    cfg = cfg or MetricsConfig()
    horizons = [h for h in cfg.horizons if f"future_neg_h{h}" in samples.columns]
    if not horizons:
        raise ValueError(f"samples: no future_neg_h{{H}} column for horizons {cfg.horizons}")
    future_neg = {h: ItemSets.from_lists(samples[f"future_neg_h{h}"]) for h in horizons}
    context = ItemSets.from_lists(samples["context_items"]) if "context_items" in samples else None
    next_neg = (ItemSets.from_lists([[v] if v >= 0 else [] for v in samples["next_neg"].to_numpy()])
                if "next_neg" in samples else None)
    user_negs = item_negs = None
    if train_log is not None:
        user_negs, item_negs, swing = train_log_stats(train_log, samples["user_id"], cfg, swing)
    return evaluate_arrays(np.asarray(rankings), future_neg, cfg, context=context, next_neg=next_neg,
                           user_train_negatives=user_negs, item_train_negatives=item_negs, swing=swing, sid_tok=sid_tok,
                           per_row=per_row, row_users=samples["user_id"].to_numpy() if "user_id" in samples else None)
