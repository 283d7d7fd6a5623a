"""TRL-style reward functions for next-H-days negative prediction.

Every reward is a callable `fn(prompts, completions, **columns) -> list[float]` that TRL's
GRPOTrainer calls directly: the dataset columns of each completion's sample arrive by keyword
(`future_neg_h7` or `future_neg`, `future_pos_h7` or `future_pos`, `context_items`); other
keywords (trainer_state, log_metric, ...) are ignored. A completion is the generated text, a
SID such as "<a_12><b_7><c_201>", or a chat-format list of messages (the last one's content).

Conventions shared with the offline metric (negrec.eval.metrics):
- a completion that is not exactly one known SID earns 0 everywhere but `validity`;
- an item already in the user's context never earns credit (the metric never counts it).

Usage with TRL:

    rewards = build_rewards(RewardConfig(), sid_tok, train_log)
    GRPOTrainer(..., reward_funcs=rewards.functions, args=GRPOConfig(reward_weights=rewards.weights))
    # or one scalar: reward_funcs=[rewards.combined]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from negrec.rewards.matching import (
    ItemEmbeddings,
    ItemSets,
    ItemSimilarity,
    UserNeighbours,
    binary_matrix,
    index_table,
    isin_rows,
    lookup,
    max_cosine_to_sets,
    prefix_match_level,
    swing_from_log,
    widen_with_co_negatives,
)

REWARD_NAMES = ("future_neg_hit", "conrec", "sid_prefix", "validity", "rank_penalty", "neighbour_neg")


@dataclass
class RewardConfig:
    """YAML section `rewards`."""

    horizon: int = 7  # days: F_H = the user's negatives in [cut, cut + H days)
    weights: dict = field(default_factory=lambda: {"conrec": 1.0, "future_neg_hit": 1.0, "sid_prefix": 0.5, "validity": 1.0})
    gamma: float = 0.5  # CoNRec: weight of the closeness to a future positive (FPS)
    swing_top_n: int = 10  # GTS: co-negatives added per future negative
    swing_alpha: float = 1.0
    swing_max_items_per_user: int = 200
    prefix_credit: list | None = None  # credit for sharing 1, 2, ... SID levels; default level / L
    invalid_penalty: float = -1.0  # `validity` reward of a completion that is not a known SID
    neighbour_k: int = 50  # neighbour_neg: nearest training users whose dislikes score an item (user-kNN)
    neighbour_depth: int = 50  # neighbour_neg: credit 1 - rank / depth in that ranking, 0 beyond it

    def __post_init__(self):
        unknown = sorted(set(self.weights) - set(REWARD_NAMES))
        if unknown:
            raise ValueError(f"rewards.weights: unknown reward(s) {unknown}; known: {list(REWARD_NAMES)}")
        for name in ("horizon", "neighbour_k", "neighbour_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rewards.{name} must be positive, got {getattr(self, name)}")


def completion_text(completion) -> str:
    """The generated text of a plain-string or chat-format (list of messages) completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        return completion_text(completion[-1])
    return str(completion)


def column(kwargs: dict, name: str, horizon: int | None, n: int, required: bool = True) -> ItemSets:
    """The ragged item sets of a dataset column, `name_h{H}` preferred over `name`."""
    for key in ([f"{name}_h{horizon}"] if horizon else []) + [name]:
        if key in kwargs and kwargs[key] is not None:
            values = kwargs[key]
            if len(values) != n:
                raise ValueError(f"reward column {key!r} has {len(values)} rows for {n} completions")
            return ItemSets.from_lists(values)
    if required:
        wanted = f"{name}_h{horizon!r} or {name!r}" if horizon else repr(name)
        raise KeyError(f"reward needs dataset column {wanted}; got columns {sorted(kwargs)}")
    return ItemSets.from_lists([[]] * n)


class RewardFunction:
    """Base: parse completions to item ids, drop context items, score. Picklable; TRL names it `__name__`."""

    __name__ = "reward"

    def __init__(self, cfg: RewardConfig, sid_tok):
        self.cfg = cfg
        self.sid_tok = sid_tok

    def items(self, completions) -> np.ndarray:
        """Item id of each completion, -1 when it is not exactly one known SID."""
        out = np.full(len(completions), -1, dtype=np.int64)
        for i, c in enumerate(completions):
            item = self.sid_tok.item_for_tokens(completion_text(c).strip())
            if item is not None:
                out[i] = item
        return out

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        items = self.items(completions)
        n = len(items)
        context = column(kwargs, "context_items", None, n, required=False)
        scorable = (items >= 0) & ~isin_rows(np.arange(n), items, context)
        scores = np.zeros(n, dtype=np.float64)
        if scorable.any():
            scores = self.score(np.where(scorable, items, -1), kwargs)
            scores = np.where(scorable, scores, 0.0)
        return [float(s) for s in scores]

    def score(self, items: np.ndarray, kwargs: dict) -> np.ndarray:
        raise NotImplementedError


