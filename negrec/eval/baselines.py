"""Baselines negrec must beat, scikit-learn style: `fit(log or Prepared)` then `recommend(samples, k)`.

Every baseline is fitted on training events only (`Prepared.fit_log(split)`) and recommends
for rows of `Prepared.samples[split]` (it reads `neg_items`, `mixed_items`, `mixed_feedback`,
`context_items`, `user_id`). `recommend` returns (n, k) item ids, best first, never an item of
the row's context; ties go to the smaller item id.

- RandomItems: the floor.
- PopularNegatives: items disliked most often.
- NegativeRatio: disliked / shown, smoothed towards the global rate (prior_weight pseudo-views).
- ItemKNN: cosine on co-dislike (users x items negatives); a row scores items similar to its
  recent negatives.
- UserKNN: the row's recent negatives against training users' negatives; the nearest users'
  negatives score.
- SASRec: causal self-attention over the negative sequence (`sequence="negative"`, next
  negative) or the feedback-aware mixed sequence with feedback embeddings (`sequence="mixed"`,
  next negative after each position), early stopping on the last training negative of each user.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from negrec.rewards.matching import ItemSets, UserNeighbours, binary_matrix, index_table, lookup


def _as_log(data, split: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(training log, all item ids) from a Prepared or a log frame."""
    if hasattr(data, "fit_log"):
        return data.fit_log(split), data.items["item_id"].to_numpy(dtype=np.int64)
    missing = [c for c in ("user_id", "item_id", "feedback") if c not in data.columns]
    if missing:
        raise ValueError(f"baseline fit: the log lacks column(s) {missing}")
    return data, None


def _sets(samples: pd.DataFrame, column: str) -> ItemSets:
    if column not in samples.columns:
        raise ValueError(f"samples: missing column {column!r}")
    return ItemSets.from_lists(samples[column])


