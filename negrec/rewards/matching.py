"""The one shared answer to "is this item a future negative, and how close is it".

Both the GRPO rewards and the offline metrics call this module, so what is trained is what
is measured. Everything is vectorised over users: per-user item sets are ragged, stored as
CSR arrays (`ItemSets`: indptr + indices), and set membership is a sorted-key lookup
(`row * base + item`), never a Python loop per user per item.

Only numpy at import time (scipy is imported inside the Swing builder), so serving code may
import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

PAD = -1  # padding item id in dense (n, K) prediction arrays


# ---- ragged per-user sets ---------------------------------------------------------------
@dataclass(frozen=True)
class ItemSets:
    """Ragged per-row item sets in CSR form: row r holds indices[indptr[r]:indptr[r+1]]."""

    indptr: np.ndarray
    indices: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "indptr", np.asarray(self.indptr, dtype=np.int64))
        object.__setattr__(self, "indices", np.asarray(self.indices, dtype=np.int64))
        if self.indptr.ndim != 1 or len(self.indptr) == 0 or self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise ValueError("ItemSets: indptr must start at 0 and end at len(indices)")

    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int] | np.ndarray | None]) -> "ItemSets":
        """From a list of per-row item lists (None / empty allowed); -1 entries are dropped."""
        arrays = [np.asarray([] if r is None else r, dtype=np.int64).reshape(-1) for r in rows]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        indptr = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
        out = cls(indptr, indices)
        return out.drop(out.indices < 0) if (out.indices < 0).any() else out

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int, unique: bool = True) -> "ItemSets":
        """From flat (row, item) pairs; rows in [0, n_rows). Sorted by row (and item when unique)."""
        rows = np.asarray(rows, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if unique and len(rows):
            base = int(items.max()) + 1
            keys = sorted_unique(rows * base + items)
            rows, items = keys // base, keys % base
        else:
            order = np.argsort(rows, kind="stable")
            rows, items = rows[order], items[order]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return cls(indptr, items)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> "ItemSets":
        """From an (n, K) array padded with -1 (order within a row is kept)."""
        dense = np.asarray(dense, dtype=np.int64)
        keep = dense >= 0
        indptr = np.zeros(len(dense) + 1, dtype=np.int64)
        np.cumsum(keep.sum(1), out=indptr[1:])
        return cls(indptr, dense[keep])

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def rows(self) -> np.ndarray:
        """Row index of every entry of `indices`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r]:self.indptr[r + 1]]

    def to_lists(self) -> list[list[int]]:
        return [self.row(r).tolist() for r in range(len(self))]

    def drop(self, mask: np.ndarray) -> "ItemSets":
        """The same sets without the entries where `mask` (aligned with `indices`) is True."""
        keep = ~np.asarray(mask, dtype=bool)
        indptr = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows[keep], minlength=len(self)), out=indptr[1:])
        return ItemSets(indptr, self.indices[keep])

    def map(self, table: np.ndarray) -> "ItemSets":
        """Replace every item by table[item] (e.g. an item -> prefix-key table); -1 results dropped."""
        mapped = ItemSets(self.indptr, lookup(table, self.indices))
        return mapped.drop(mapped.indices < 0)

    def take(self, rows: np.ndarray) -> "ItemSets":
        """The sets of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.indptr[rows], self.lengths[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        within = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], lengths)
        return ItemSets(indptr, self.indices[np.repeat(starts, lengths) + within])

    def union(self, other: "ItemSets") -> "ItemSets":
        if len(self) != len(other):
            raise ValueError(f"union of {len(self)} and {len(other)} rows")
        return ItemSets.from_pairs(np.concatenate([self.rows, other.rows]),
                                   np.concatenate([self.indices, other.indices]), len(self))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based unique is far slower on large int64 keys)."""
    values = np.sort(values)
    if len(values) > 1:
        values = values[np.concatenate([[True], values[1:] != values[:-1]])]
    return values


def lookup(table: np.ndarray, ids: np.ndarray, missing: int = -1) -> np.ndarray:
    """table[ids] with `missing` for ids that are negative or beyond the table."""
    ids = np.asarray(ids, dtype=np.int64)
    ok = (ids >= 0) & (ids < len(table))
    out = np.full(ids.shape, missing, dtype=table.dtype)
    out[ok] = table[ids[ok]]
    return out


