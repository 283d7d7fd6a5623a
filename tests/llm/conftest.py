"""Small SID tokenizers and a tiny random policy, built without RQ-VAE training or data files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def random_sid_tokenizer(n_items: int, codebook_sizes=(8, 8, 8), seed: int = 0, with_centroids: bool = False):
    from negrec.tokenizer import SemanticIdTokenizer

    rng = np.random.default_rng(seed)
    space = int(np.prod(codebook_sizes))
    flat = rng.choice(space, size=n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, codebook_sizes), axis=1).astype(np.int64)
    item_ids = rng.choice(10 * n_items, size=n_items, replace=False) + 1
    centroids = [rng.normal(size=(k, 16)).astype(np.float32) for k in codebook_sizes] if with_centroids else None
    return SemanticIdTokenizer.from_codes(item_ids, codes, list(codebook_sizes), centroids=centroids)


def synthetic_items(sid_tok) -> pd.DataFrame:
    words = ["red", "blue", "dark", "happy", "lost", "city", "night", "river", "love", "war", "space", "story"]
    rng = np.random.default_rng(1)
    titles = [" ".join(rng.choice(words, 3)) + f" {i}" for i in sid_tok.item_ids]
    genres = ["|".join(rng.choice(["Drama", "Comedy", "Action", "Horror"], 2, replace=False)) for _ in titles]
    return pd.DataFrame({"item_id": sid_tok.item_ids, "title": titles, "text": titles, "genres": genres})


@pytest.fixture(scope="module")
def small_sid_tok():
    return random_sid_tokenizer(60, (6, 5, 4), seed=3, with_centroids=True)


@pytest.fixture(scope="module")
def tiny_policy(small_sid_tok):
    """(model, hf_tok, sid_tok, items): a random 2-layer Qwen2 with SID tokens added."""
    from negrec.llm.model import ModelConfig, build_policy

    items = synthetic_items(small_sid_tok)
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, bpe_vocab_size=400)
    model, hf_tok, _ = build_policy(cfg, small_sid_tok, items, ["Which item will this user dislike?"], device="cpu")
    model.eval()
    return model, hf_tok, small_sid_tok, items
