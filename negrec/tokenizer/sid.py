"""Semantic-ID tokenizer: item id <-> code tuple <-> SID token string.

An item's semantic ID (SID) is a tuple of L codes, one per quantizer level, written as one
new LLM token per level and code: codes (12, 7, 201) -> "<a_12><b_7><c_201>". The tokenizer
holds the item -> codes table, a prefix trie over the valid code tuples (for constrained
decoding and partial-prefix lookups), and optionally the per-level codebook centroids so an
item's embedding can be decoded from its SID. An extra collision level (TIGER-style
numbering of items that share a prefix) has no centroids.

Only numpy (+ safetensors.numpy) is needed: serving stacks load it without torch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from negrec.io import atomic_path, write_json

DEFAULT_LEVEL_CHARS = "abcdefghijklmnopqrstuvwxyz"
CONFIG_NAME = "sid_tokenizer_config.json"
TABLES_NAME = "sid_tables.safetensors"
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


def format_sid(codes: Sequence[int], level_chars: str = DEFAULT_LEVEL_CHARS) -> str:
    """The token string of a SID: codes (12, 7, 201) -> "<a_12><b_7><c_201>"."""
    return "".join(f"<{level_chars[lvl]}_{int(c)}>" for lvl, c in enumerate(codes))


def parse_sid(text: str, levels: int, level_chars: str = DEFAULT_LEVEL_CHARS) -> list[int] | None:
    """Codes of a SID token string ("<a_12><b_7><c_201>"), or None when it is not a well-formed
    `levels`-level SID (wrong level letters or order, other text around the tokens)."""
    matches = _TOKEN_RE.findall(text)
    if len(matches) != levels or _TOKEN_RE.sub("", text).strip():
        return None
    if "".join(ch for ch, _ in matches) != level_chars[:levels]:
        return None
    return [int(code) for _, code in matches]


class PrefixTrie:
    """Prefix trie over unique code tuples, stored as sorted rows plus per-depth ranges.

    Rows are sorted lexicographically, so every prefix owns one contiguous slice of rows;
    `_ranges[p]` maps a length-p prefix to that slice. Lookups are dict hits, and memory is
    O(n * L), which stays small up to millions of items.
    """

    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes, dtype=np.int64)
        self.depth = codes.shape[1]
        self.order = np.lexsort(codes.T[::-1])  # row indices of `codes` in lexicographic order
        self.sorted_codes = codes[self.order]
        self._ranges: list[dict[tuple, tuple[int, int]]] = []
        n = len(codes)
        for p in range(self.depth + 1):
            ranges: dict[tuple, tuple[int, int]] = {}
            if n:
                head = self.sorted_codes[:, :p]
                change = np.ones(n, dtype=bool)
                if p:
                    change[1:] = np.any(head[1:] != head[:-1], axis=1)
                else:
                    change[1:] = False
                starts = np.flatnonzero(change)
                ends = np.append(starts[1:], n)
                for s, e in zip(starts.tolist(), ends.tolist()):
                    ranges[tuple(head[s].tolist())] = (s, e)
            self._ranges.append(ranges)

    def _range(self, prefix: Sequence[int]) -> tuple[int, int] | None:
        prefix = tuple(int(c) for c in prefix)
        if len(prefix) > self.depth:
            return None
        return self._ranges[len(prefix)].get(prefix)

    def __contains__(self, codes: Sequence[int]) -> bool:
        """True when `codes` is a complete, valid SID."""
        return len(codes) == self.depth and self._range(codes) is not None

    def next_codes(self, prefix: Sequence[int]) -> np.ndarray:
        """Sorted codes allowed at level len(prefix) after `prefix` (empty when none / complete)."""
        r = self._range(prefix)
        if r is None or len(prefix) >= self.depth:
            return np.empty(0, dtype=np.int64)
        return np.unique(self.sorted_codes[r[0]:r[1], len(prefix)])

    def rows_with_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        """Row indices (into the codes table the trie was built from) of SIDs under `prefix`."""
        r = self._range(prefix)
        if r is None:
            return np.empty(0, dtype=np.int64)
        return self.order[r[0]:r[1]]

    def to_nested(self, leaves: np.ndarray | None = None) -> dict:
        """Nested {code: {code: ... leaf}} dict (JSON keys are strings); leaf = item id or row."""
        leaves = np.arange(len(self.order)) if leaves is None else np.asarray(leaves)
        root: dict = {}
        for row, codes in zip(self.order.tolist(), self.sorted_codes.tolist()):
            node = root
            for c in codes[:-1]:
                node = node.setdefault(str(c), {})
            node[str(codes[-1])] = int(leaves[row])
        return root


class SemanticIdTokenizer:
    """Maps items to semantic IDs and SID token strings; see docs/ARCHITECTURE.md."""

    def __init__(
        self,
        item_ids: np.ndarray,
        codes: np.ndarray,
        codebook_sizes: Sequence[int],
        centroids: Sequence[np.ndarray] | None = None,
        level_chars: str = DEFAULT_LEVEL_CHARS,
        metadata: dict | None = None,
    ):
        item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) != len(item_ids):
            raise ValueError(f"codes must be (n_items, levels); got {codes.shape} for {len(item_ids)} items")
        levels = codes.shape[1]
        codebook_sizes = [int(k) for k in codebook_sizes]
        if len(codebook_sizes) != levels:
            raise ValueError(f"codebook_sizes has {len(codebook_sizes)} entries for {levels} levels")
        if len(level_chars) < levels or not all("a" <= ch <= "z" for ch in level_chars[:levels]):
            raise ValueError(f"level_chars {level_chars!r} must give one lowercase letter per level ({levels})")
        if len(np.unique(item_ids)) != len(item_ids):
            raise ValueError("item_ids are not unique")
        bad = (codes < 0) | (codes >= np.asarray(codebook_sizes)[None, :])
        if bad.any():
            row, lvl = np.argwhere(bad)[0]
            raise ValueError(f"item {item_ids[row]}: code {codes[row, lvl]} at level {lvl} outside [0, {codebook_sizes[lvl]})")
        if len(codes) and len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("SIDs are not unique: handle collisions before building the tokenizer")
        self.item_ids = item_ids
        self.codes = codes
        self.levels = levels
        self.codebook_sizes = codebook_sizes
        self.level_chars = level_chars[:levels]
        self.centroids = [np.asarray(c, dtype=np.float32) for c in (centroids or [])]
        if len(self.centroids) > levels:
            raise ValueError(f"{len(self.centroids)} centroid levels for {levels} SID levels")
        for lvl, c in enumerate(self.centroids):
            if c.ndim != 2 or c.shape[0] != codebook_sizes[lvl]:
                raise ValueError(f"centroids[{lvl}] has shape {c.shape}, expected ({codebook_sizes[lvl]}, d)")
        self.metadata = dict(metadata or {})
        self._row = {int(i): r for r, i in enumerate(item_ids.tolist())}
        self._by_codes = {tuple(c): int(i) for c, i in zip(codes.tolist(), item_ids.tolist())}
        self.trie = PrefixTrie(codes)

    @classmethod
    def from_codes(cls, item_ids, codes, codebook_sizes, centroids=None, level_chars=DEFAULT_LEVEL_CHARS, metadata=None):
        return cls(item_ids, codes, codebook_sizes, centroids=centroids, level_chars=level_chars, metadata=metadata)

    # ---- items <-> codes <-> tokens -------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id) -> bool:
        return int(item_id) in self._row

    def token(self, level: int, code: int) -> str:
        return f"<{self.level_chars[level]}_{int(code)}>"

    def codes_for_item(self, item_id) -> tuple[int, ...]:
        row = self._row.get(int(item_id))
        if row is None:
            raise KeyError(f"item {item_id} has no semantic ID")
        return tuple(self.codes[row].tolist())

    def item_for_codes(self, codes: Sequence[int]) -> int | None:
        return self._by_codes.get(tuple(int(c) for c in codes))

    def token_list(self, item_id) -> list[str]:
        return [self.token(lvl, c) for lvl, c in enumerate(self.codes_for_item(item_id))]

    def tokens_for_item(self, item_id) -> str:
        return "".join(self.token_list(item_id))

    def parse(self, tokens: str | Iterable[str]) -> list[int] | None:
        """Codes of a SID written as tokens, or None when the tokens are not a well-formed SID."""
        return parse_sid(tokens if isinstance(tokens, str) else "".join(tokens), self.levels, self.level_chars)

    def item_for_tokens(self, tokens: str | Iterable[str]) -> int | None:
        codes = self.parse(tokens)
        return None if codes is None else self.item_for_codes(codes)

    def all_tokens(self) -> list[str]:
        """Every SID token, one per level and code, level-major."""
        return [self.token(lvl, c) for lvl, k in enumerate(self.codebook_sizes) for c in range(k)]

    # ---- HF tokenizer integration ---------------------------------------------------
    def extend(self, hf_tokenizer) -> int:
        """Add the SID tokens the HF tokenizer lacks, as added tokens that are never split.

        They are not special tokens, so `decode(..., skip_special_tokens=True)` keeps them.
        Returns how many were added (resize the model's embeddings afterwards).
        """
        from tokenizers import AddedToken

        vocab = hf_tokenizer.get_vocab()
        missing = [t for t in self.all_tokens() if t not in vocab]
        return hf_tokenizer.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False) for t in missing])

    def token_id_table(self, hf_tokenizer) -> np.ndarray:
        """(n_items, levels) token ids of every item's SID, rows in `self.item_ids` order."""
        vocab = hf_tokenizer.get_vocab()
        per_level = []
        for lvl, k in enumerate(self.codebook_sizes):
            ids = [vocab.get(self.token(lvl, c), -1) for c in range(k)]
            if min(ids) < 0:
                raise KeyError(f"SID tokens of level {self.level_chars[lvl]!r} are missing from the HF tokenizer; call extend() first")
            per_level.append(np.asarray(ids, dtype=np.int64))
        return np.stack([per_level[lvl][self.codes[:, lvl]] for lvl in range(self.levels)], axis=1)

    # ---- prefix lookups and embeddings ----------------------------------------------
    def items_with_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        """Item ids whose SID starts with `prefix` (all items for the empty prefix)."""
        return self.item_ids[np.sort(self.trie.rows_with_prefix(prefix))]

    def item_embeddings(self, item_ids) -> np.ndarray:
        """(n, d) sum of the per-level centroids picked by each item's SID (collision level skipped)."""
        if not self.centroids:
            raise ValueError("this SID tokenizer has no codebook centroids")
        rows = np.asarray([self._row[int(i)] if int(i) in self._row else -1 for i in np.asarray(item_ids).reshape(-1)], dtype=np.int64)
        if (rows < 0).any():
            raise KeyError(f"items without a semantic ID: {np.asarray(item_ids).reshape(-1)[rows < 0][:10].tolist()}")
        out = np.zeros((len(rows), self.centroids[0].shape[1]), dtype=np.float32)
        for lvl, cent in enumerate(self.centroids):
            out += cent[self.codes[rows, lvl]]
        return out

    # ---- persistence -----------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"item_ids": self.item_ids, "codes": self.codes}
        tensors.update({f"centroids_{lvl}": c for lvl, c in enumerate(self.centroids)})
        with atomic_path(d / TABLES_NAME) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        write_json(d / CONFIG_NAME, {
            "tokenizer_class": type(self).__name__,
            "levels": self.levels,
            "codebook_sizes": self.codebook_sizes,
            "level_chars": self.level_chars,
            "token_format": "<{level_char}_{code}>",
            "centroid_levels": len(self.centroids),
            "num_items": len(self),
            "metadata": self.metadata,
        })
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SemanticIdTokenizer":
        from safetensors.numpy import load_file

        d = Path(directory)
        cfg_path, tables_path = d / CONFIG_NAME, d / TABLES_NAME
        for p in (cfg_path, tables_path):
            if not p.exists():
                raise FileNotFoundError(f"{p}: missing; not a saved SemanticIdTokenizer folder")
        cfg = json.loads(cfg_path.read_text())
        tensors = load_file(str(tables_path))
        centroids = [tensors[f"centroids_{lvl}"] for lvl in range(int(cfg.get("centroid_levels", 0)))]
        return cls(tensors["item_ids"], tensors["codes"], cfg["codebook_sizes"], centroids=centroids,
                   level_chars=cfg["level_chars"], metadata=cfg.get("metadata"))

    def __repr__(self) -> str:
        return (f"SemanticIdTokenizer(items={len(self)}, levels={self.levels}, "
                f"codebook_sizes={self.codebook_sizes}, centroid_levels={len(self.centroids)})")