def index_table(item_ids: np.ndarray, size: int | None = None) -> np.ndarray:
    """Dense item id -> row table (-1 where absent), so lookups are one gather."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    size = int(item_ids.max()) + 1 if size is None and len(item_ids) else (size or 0)
    table = np.full(size, -1, dtype=np.int64)
    table[item_ids] = np.arange(len(item_ids))
    return table


# ---- membership ---------------------------------------------------------------------------
def isin_rows(query_rows: np.ndarray, query_items: np.ndarray, sets: ItemSets) -> np.ndarray:
    """For flat (row, item) queries: is `item` in sets.row(row)? Vectorised with sorted keys."""
    query_rows = np.asarray(query_rows, dtype=np.int64)
    query_items = np.asarray(query_items, dtype=np.int64)
    out = np.zeros(query_items.shape, dtype=bool)
    if len(sets.indices) == 0 or query_items.size == 0:
        return out
    base = int(max(sets.indices.max(), query_items.max())) + 1
    keys = np.sort(sets.rows * base + sets.indices)
    valid = query_items >= 0
    q = query_rows[valid] * base + query_items[valid]
    pos = np.searchsorted(keys, q)
    pos[pos == len(keys)] = 0
    out[valid] = keys[pos] == q
    return out


def hits(predictions: np.ndarray, targets: ItemSets) -> np.ndarray:
    """(n, K) bool: is predictions[u, k] in the target set of row u (padding -1 never hits)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    n, k = predictions.shape
    if len(targets) != n:
        raise ValueError(f"{n} prediction rows but {len(targets)} target rows")
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    return isin_rows(rows, predictions.reshape(-1), targets).reshape(n, k)


def clean_rankings(predictions: np.ndarray, exclude: ItemSets | None = None, k: int | None = None) -> np.ndarray:
    """Drop padding, repeated items and excluded (context) items; shift the rest left.

    A ranking that lists an already-seen item does not get that slot counted: the items
    behind it move up, as if the model had excluded it itself. Returns (n, k) padded with -1.
    """
    p = np.asarray(predictions, dtype=np.int64)
    n, width = p.shape
    valid = p >= 0
    if width > 1:  # first occurrence of each item per row
        base = int(p.max()) + 2 if p.size else 1
        keys = np.arange(n, dtype=np.int64)[:, None] * base + (p + 1)
        order = np.argsort(keys, axis=1, kind="stable")
        sk = np.take_along_axis(keys, order, axis=1)
        dup_sorted = np.zeros_like(sk, dtype=bool)
        dup_sorted[:, 1:] = sk[:, 1:] == sk[:, :-1]
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        valid &= ~dup
    if exclude is not None:
        valid &= ~hits(np.where(valid, p, PAD), exclude)
    order = np.argsort(~valid, axis=1, kind="stable")
    out = np.where(np.take_along_axis(valid, order, axis=1), np.take_along_axis(p, order, axis=1), PAD)
    k = width if k is None else k
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=PAD)
    return out[:, :k]