class FutureNegativeHit(RewardFunction):
    """1 if the generated item is in F_H, the user's negatives in the next H days."""

    __name__ = "future_neg_hit"

    def score(self, items, kwargs):
        targets = column(kwargs, "future_neg", self.cfg.horizon, len(items))
        return isin_rows(np.arange(len(items)), items, targets).astype(np.float64)


class CoNRecReward(RewardFunction):
    """max_{i in GTS} cos(out, i) - gamma * max_{t in FPS} cos(out, t).

    GTS = F_H widened by the top Swing co-negatives (training negatives only) of its items;
    FPS = the items the user likes in the same window. Embeddings are decoded from SIDs.
    """

    __name__ = "conrec"

    def __init__(self, cfg, sid_tok, swing: ItemSimilarity | None, embeddings: ItemEmbeddings | None = None):
        super().__init__(cfg, sid_tok)
        self.swing = swing
        self.embeddings = embeddings or ItemEmbeddings.from_sid_tokenizer(sid_tok)

    def score(self, items, kwargs):
        n = len(items)
        gts = widen_with_co_negatives(column(kwargs, "future_neg", self.cfg.horizon, n), self.swing, self.cfg.swing_top_n)
        fps = column(kwargs, "future_pos", self.cfg.horizon, n, required=False)
        return (max_cosine_to_sets(items, gts, self.embeddings)
                - self.cfg.gamma * max_cosine_to_sets(items, fps, self.embeddings))


class SidPrefixCredit(RewardFunction):
    """Partial credit for sharing the first SID levels with a future negative."""

    __name__ = "sid_prefix"

    def score(self, items, kwargs):
        targets = column(kwargs, "future_neg", self.cfg.horizon, len(items))
        level = prefix_match_level(items, targets, self.sid_tok)
        levels = self.sid_tok.levels
        credit = self.cfg.prefix_credit or [lvl / levels for lvl in range(1, levels + 1)]
        table = np.asarray([0.0] + [float(c) for c in credit] + [float(credit[-1])] * levels)[: levels + 1]
        return table[level]


