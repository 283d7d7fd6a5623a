import pickle

import numpy as np
import pandas as pd
import pytest

from negrec.rewards import RewardConfig, build_rewards, completion_text
from negrec.rewards.functions import CoNRecReward, FutureNegativeHit, SidPrefixCredit, Validity
from negrec.rewards.matching import swing_similarity
from negrec.tokenizer import SemanticIdTokenizer


@pytest.fixture
def tok():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]])
    cents = [np.array([[1.0, 0, 0], [0, 0, 1.0]]), np.array([[0, 0, 0], [0, 1.0, 0]]), np.array([[0, 0, 0], [0.0, 0, 0.5]])]
    return SemanticIdTokenizer.from_codes(np.array([10, 11, 12, 13, 14]), codes, [2, 2, 2], centroids=cents)


def sid(tok, item):
    return tok.tokens_for_item(item)


def test_completion_text_plain_and_chat():
    assert completion_text("<a_1>") == "<a_1>"
    assert completion_text([{"role": "assistant", "content": "<a_2>"}]) == "<a_2>"


def test_future_negative_hit_uses_horizon_column_and_context(tok):
    fn = FutureNegativeHit(RewardConfig(horizon=3), tok)
    comps = [sid(tok, 10), sid(tok, 11), "not a sid", [{"role": "assistant", "content": sid(tok, 12)}], sid(tok, 12)]
    cols = {"future_neg_h3": [[10], [10], [10], [12], [12]], "future_neg_h7": [[11]] * 5,
            "context_items": [[], [], [], [], [12]], "trainer_state": None}
    # last one: in F_H but also in the context -> never counted
    assert fn(prompts=["p"] * 5, completions=comps, **cols) == [1.0, 0.0, 0.0, 1.0, 0.0]
    # falls back to the plain column name
    assert fn(prompts=["p"], completions=[sid(tok, 13)], future_neg=[[13]]) == [1.0]
    with pytest.raises(KeyError, match="future_neg"):
        fn(prompts=["p"], completions=[sid(tok, 13)])


def test_conrec_reward_hand_computed(tok):
    cfg = RewardConfig(horizon=7, gamma=0.5, swing_top_n=0)
    fn = CoNRecReward(cfg, tok, swing=None)
    # embeddings: 10=(1,0,0) 11=(1,0,.5) 12=(1,1,0) 13=(0,0,1) 14=(0,1,1.5)
    e = {10: np.array([1, 0, 0.0]), 11: np.array([1, 0, 0.5]), 12: np.array([1, 1, 0.0]), 13: np.array([0, 0, 1.0])}
    cos = lambda a, b: float(e[a] @ e[b] / np.linalg.norm(e[a]) / np.linalg.norm(e[b]))
    out = fn(prompts=["p"] * 3, completions=[sid(tok, 10), sid(tok, 10), sid(tok, 13)],
             future_neg_h7=[[12, 13], [12], []], future_pos_h7=[[], [11], [13]])
    assert out[0] == pytest.approx(max(cos(10, 12), cos(10, 13)))
    assert out[1] == pytest.approx(cos(10, 12) - 0.5 * cos(10, 11))
    assert out[2] == pytest.approx(0.0 - 0.5 * 1.0)  # generating an item the user will like is penalised


def test_conrec_widens_with_swing_co_negatives(tok):
    # users 0, 1 both disliked 12 and 13 -> 13 is 12's co-negative
    swing = swing_similarity(np.array([0, 0, 1, 1]), np.array([12, 13, 12, 13]), top_n=3)
    narrow = CoNRecReward(RewardConfig(swing_top_n=0), tok, swing)
    wide = CoNRecReward(RewardConfig(swing_top_n=3), tok, swing)
    kw = dict(prompts=["p"], completions=[sid(tok, 13)], future_neg_h7=[[12]], future_pos_h7=[[]])
    assert narrow(**kw)[0] == pytest.approx(0.0)  # cos(13, 12) = 0
    assert wide(**kw)[0] == pytest.approx(1.0)  # 13 itself is in the widened GTS