# ---- Swing co-negative similarity -----------------------------------------------------------
@dataclass
class ItemSimilarity:
    """Sparse item-item similarity over `item_ids` plus each item's top neighbours.

    `neighbors[r]` lists the item ids most similar to item_ids[r] (best first, -1 padded).
    """

    item_ids: np.ndarray
    matrix: "object"  # scipy.sparse.csr_matrix (n_items, n_items), rows/cols in item_ids order
    neighbors: np.ndarray

    def row_of(self, ids: np.ndarray) -> np.ndarray:
        return lookup(index_table(self.item_ids), ids)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise sim(a[i], b[i]); 0 for unknown items."""
        ra, rb = self.row_of(a), self.row_of(b)
        ok = (ra >= 0) & (rb >= 0)
        out = np.zeros(len(ra), dtype=np.float64)
        if ok.any():
            out[ok] = np.asarray(self.matrix[ra[ok], rb[ok]]).reshape(-1)
        return out


def swing_similarity(
    users: np.ndarray,
    items: np.ndarray,
    alpha: float = 1.0,
    top_n: int = 20,
    max_items_per_user: int = 200,
    user_block: int = 512,
) -> ItemSimilarity:
    """Swing similarity (Yang et al. 2020) between items from (user, item) negative events.

    sim(i, j) = sum over user pairs u != v who both disliked i and j of
    w_u * w_v / (alpha + |I_u ∩ I_v|), with user weight w_u = |I_u| ** -0.5. Only pass
    training negatives. Users with more than `max_items_per_user` items keep their last ones
    (the input order is kept), which bounds the cost on heavy users.

    Computed per block of users u: co-counts C = A[u] A^T give the pairs (u, v) with at least
    two shared items; their intersections P = A[u] ∘ A[v] contribute P^T diag(weight) P.
    """
    import scipy.sparse as sp

    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    user_ids, user_idx = np.unique(users, return_inverse=True)
    n_users, n_items = len(user_ids), len(item_ids)
    if max_items_per_user:  # keep the last N events per user
        order = np.lexsort((-np.arange(len(user_idx)), user_idx))  # by user, latest first
        rank = np.arange(len(order)) - np.searchsorted(user_idx[order], user_idx[order])
        keep = np.zeros(len(user_idx), dtype=bool)
        keep[order] = rank < max_items_per_user
        user_idx, item_idx = user_idx[keep], item_idx[keep]
    a = sp.csr_matrix((np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)), shape=(n_users, n_items))
    a.sum_duplicates()
    a.data[:] = 1.0  # an item disliked twice by a user counts once
    user_w = 1.0 / np.sqrt(np.maximum(np.asarray(a.sum(1)).reshape(-1), 1.0))
    at = a.T.tocsr()  # (items, users): a[block] @ at = shared-item counts per user pair
    sim = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    for start in range(0, n_users, user_block):
        block = np.arange(start, min(start + user_block, n_users))
        co = (a[block] @ at).tocoo()
        u, v = block[co.row], co.col
        pick = (co.data >= 2) & (u != v)
        u, v, c = u[pick], v[pick], co.data[pick]
        if len(u) == 0:
            continue
        weight = user_w[u] * user_w[v] / (alpha + c)
        inter = a[u].multiply(a[v]).tocsr()
        sim = sim + (inter.T.multiply(weight[None, :]).tocsr() @ inter)
    sim = sim.tocsr()
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    return ItemSimilarity(item_ids, sim, _top_neighbors(sim, item_ids, top_n))


def swing_from_log(log, alpha: float = 1.0, top_n: int = 20, max_items_per_user: int = 200) -> ItemSimilarity:
    """Swing co-negatives from a log frame (user_id, item_id, feedback[, ts]): negatives only.

    Pass training events only (e.g. `Prepared.fit_log(split)`), or the future leaks in.
    """
    for c in ("user_id", "item_id", "feedback"):
        if c not in log.columns:
            raise KeyError(f"swing: the log lacks column {c!r}")
    neg = log[log["feedback"].to_numpy() < 0]
    if "ts" in neg.columns:
        neg = neg.sort_values(["user_id", "ts"], kind="stable")
    return swing_similarity(neg["user_id"].to_numpy(), neg["item_id"].to_numpy(), alpha=alpha,
                            top_n=top_n, max_items_per_user=max_items_per_user)


def _top_neighbors(sim, item_ids: np.ndarray, top_n: int) -> np.ndarray:
    """(n_items, top_n) item ids of each row's largest entries, best first, -1 padded."""
    n = sim.shape[0]
    out = np.full((n, max(top_n, 0)), PAD, dtype=np.int64)
    if top_n <= 0 or sim.nnz == 0:
        return out
    rows = np.repeat(np.arange(n), np.diff(sim.indptr))
    # sort entries by (row, -value, col): ties broken by the smaller item id
    order = np.lexsort((sim.indices, -sim.data, rows))
    r, c = rows[order], sim.indices[order]
    rank = np.arange(len(r)) - np.repeat(sim.indptr[:-1], np.diff(sim.indptr))
    keep = rank < top_n
    out[r[keep], rank[keep]] = item_ids[c[keep]]
    return out


def widen_with_co_negatives(targets: ItemSets, swing: ItemSimilarity | None, top_n: int) -> ItemSets:
    """GTS: each row's items plus the top_n Swing co-negatives of every one of them."""
    if swing is None or top_n <= 0 or len(targets.indices) == 0:
        return targets
    table = swing.neighbors[:, :top_n]
    rows_of = swing.row_of(targets.indices)
    known = rows_of >= 0
    extra = table[rows_of[known]]  # (m, top_n)
    extra_rows = np.repeat(targets.rows[known], extra.shape[1])
    extra = extra.reshape(-1)
    ok = extra >= 0
    return ItemSets.from_pairs(np.concatenate([targets.rows, extra_rows[ok]]),
                               np.concatenate([targets.indices, extra[ok]]), len(targets))