class Baseline:
    """Fit on a log, score every item for each sample row, recommend the top k outside the context."""

    name = "baseline"
    chunk = 2048  # sample rows scored at once (bounds the dense (rows, items) score block)

    def fit(self, data, split: str = "test", items: np.ndarray | None = None):
        log, known = _as_log(data, split)
        ids = [log["item_id"].to_numpy(dtype=np.int64)]
        for extra in (known, items):
            if extra is not None:
                ids.append(np.asarray(extra, dtype=np.int64))
        self.item_ids = np.unique(np.concatenate(ids))
        self.item_index = index_table(self.item_ids)
        neg = log[log["feedback"].to_numpy() < 0]
        self.neg_counts = np.bincount(self.index(neg["item_id"].to_numpy()), minlength=len(self.item_ids)).astype(np.float64)
        self._fit(log, neg)
        return self

    def index(self, item_ids) -> np.ndarray:
        return lookup(self.item_index, np.asarray(item_ids, dtype=np.int64))

    def _fit(self, log: pd.DataFrame, neg: pd.DataFrame):
        pass

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        """(n_rows, n_items) scores over self.item_ids (higher = more likely disliked)."""
        raise NotImplementedError

    def _history(self, samples: pd.DataFrame, column: str = "neg_items"):
        """Sparse (rows, items) binary matrix of each row's history column."""
        sets = _sets(samples, column)
        idx = self.index(sets.indices)
        ok = idx >= 0
        return binary_matrix(sets.rows[ok], idx[ok], (len(samples), len(self.item_ids)))

    def score_pairs(self, samples: pd.DataFrame, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (row, item) pairs (e.g. same-day candidates); an item the model never saw scores -inf."""
        rows, cols = np.asarray(rows, dtype=np.int64), self.index(np.asarray(items, dtype=np.int64))
        out = np.full(len(rows), -np.inf)
        for start in range(0, len(samples), self.chunk):
            sel = np.flatnonzero((rows >= start) & (rows < start + self.chunk) & (cols >= 0))
            if len(sel):
                scores = np.asarray(self.score(samples.iloc[start:start + self.chunk]), dtype=np.float64)
                out[sel] = scores[rows[sel] - start, cols[sel]]
        return out

    def recommend(self, samples: pd.DataFrame, k: int) -> np.ndarray:
        out = np.full((len(samples), k), -1, dtype=np.int64)
        context = _sets(samples, "context_items")
        # a tiny popularity prior breaks ties (e.g. rows with no history) better than item order
        prior = 1e-9 * self.neg_counts / max(self.neg_counts.max(), 1.0)
        for start in range(0, len(samples), self.chunk):
            part = samples.iloc[start:start + self.chunk]
            scores = np.asarray(self.score(part), dtype=np.float64) + prior
            ctx = context.take(np.arange(start, start + len(part)))
            cols = self.index(ctx.indices)
            ok = cols >= 0
            scores[ctx.rows[ok], cols[ok]] = -np.inf
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            order = np.lexsort((top, -np.take_along_axis(scores, top, axis=1)), axis=1)
            top = np.take_along_axis(top, order, axis=1)
            items = self.item_ids[top]
            items[~np.isfinite(np.take_along_axis(scores, top, axis=1))] = -1
            out[start:start + len(part), :kk] = items
        return out


class RandomItems(Baseline):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, samples):
        # one generator per (user, cut) row: its scores do not depend on the chunk it is scored in
        cuts = samples["cut_ts"].to_numpy() if "cut_ts" in samples else np.zeros(len(samples), np.int64)
        out = np.empty((len(samples), len(self.item_ids)))
        for r, (u, c) in enumerate(zip(samples["user_id"].to_numpy(), cuts)):
            out[r] = np.random.default_rng([self.seed, int(u) & 0xFFFFFFFF, int(c) & 0xFFFFFFFFFFFF]).random(out.shape[1])
        return out


class PopularNegatives(Baseline):
    name = "popular_negatives"

    def score(self, samples):
        return np.broadcast_to(self.neg_counts, (len(samples), len(self.item_ids))).copy()


class NegativeRatio(Baseline):
    name = "negative_ratio"

    def __init__(self, prior_weight: float = 10.0):
        self.prior_weight = prior_weight

    def _fit(self, log, neg):
        shown = np.bincount(self.index(log["item_id"].to_numpy()), minlength=len(self.item_ids)).astype(np.float64)
        rate = self.neg_counts.sum() / max(shown.sum(), 1.0)
        self.ratio = (self.neg_counts + self.prior_weight * rate) / (shown + self.prior_weight)

    def score(self, samples):
        return np.broadcast_to(self.ratio, (len(samples), len(self.item_ids))).copy()


class ItemKNN(Baseline):
    name = "item_knn"

    def __init__(self, neighbors: int = 100, shrink: float = 10.0):
        self.neighbors, self.shrink = neighbors, shrink

    def _fit(self, log, neg):
        import scipy.sparse as sp

        users, u = np.unique(neg["user_id"].to_numpy(), return_inverse=True)
        a = binary_matrix(u, self.index(neg["item_id"].to_numpy()), (len(users), len(self.item_ids)))
        co = (a.T @ a).tocsr().astype(np.float64)
        norm = np.sqrt(np.asarray(a.sum(0)).reshape(-1))
        co = co.tocoo()
        keep = co.row != co.col
        vals = co.data[keep] / (norm[co.row[keep]] * norm[co.col[keep]] + self.shrink)
        sim = sp.csr_matrix((vals, (co.row[keep], co.col[keep])), shape=co.shape)
        self.sim = _top_per_row(sim, self.neighbors)

    def score(self, samples):
        return np.asarray((self._history(samples) @ self.sim).todense())


class UserKNN(Baseline):
    name = "user_knn"

    def __init__(self, neighbors: int = 50):
        self.neighbors = neighbors

    def _fit(self, log, neg):
        self.knn = UserNeighbours(neg["user_id"].to_numpy(), self.index(neg["item_id"].to_numpy()),
                                  len(self.item_ids), self.neighbors)

    def score(self, samples):
        return self.knn.scores(self._history(samples), samples["user_id"].to_numpy())


def _top_per_row(m, k: int):
    """Keep each row's k largest entries of a CSR matrix."""
    import scipy.sparse as sp

    m = m.tocsr()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((-m.data, rows))
    rank = np.arange(len(order)) - np.repeat(m.indptr[:-1], np.diff(m.indptr))
    keep = order[rank < k]
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


# ---- SASRec -------------------------------------------------------------------------------------
@dataclass
class SASRecConfig:
    sequence: str = "negative"  # "negative" (negatives only) | "mixed" (all feedback, with feedback embeddings)
    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 30
    patience: int = 3
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _build_sasrec(n_items: int, cfg: SASRecConfig):
    import torch
    from torch import nn

    class SASRec(nn.Module):
        """Item + position (+ feedback) embeddings, causal Transformer, tied output layer."""

        def __init__(self):
            super().__init__()
            self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # row 0 = padding
            self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
            self.feedback = nn.Embedding(4, cfg.hidden, padding_idx=0)  # 1 + (-1, 0, +1)
            layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 2 * cfg.hidden, cfg.dropout,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            nn.init.normal_(self.items.weight, std=cfg.hidden ** -0.5)  # keeps tied logits O(1) at start
            nn.init.normal_(self.positions.weight, std=cfg.hidden ** -0.5)
            nn.init.normal_(self.feedback.weight, std=cfg.hidden ** -0.5)
            with torch.no_grad():
                self.items.weight[0].zero_()
                self.feedback.weight[0].zero_()
            mask = torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), diagonal=1)
            self.register_buffer("causal", mask, persistent=False)

        def forward(self, items, feedback):
            length = items.shape[1]
            pos = torch.arange(length, device=items.device)
            real = (items != 0).unsqueeze(-1)
            h = (self.items(items) + self.positions(pos)[None] + self.feedback(feedback)) * real
            # causal mask only: padding sits on the left and is zeroed, so no query is fully masked (NaN)
            h = self.encoder(self.drop(h), mask=self.causal[:length, :length])
            return self.norm(h)  # (batch, length, hidden)

        def logits(self, h):
            return h @ self.items.weight[1:].T  # tied output layer over the item vocabulary

    return SASRec()