def test_sid_prefix_credit_and_validity(tok):
    cfg = RewardConfig()
    fn = SidPrefixCredit(cfg, tok)
    out = fn(prompts=["p"] * 4, completions=[sid(tok, 11), sid(tok, 12), sid(tok, 13), sid(tok, 10)],
             future_neg_h7=[[10], [10], [10], [10]])
    assert out == pytest.approx([2 / 3, 1 / 3, 0.0, 1.0])
    custom = SidPrefixCredit(RewardConfig(prefix_credit=[0.1, 0.2, 0.3]), tok)
    assert custom(prompts=["p"], completions=[sid(tok, 11)], future_neg_h7=[[10]]) == pytest.approx([0.2])
    v = Validity(RewardConfig(invalid_penalty=-2.0), tok)
    assert v(prompts=["p"] * 4, completions=[sid(tok, 10), "<a_1><b_1>", "<a_1><b_1><c_0>", "hello"]) == [0.0, -2.0, -2.0, -2.0]


def test_build_rewards_weighted_sum_and_pickle(tok):
    log = pd.DataFrame({"user_id": [0, 0, 1, 1, 2], "item_id": [12, 13, 12, 13, 10], "ts": [1, 2, 3, 4, 5],
                        "feedback": [-1, -1, -1, -1, 1]})
    cfg = RewardConfig(weights={"future_neg_hit": 2.0, "validity": 1.0, "conrec": 0.0, "sid_prefix": 0.0})
    r = build_rewards(cfg, tok, log)
    assert r.names == ["future_neg_hit", "validity"] and r.weights == [2.0, 1.0]
    out = r.combined(prompts=["p", "p"], completions=[sid(tok, 10), "junk"], future_neg_h7=[[10], [10]])
    assert out == pytest.approx([2.0, -1.0])
    assert r.combined.__name__ == "negrec_reward"
    full = build_rewards(RewardConfig(), tok, log)
    assert full.swing is not None and set(full.names) == {"future_neg_hit", "conrec", "sid_prefix", "validity"}
    pickle.loads(pickle.dumps(full.functions))
    with pytest.raises(ValueError, match="unknown reward"):
        RewardConfig(weights={"nope": 1.0})


def test_rank_penalty_by_place_in_beam_group(tok):
    from negrec.rewards.functions import RankPenalty

    fn = RankPenalty(RewardConfig(horizon=7), tok)
    # two groups of three (prompts p, q), each in beam order; hits cost nothing
    comps = [sid(tok, 10), sid(tok, 11), sid(tok, 12), sid(tok, 13), sid(tok, 14), "junk"]
    fneg = [[11]] * 3 + [[13]] * 3
    got = fn(prompts=["p"] * 3 + ["q"] * 3, completions=comps, future_neg_h7=fneg, context_items=[[]] * 6)
    assert got == pytest.approx([-1.0, 0.0, -1 / np.log2(4), 0.0, -1 / np.log2(3), -1 / np.log2(4)])
    with pytest.raises(ValueError, match="prompts"):
        fn(prompts=None, completions=comps, future_neg_h7=fneg)


def test_neighbour_reward_credits_what_similar_users_disliked(tok):
    # user 0 disliked 12, 13; user 1 disliked 12, 13, 14; user 3 disliked 10 only (no overlap with 12)
    log = pd.DataFrame({"user_id": [0, 0, 1, 1, 1, 3, 2], "item_id": [12, 13, 12, 13, 14, 10, 11],
                        "ts": range(7), "feedback": [-1, -1, -1, -1, -1, -1, 1]})
    cfg = RewardConfig(weights={"neighbour_neg": 1.0}, neighbour_depth=2)
    fn = build_rewards(cfg, tok, log).functions[0]
    assert fn.__name__ == "neighbour_neg"
    comps = [sid(tok, 13), sid(tok, 14), sid(tok, 10), sid(tok, 12), "junk", sid(tok, 13), sid(tok, 14)]
    # rows 0-4: user 2 with 12 disliked, 12 in its context; rows 5-6: user 1 itself (its own dislikes don't count)
    cols = {"user_id": [2] * 5 + [1] * 2, "neg_items": [[12]] * 7, "context_items": [[12]] * 7}
    got = fn(prompts=["p"] * 7, completions=comps, **cols)
    # 13: both neighbours, rank 0 -> 1; 14: one neighbour, rank 1 -> 1 - 1/2; 10: no similar user disliked it;
    # 12: the row's context; junk: no item; for user 1 only user 0 is a neighbour: 13 ranks first, 14 not at all
    assert got == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    pickle.loads(pickle.dumps(fn))
    with pytest.raises(KeyError, match="user_id"):
        fn(prompts=["p"], completions=[sid(tok, 13)], neg_items=[[12]])
    with pytest.raises(ValueError, match="training log"):
        build_rewards(cfg, tok, None)
    with pytest.raises(ValueError, match="neighbour_depth"):
        RewardConfig(neighbour_depth=0)