class NeighbourNegatives(RewardFunction):
    """Cross-user credit: 1 - rank / `neighbour_depth` for the generated item's place in user-kNN's
    ranking of the row (its history's dislikes against the training users', `UserNeighbours`), 0
    beyond that depth or where no neighbour disliked it. Dense where `future_neg_hit` is sparse, and
    it rewards what carries across users: a user's own future negatives all lie in that user's
    later test context, never scored there (docs/RESULTS.md "A cross-user reward for GRPO").
    Needs the dataset columns `user_id` and `neg_items` (the row's disliked history)."""

    __name__ = "neighbour_neg"

    def __init__(self, cfg, sid_tok, neighbours: UserNeighbours, item_ids: np.ndarray):
        super().__init__(cfg, sid_tok)
        self.neighbours, self.item_ids = neighbours, np.asarray(item_ids, dtype=np.int64)
        self.item_index = index_table(self.item_ids)

    def _ranked(self, kwargs: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(user-kNN scores of each distinct row, its context items at -inf; each completion's row).
        A group's completions share their prompt's row: scored once, not once per completion."""
        if "user_id" not in kwargs:
            raise KeyError(f"reward neighbour_neg needs dataset column 'user_id'; got columns {sorted(kwargs)}")
        users = np.asarray(kwargs["user_id"])
        history = column(kwargs, "neg_items", None, n)
        context = column(kwargs, "context_items", None, n, required=False)
        seen: dict = {}
        back = np.array([seen.setdefault((users[r], history.row(r).tobytes(), context.row(r).tobytes()), len(seen))
                         for r in range(n)], dtype=np.int64)
        first = np.unique(back, return_index=True)[1]
        history, context = history.take(first), context.take(first)
        cols = lookup(self.item_index, history.indices)
        ok = cols >= 0
        q = binary_matrix(history.rows[ok], cols[ok], (len(first), len(self.item_ids)))
        scores = self.neighbours.scores(q, users[first])
        cols = lookup(self.item_index, context.indices)
        ok = cols >= 0
        scores[context.rows[ok], cols[ok]] = -np.inf
        return scores, back

    def score(self, items, kwargs):
        n = len(items)
        scores, row = self._ranked(kwargs, n)
        col = lookup(self.item_index, np.maximum(items, 0))
        known = (items >= 0) & (col >= 0)
        mine = np.where(known, scores[row, np.maximum(col, 0)], -np.inf)
        rank = (scores[row] > mine[:, None]).sum(1)
        credit = np.clip(1.0 - rank / self.cfg.neighbour_depth, 0.0, 1.0)
        return np.where(known & (mine > 0), credit, 0.0)


class RankPenalty(RewardFunction):
    """Rank-aware shaping for beam-group rollouts (MiniOneRec): a completion that misses F_H costs
    1 / log2(rank + 2), rank being its 0-based place in its beam group, so a group's advantages
    push wrong items out of the top of the list more than from its tail. A hit costs nothing.

    A group is a run of consecutive completions of one prompt (how TRL lays them out); with
    sampled rollouts the order carries no rank, so use it with `grpo.generation: beam` only."""

    __name__ = "rank_penalty"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        items = self.items(completions)
        n = len(items)
        hit = isin_rows(np.arange(n), items, column(kwargs, "future_neg", self.cfg.horizon, n))
        rank = group_ranks(prompts, n)
        return [0.0 if h else -1.0 / float(np.log2(r + 2)) for h, r in zip(hit, rank)]


def group_ranks(prompts, n: int) -> np.ndarray:
    """0-based place of each completion within its run of identical consecutive prompts."""
    if prompts is None:
        raise ValueError("rank_penalty needs the prompts to find each completion's group")
    keys = [completion_text(p) for p in prompts]
    rank = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        rank[i] = rank[i - 1] + 1 if keys[i] == keys[i - 1] else 0
    return rank


class Validity(RewardFunction):
    """0 for a completion that is one known SID, `invalid_penalty` otherwise."""

    __name__ = "validity"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return [0.0 if i >= 0 else float(self.cfg.invalid_penalty) for i in self.items(completions)]


class WeightedReward:
    """Weighted sum of several rewards, for trainers that take one scalar reward."""

    __name__ = "negrec_reward"

    def __init__(self, functions, weights):
        self.functions, self.weights = list(functions), [float(w) for w in weights]

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        total = np.zeros(len(completions))
        for fn, w in zip(self.functions, self.weights):
            total += w * np.asarray(fn(prompts=prompts, completions=completions, **kwargs))
        return total.tolist()


@dataclass
class Rewards:
    """The configured reward functions, their weights, and their weighted sum."""

    functions: list
    weights: list
    swing: ItemSimilarity | None

    @property
    def combined(self) -> WeightedReward:
        return WeightedReward(self.functions, self.weights)

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.functions]


def build_rewards(cfg: RewardConfig, sid_tok, train_log=None, swing: ItemSimilarity | None = None) -> Rewards:
    """Bind the SID tokenizer and Swing co-negatives (from `train_log`'s negatives) to the rewards.

    `train_log` is a frame with user_id, item_id, ts, feedback; pass only training events
    (`Prepared.fit_log(split)`). Rewards with weight 0 are left out.
    """
    if swing is None and train_log is not None and cfg.weights.get("conrec", 0.0) and cfg.swing_top_n > 0:
        swing = swing_from_log(train_log, alpha=cfg.swing_alpha, top_n=cfg.swing_top_n,
                               max_items_per_user=cfg.swing_max_items_per_user)
    if cfg.weights.get("neighbour_neg", 0.0) and train_log is None:
        raise ValueError("rewards.weights.neighbour_neg needs the training log (build_rewards(..., train_log=...))")
    makers = {
        "future_neg_hit": lambda: FutureNegativeHit(cfg, sid_tok),
        "conrec": lambda: CoNRecReward(cfg, sid_tok, swing),
        "sid_prefix": lambda: SidPrefixCredit(cfg, sid_tok),
        "validity": lambda: Validity(cfg, sid_tok),
        "rank_penalty": lambda: RankPenalty(cfg, sid_tok),
        "neighbour_neg": lambda: _neighbour_reward(cfg, sid_tok, train_log),
    }
    chosen = [(name, float(w)) for name, w in cfg.weights.items() if float(w) != 0.0]
    return Rewards([makers[name]() for name, _ in chosen], [w for _, w in chosen], swing)


def _neighbour_reward(cfg: RewardConfig, sid_tok, train_log) -> NeighbourNegatives:
    """`neighbour_neg` fitted on the training log's negatives."""
    neg = train_log[train_log["feedback"].to_numpy() < 0]
    # items no training user disliked score 0 everywhere, so never credited: only the disliked are columns
    items, cols = np.unique(neg["item_id"].to_numpy(dtype=np.int64), return_inverse=True)
    return NeighbourNegatives(cfg, sid_tok, UserNeighbours(neg["user_id"].to_numpy(), cols, len(items),
                                                           cfg.neighbour_k), items)