class SASRec(Baseline):
    """A small SASRec (Kang & McAuley 2018) predicting the next negative; CPU-fast defaults."""

    def __init__(self, cfg: SASRecConfig | None = None, **overrides):
        self.cfg = cfg or SASRecConfig(**overrides)
        if self.cfg.sequence not in ("negative", "mixed"):
            raise ValueError(f"SASRec sequence must be 'negative' or 'mixed', got {self.cfg.sequence!r}")
        self.name = "sasrec" if self.cfg.sequence == "negative" else "sasrec_mixed"
        self.history: list[dict] = []

    def _sequences(self, items: list[np.ndarray], feedback: list[np.ndarray]):
        """Left-padded (n, max_len) item indices (+1), feedback (+2) and next-negative labels (-100 = none)."""
        L = self.cfg.max_len
        xs, fs, ys = [], [], []
        for it, fb in zip(items, feedback):
            idx = self.index(it) + 1
            ok = idx > 0
            idx, fb = idx[ok], fb[ok]
            if self.cfg.sequence == "negative":
                label = np.append(idx[1:] - 1, -100)
            else:  # the next negative strictly after each position
                neg_pos = np.flatnonzero(fb < 0)
                nxt = np.searchsorted(neg_pos, np.arange(len(idx)), side="right")
                label = np.full(len(idx), -100, dtype=np.int64)
                has = nxt < len(neg_pos)
                label[has] = idx[neg_pos[nxt[has]]] - 1
            for end in range(len(idx), 0, -L):  # windows ending at the last event, stepping back
                s = max(0, end - L)
                pad = L - (end - s)
                xs.append(np.pad(idx[s:end], (pad, 0)))
                fs.append(np.pad(fb[s:end] + 2, (pad, 0)))
                ys.append(np.pad(label[s:end], (pad, 0), constant_values=-100))
        return np.array(xs, dtype=np.int64).reshape(-1, L), np.array(fs, dtype=np.int64).reshape(-1, L), np.array(ys, dtype=np.int64).reshape(-1, L)

    def _user_sequences(self, log: pd.DataFrame):
        log = log.sort_values(["user_id", "ts"], kind="stable") if "ts" in log else log
        if self.cfg.sequence == "negative":
            log = log[log["feedback"].to_numpy() < 0]
        groups = log.groupby("user_id", sort=True)
        items = [g["item_id"].to_numpy(dtype=np.int64) for _, g in groups]
        fb = [g["feedback"].to_numpy(dtype=np.int64) for _, g in groups]
        return items, fb

    def _fit(self, log, neg):
        import torch

        torch.manual_seed(self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        items, fb = self._user_sequences(log)
        # hold out each user's last negative: train on what precedes it, validate on predicting it
        train_items, train_fb, val_items, val_fb, val_target = [], [], [], [], []
        for it, f in zip(items, fb):
            negs = np.flatnonzero(f < 0)
            if len(negs) >= 2:
                last = negs[-1]
                train_items.append(it[:last]); train_fb.append(f[:last])
                val_items.append(it[:last]); val_fb.append(f[:last]); val_target.append(it[last])
            else:
                train_items.append(it); train_fb.append(f)
        x, f, y = self._sequences(train_items, train_fb)
        keep = (y != -100).any(1)
        x, f, y = (torch.from_numpy(a[keep]) for a in (x, f, y))
        vx, vf, _ = self._sequences_last(val_items, val_fb)
        vt = self.index(np.asarray(val_target, dtype=np.int64))
        self.model = _build_sasrec(len(self.item_ids), self.cfg)
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=0.0)
        best, best_state, bad = -1.0, None, 0
        for epoch in range(self.cfg.epochs):
            t0 = time.perf_counter()
            self.model.train()
            order = rng.permutation(len(x))
            total = 0.0
            for s in range(0, len(order), self.cfg.batch_size):
                b = torch.from_numpy(order[s:s + self.cfg.batch_size])
                labelled = y[b] != -100  # score only positions with a label: most are padding
                hidden = self.model(x[b], f[b])[labelled]
                loss = torch.nn.functional.cross_entropy(self.model.logits(hidden), y[b][labelled])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            recall = self._val_recall(vx, vf, vt, k=10) if len(vt) else 0.0
            self.history.append({"epoch": epoch, "loss": total / max(len(x), 1), "val_recall@10": recall,
                                 "seconds": time.perf_counter() - t0})
            if recall > best:
                best, best_state, bad = recall, copy.deepcopy(self.model.state_dict()), 0
            else:
                bad += 1
                if bad >= self.cfg.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()

    def _sequences_last(self, items, feedback):
        """One left-padded window per sequence: its last max_len events."""
        L = self.cfg.max_len
        x = np.zeros((len(items), L), dtype=np.int64)
        f = np.zeros((len(items), L), dtype=np.int64)
        for r, (it, fb) in enumerate(zip(items, feedback)):
            idx = self.index(np.asarray(it, dtype=np.int64)) + 1
            fb = np.asarray(fb, dtype=np.int64)
            ok = idx > 0
            idx, fb = idx[ok][-L:], fb[ok][-L:]
            if len(idx):
                x[r, L - len(idx):] = idx
                f[r, L - len(idx):] = fb + 2
        return x, f, None

    def _logits_last(self, x, f) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(x), 512):
                xb, fb = torch.as_tensor(x[s:s + 512]), torch.as_tensor(f[s:s + 512])
                out.append(self.model.logits(self.model(xb, fb)[:, -1]).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.item_ids)))

    def _val_recall(self, vx, vf, vt, k):
        self.model.eval()
        logits = self._logits_last(vx, vf)
        k = min(k, logits.shape[1])  # a catalogue smaller than k: every item is in the top k
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        return float((top == vt[:, None]).any(1).mean())

    def score(self, samples):
        if self.cfg.sequence == "negative":
            items = list(samples["neg_items"])
            fb = [np.full(len(i), -1) for i in items]
        else:
            items, fb = list(samples["mixed_items"]), list(samples["mixed_feedback"])
        x, f, _ = self._sequences_last(items, fb)
        return self._logits_last(x, f)


# name -> factory(seed, sasrec_epochs): every baseline `negrec baselines` can run (`baselines.methods`)
BASELINES = {
    "random": lambda seed, epochs: RandomItems(seed),
    "popular_negatives": lambda seed, epochs: PopularNegatives(),
    "negative_ratio": lambda seed, epochs: NegativeRatio(),
    "item_knn": lambda seed, epochs: ItemKNN(),
    "user_knn": lambda seed, epochs: UserKNN(),
    "sasrec_neg": lambda seed, epochs: SASRec(SASRecConfig(sequence="negative", seed=seed, epochs=epochs)),
    "sasrec_mixed": lambda seed, epochs: SASRec(SASRecConfig(sequence="mixed", seed=seed, epochs=epochs)),
}


def make_baselines(methods, seed: int = 0, sasrec_epochs: int = 30) -> dict[str, Baseline]:
    """Fresh baselines by name, in the order given; an unknown name is an error."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"baselines.methods: unknown {unknown}; known {sorted(BASELINES)}")
    return {m: BASELINES[m](seed, sasrec_epochs) for m in methods}
