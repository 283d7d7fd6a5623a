import numpy as np
import pytest

from negrec.rewards.matching import (
    ItemEmbeddings,
    ItemSets,
    clean_rankings,
    hits,
    isin_rows,
    max_cosine_to_sets,
    prefix_match_level,
    swing_similarity,
    widen_with_co_negatives,
)
from negrec.tokenizer import SemanticIdTokenizer


def test_item_sets_roundtrip_and_ops():
    s = ItemSets.from_lists([[3, 1], [], None, [7, -1, 7]])
    assert s.to_lists() == [[3, 1], [], [], [7, 7]]
    assert s.lengths.tolist() == [2, 0, 0, 2]
    assert s.take(np.array([3, 0])).to_lists() == [[7, 7], [3, 1]]
    u = ItemSets.from_lists([[1], [2], [], [7]]).union(s)
    assert u.to_lists() == [[1, 3], [2], [], [7]]
    assert ItemSets.from_dense(np.array([[5, -1, 6], [-1, -1, -1]])).to_lists() == [[5, 6], []]


def test_hits_and_isin_rows():
    targets = ItemSets.from_lists([[1, 2], [], [5, 7]])
    pred = np.array([[2, 3, -1], [1, 1, 1], [7, 5, 0]])
    assert hits(pred, targets).tolist() == [[True, False, False], [False] * 3, [True, True, False]]
    # the same item in another row's set is not a hit
    assert isin_rows(np.array([0, 1]), np.array([5, 2]), targets).tolist() == [False, False]
    with pytest.raises(ValueError):
        hits(pred[:2], targets)


def test_clean_rankings_drops_context_duplicates_and_padding():
    pred = np.array([[2, 2, 3, 1], [1, -1, 1, 4], [7, 5, 7, 0]])
    context = ItemSets.from_lists([[3], [], [5]])
    out = clean_rankings(pred, context, k=5)
    assert out.tolist() == [[2, 1, -1, -1, -1], [1, 4, -1, -1, -1], [7, 0, -1, -1, -1]]


def test_swing_hand_computed():
    # users: 0 {10,11,12}, 1 {10,11,13}, 2 {10,12}, 3 {11,12}; only pairs sharing >= 2 items count
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    items = np.array([10, 11, 12, 10, 11, 13, 10, 12, 11, 12])
    sw = swing_similarity(users, items, alpha=1.0, top_n=2)
    w = {0: 3 ** -0.5, 1: 3 ** -0.5, 2: 2 ** -0.5, 3: 2 ** -0.5}
    # sim(10, 11): ordered pairs (0, 1), (1, 0), sharing 2 items
    assert sw.similarity(np.array([10]), np.array([11]))[0] == pytest.approx(2 * w[0] * w[1] / 3)
    assert sw.similarity(np.array([10]), np.array([12]))[0] == pytest.approx(2 * w[0] * w[2] / 3)
    assert sw.similarity(np.array([10]), np.array([13]))[0] == 0.0  # (1, 2) share one item only
    assert sw.neighbors[sw.row_of(np.array([10]))[0]].tolist() == [12, 11]
    widened = widen_with_co_negatives(ItemSets.from_lists([[10], [13], []]), sw, top_n=1)
    assert widened.to_lists() == [[10, 12], [13], []]


def test_swing_keeps_last_items_per_user():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([1, 2, 3, 2, 3])
    full = swing_similarity(users, items, top_n=2)
    assert full.similarity(np.array([2]), np.array([3]))[0] > 0
    capped = swing_similarity(users, items, top_n=2, max_items_per_user=1)  # user 0 keeps item 3 only
    assert capped.matrix.nnz == 0


def _sid_tok():
    # 4 items, 3 levels; centroids make item embeddings exact unit axes / mixes
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    cents = [np.array([[1.0, 0, 0], [0, 0, 1.0]]), np.array([[0, 0, 0], [0, 1.0, 0]]), np.array([[0, 0, 0], [0.0, 0, 0.5]])]
    return SemanticIdTokenizer.from_codes(np.array([10, 11, 12, 13]), codes, [2, 2, 2], centroids=cents)


def test_max_cosine_and_prefix_levels():
    tok = _sid_tok()
    emb = ItemEmbeddings.from_sid_tokenizer(tok)
    sets = ItemSets.from_lists([[12, 13], [], [10], [99]])
    cos = max_cosine_to_sets(np.array([10, 10, -1, 10]), sets, emb, empty=0.0)
    # 10 = (1,0,0); 12 = (1,1,0)/√2; 13 = (0,0,1)
    assert cos.tolist() == pytest.approx([2 ** -0.5, 0.0, 0.0, 0.0])
    level = prefix_match_level(np.array([11, 11, 13, 12]), ItemSets.from_lists([[10], [12], [10, 11], []]), tok)
    assert level.tolist() == [2, 1, 0, 0]
