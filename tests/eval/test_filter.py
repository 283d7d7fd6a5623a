import numpy as np
import pytest

from negrec.eval.filter import filter_candidates, filter_curve
from negrec.rewards.matching import ItemEmbeddings, ItemSets


def test_filter_candidates_threshold():
    cands = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    dislikes = np.array([[3.0, 0.0]])
    assert filter_candidates(cands, dislikes, 0.9).tolist() == [False, True, True]
    assert filter_candidates(cands, dislikes, 0.7).tolist() == [False, True, False]  # cos 0.707 >= 0.7
    assert filter_candidates(cands, np.zeros((0, 2)), 0.5).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="embedding sizes"):
        filter_candidates(cands, np.ones((1, 3)), 0.5)


def test_filter_curve_hand_computed():
    # items 1 = x axis, 2 = y axis, 3 = diagonal
    emb = ItemEmbeddings(np.array([1, 2, 3]), np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]]))
    predicted = ItemSets.from_lists([[1], [2]])
    future_neg = ItemSets.from_lists([[1, 3], [1]])  # cos to predictions: 1, 0.707 | 0
    future_pos = ItemSets.from_lists([[2], [3]])  # 0 | 0.707
    curve = filter_curve(emb, predicted, future_neg, future_pos, thetas=[0.5, 0.9, 1.1])
    assert curve[0]["neg_removed"] == pytest.approx(2 / 3) and curve[0]["pos_removed"] == pytest.approx(1 / 2)
    assert curve[0]["neg_removed_user"] == pytest.approx((1.0 + 0.0) / 2)
    assert curve[1]["neg_removed"] == pytest.approx(1 / 3) and curve[1]["pos_removed"] == 0.0
    assert curve[2]["neg_removed"] == 0.0  # nothing has cosine > 1
