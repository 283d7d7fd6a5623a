"""Rewards for GRPO and the shared future-negative matching code the metrics also use.

Never imports negrec.eval / train / llm (they import this)."""
from negrec.rewards.functions import (
    REWARD_NAMES,
    CoNRecReward,
    FutureNegativeHit,
    RewardConfig,
    RewardFunction,
    RankPenalty,
    Rewards,
    SidPrefixCredit,
    Validity,
    WeightedReward,
    build_rewards,
    completion_text,
)
from negrec.rewards.matching import (
    ItemEmbeddings,
    ItemSets,
    ItemSimilarity,
    clean_rankings,
    hits,
    isin_rows,
    max_cosine_to_sets,
    prefix_key_table,
    prefix_match_level,
    swing_from_log,
    swing_similarity,
    widen_with_co_negatives,
)

__all__ = [
    "REWARD_NAMES", "CoNRecReward", "FutureNegativeHit", "RewardConfig", "RewardFunction", "Rewards",
    "RankPenalty", "SidPrefixCredit", "Validity", "WeightedReward", "build_rewards", "completion_text",
    "ItemEmbeddings", "ItemSets", "ItemSimilarity", "clean_rankings", "hits", "isin_rows",
    "max_cosine_to_sets", "prefix_key_table", "prefix_match_level", "swing_from_log",
    "swing_similarity", "widen_with_co_negatives",
]