# ---- user neighbours (user-kNN over training dislikes) -------------------------------------
def binary_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
    """Sparse 0/1 CSR matrix with a one at each (row, col), duplicates counted once."""
    import scipy.sparse as sp

    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class UserNeighbours:
    """User-kNN over training negatives: a row's disliked items (a sparse 0/1 row over item
    columns) against every training user's, by cosine; its `neighbors` nearest users, the row's
    own user left out, score each item by their summed similarity. What the user-kNN baseline
    ranks by and the `neighbour_neg` reward credits: the one place it is computed."""

    def __init__(self, user_ids: np.ndarray, item_cols: np.ndarray, n_items: int, neighbors: int = 50):
        self.users, u = np.unique(np.asarray(user_ids), return_inverse=True)
        self.user_negs = binary_matrix(u, np.asarray(item_cols, dtype=np.int64), (len(self.users), n_items))
        self.user_norm = np.sqrt(np.asarray(self.user_negs.sum(1)).reshape(-1))
        self.neighbors = neighbors

    def scores(self, history, row_users: np.ndarray) -> np.ndarray:
        """(n_rows, n_items) dense scores of the rows whose negatives `history` (sparse (n_rows,
        n_items) 0/1) holds; `row_users` (n_rows,) names each row's user."""
        q_norm = np.sqrt(np.asarray(history.sum(1)).reshape(-1))
        sims = np.asarray((history @ self.user_negs.T).todense()) / (q_norm[:, None] * self.user_norm[None, :] + 1e-9)
        sims[np.asarray(row_users)[:, None] == self.users[None, :]] = 0.0  # the row's own past is its context anyway
        k = min(self.neighbors, sims.shape[1])
        if k < sims.shape[1]:
            cut = np.partition(sims, -k, axis=1)[:, -k][:, None]
            sims = np.where(sims >= cut, sims, 0.0)
        return np.asarray(self.user_negs.T.dot(sims.T).T)


# ---- embedding closeness ---------------------------------------------------------------------
class ItemEmbeddings:
    """Unit-normalised item embeddings with an id -> row table (e.g. decoded from SIDs)."""

    def __init__(self, item_ids: np.ndarray, vectors: np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.vectors = vectors / np.maximum(norms, 1e-12)
        self.table = index_table(self.item_ids)

    @classmethod
    def from_sid_tokenizer(cls, sid_tok) -> "ItemEmbeddings":
        return cls(sid_tok.item_ids, sid_tok.item_embeddings(sid_tok.item_ids))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return lookup(self.table, ids)


def max_cosine_to_sets(query_items: np.ndarray, sets: ItemSets, emb: ItemEmbeddings,
                       empty: float = 0.0, chunk: int = 1 << 20) -> np.ndarray:
    """For row r: max cosine between query_items[r] and the items of sets.row(r).

    `empty` is returned for rows whose set is empty, whose query is -1 / has no embedding,
    or whose set has no item with an embedding.
    """
    query_items = np.asarray(query_items, dtype=np.int64).reshape(-1)
    if len(query_items) != len(sets):
        raise ValueError(f"{len(query_items)} queries for {len(sets)} sets")
    q = emb.rows(query_items)
    t = emb.rows(sets.indices)
    r = sets.rows
    ok = (t >= 0) & (q[r] >= 0)
    r, t = r[ok], t[ok]
    sims = np.empty(len(r), dtype=np.float32)
    for s in range(0, len(r), chunk):  # bounded memory for millions of pairs
        e = slice(s, s + chunk)
        sims[s:s + chunk] = np.einsum("ij,ij->i", emb.vectors[q[r[e]]], emb.vectors[t[e]])
    out = np.full(len(sets), -np.inf, dtype=np.float64)
    np.maximum.at(out, r, sims)
    out[~np.isfinite(out)] = empty
    return out


# ---- SID prefixes ------------------------------------------------------------------------------
def prefix_key_table(sid_tok, level: int) -> np.ndarray:
    """item id -> integer key of its first `level` SID codes (-1 for items without a SID)."""
    if not 1 <= level <= sid_tok.levels:
        raise ValueError(f"prefix level {level} outside [1, {sid_tok.levels}]")
    key = np.zeros(len(sid_tok.item_ids), dtype=np.int64)
    for lvl in range(level):  # mixed radix over the codebook sizes
        key = key * int(sid_tok.codebook_sizes[lvl]) + sid_tok.codes[:, lvl]
    table = np.full(int(sid_tok.item_ids.max()) + 1 if len(sid_tok.item_ids) else 0, -1, dtype=np.int64)
    table[sid_tok.item_ids] = key
    return table


def prefix_match_level(query_items: np.ndarray, sets: ItemSets, sid_tok) -> np.ndarray:
    """For row r: the longest SID prefix query_items[r] shares with any item of sets.row(r).

    0 = not even the first code matches (or no SID); sid_tok.levels = same SID.
    """
    query_items = np.asarray(query_items, dtype=np.int64).reshape(-1)
    rows = np.arange(len(query_items), dtype=np.int64)
    level = np.zeros(len(query_items), dtype=np.int64)
    for lvl in range(1, sid_tok.levels + 1):
        table = prefix_key_table(sid_tok, lvl)
        qk = lookup(table, query_items)
        matched = isin_rows(rows, qk, sets.map(table)) & (qk >= 0)
        level[matched] = lvl
    return level
