"""A tiny SFT policy, SID tokenizer, constraint, prompt builder and reward for the GRPO tests.

Uses negrec.llm's SidConstraint when it is importable, else a minimal stand-in with the same
contract (`logits_processor(prompt_len)`), so the GRPO tests do not wait on the LLM stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

N_ITEMS = 24
LEVELS = 3


def tiny_sid_tokenizer():
    from negrec.tokenizer import SemanticIdTokenizer

    rng = np.random.default_rng(0)
    all_codes = np.array([(a, b, c) for a in range(3) for b in range(3) for c in range(4)])
    codes = all_codes[rng.choice(len(all_codes), N_ITEMS, replace=False)]
    centroids = [rng.normal(size=(k, 8)).astype(np.float32) for k in (3, 3, 4)]
    return SemanticIdTokenizer.from_codes(np.arange(100, 100 + N_ITEMS), codes, [3, 3, 4], centroids=centroids)


def tiny_hf_tokenizer(sid_tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "user", "disliked", "liked", "recently", "next", ":", ","]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                 eos_token="[EOS]")
    sid_tok.extend(hf)
    return hf


class TinyConstraint:
    """Stand-in for negrec.llm.SidConstraint: SID tokens level by level along the trie, then EOS."""

    def __init__(self, sid_tok, hf_tok):
        self.sid_tok = sid_tok
        self.eos = hf_tok.eos_token_id
        vocab = hf_tok.get_vocab()
        self.tok_id = [[vocab[sid_tok.token(lvl, c)] for c in range(k)] for lvl, k in enumerate(sid_tok.codebook_sizes)]
        self.code_of = {tid: c for lvl in self.tok_id for c, tid in enumerate(lvl)}

    def logits_processor(self, prompt_len, exclude_items=None):
        from transformers import LogitsProcessor

        outer = self

        class _P(LogitsProcessor):
            def __call__(self, input_ids, scores):
                mask = torch.full_like(scores, float("-inf"))
                for row, ids in enumerate(input_ids[:, prompt_len:].tolist()):
                    prefix = [outer.code_of.get(t, -1) for t in ids]
                    if len(prefix) >= outer.sid_tok.levels:
                        allowed = [outer.eos]
                    else:
                        allowed = [outer.tok_id[len(prefix)][c] for c in outer.sid_tok.trie.next_codes(prefix)]
                    mask[row, allowed] = 0.0
                return scores + mask

        return _P()


def make_constraint(sid_tok, hf_tok):
    try:
        from negrec.llm import SidConstraint

        return SidConstraint(sid_tok, hf_tok)
    except ImportError:
        return TinyConstraint(sid_tok, hf_tok)


def tiny_policy(path: Path, hf_tok, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id,
                      eos_token_id=hf_tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def tiny_samples(n: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = np.arange(100, 100 + N_ITEMS)
    rows = []
    for u in range(n):
        neg = rng.choice(items, 4, replace=False).tolist()
        rows.append({"user_id": u, "cut_ts": 10 * 86400, "neg_items": neg[:3], "neg_ts": [86400, 8 * 86400, 9 * 86400],
                     "pos_items": rng.choice(items, 2, replace=False).tolist(),
                     "future_neg_h7": rng.choice(items, 6, replace=False).tolist(),
                     "future_pos_h7": [int(neg[3])]})
    return rows


class RecordingPrompts:
    """A prompt builder (PromptBuilder.build's signature) that remembers the stage settings it saw."""

    def __init__(self, sid_tok):
        self.sid_tok = sid_tok
        self.calls: list[tuple] = []

    def __call__(self, row, context_mix=1.0, neg_window_days=None):
        self.calls.append((context_mix, neg_window_days))
        negs = [i for i, t in zip(row["neg_items"], row["neg_ts"])
                if neg_window_days is None or row["cut_ts"] - t <= neg_window_days * 86400]
        text = "user disliked : " + " , ".join(self.sid_tok.tokens_for_item(i) for i in negs)
        if context_mix > 0:
            text += " liked : " + " , ".join(self.sid_tok.tokens_for_item(i) for i in row["pos_items"])
        return text + " next :"


def hit_reward(sid_tok, seen: list | None = None):
    """1 if the generated SID is one of the user's future negatives (dataset column by keyword)."""

    def future_neg_hit(prompts, completions, future_neg_h7, **kwargs):
        out = []
        for c, fut in zip(completions, future_neg_h7):
            item = sid_tok.item_for_tokens(c)
            if seen is not None:
                seen.append(item)
            out.append(1.0 if item is not None and item in set(fut) else 0.0)
        return out

    return future_neg_hit


def tiny_train_log(samples: list[dict]):
    """A training log (user_id, item_id, ts, feedback) of the samples' context: the Swing input."""
    import pandas as pd

    rows = []
    for r in samples:
        rows += [(r["user_id"], i, t, -1) for i, t in zip(r["neg_items"], r["neg_ts"])]
        rows += [(r["user_id"], i, r["cut_ts"] - 1, 1) for i in r["pos_items"]]
    # Other training users who dislike items in clusters of 4: every item gets Swing co-negatives.
    for c in range(N_ITEMS // 4):
        for u in range(3):
            rows += [(1000 + 10 * c + u, 100 + 4 * c + k, 86400 * (k + 1), -1) for k in range(4)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "feedback"])


# Values that visibly change or break constrained groups if a checkpoint's generation_config leaks
# into them (near-greedy sampling, SID tokens banned by the repetition rules, EOS banned by min_length).
LEAKY_GENERATION = dict(do_sample=True, temperature=0.01, top_k=1, top_p=0.5, repetition_penalty=5.0,
                        no_repeat_ngram_size=1, min_length=64)


def leaky_policy(src: Path, dst: Path) -> Path:
    """A copy of the policy in `src` whose generation_config.json carries LEAKY_GENERATION."""
    import shutil

    from transformers import GenerationConfig

    shutil.copytree(src, dst)
    cfg = GenerationConfig.from_pretrained(src)
    cfg.update(**LEAKY_GENERATION)
    cfg.save_pretrained(dst)
    return dst
