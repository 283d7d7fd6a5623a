"""Constrained decoding of semantic IDs: every generated token continues a valid SID.

`SidConstraint` holds a token-level prefix trie over the SID token ids, stored per depth as
sorted transition keys (`parent * V + token`) plus CSR child lists, so the allowed-token mask
of a whole batch is built with `torch.searchsorted` / `repeat_interleave` and one scatter per
step — no Python loop over beams. Its `logits_processor` plugs into `model.generate`;
`constrained_beam_search` returns the top-K distinct items per prompt (prefilling each prompt
once, then decoding the few SID tokens on its repeated KV cache), `constrained_sample`
draws groups of completions for GRPO.

Every generation setting is pinned (a fresh `GenerationConfig` replaces the model's defaults
for the call), so a checkpoint's `generation_config.json` can't change the decoding.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

NEG_INF = float("-inf")
DEAD_ROW_SCORE = -1.0e4  # a row with no valid continuation may only end, ranked below every live beam


class SidConstraint:
    """Token-level trie over the SID token ids of `sid_tok`, for an HF tokenizer already extended with them.

    `eos`: a SID answer ends with EOS (verbose prompts and the alignment tasks, whose completions
    TRL ends so, and compact timelines by default); False: the SID tokens alone (compact timelines
    under `prompt.event_eos: false`, whose events carry no EOS; `PromptBuilder.sid_constraint` picks
    for its prompts). `new_tokens` is an answer's length either way."""

    def __init__(self, sid_tok, hf_tokenizer, eos: bool = True):
        self.sid_tok = sid_tok
        self.levels = sid_tok.levels
        self.eos = bool(eos)
        self.vocab_size = len(hf_tokenizer)
        self.eos_id = hf_tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the HF tokenizer has no eos_token: constrained decoding needs one to end a SID")
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_id
        table = sid_tok.token_id_table(hf_tokenizer)  # (n_items, L), rows in sid_tok.item_ids order
        self.token_table = torch.as_tensor(table)
        self.item_ids = torch.as_tensor(np.array(sid_tok.item_ids))
        n, L = table.shape
        V = self.vocab_size

        # node index of every item's length-d prefix, d = 0..L (depth L nodes are the items' leaves)
        node_of_item = [np.zeros(n, dtype=np.int64)]
        for d in range(1, L + 1):
            _, inv = np.unique(table[:, :d], axis=0, return_inverse=True)
            node_of_item.append(inv.reshape(-1).astype(np.int64))
        self.num_nodes = [int(x.max()) + 1 if n else 0 for x in node_of_item]
        self.node_offset = np.concatenate([[0], np.cumsum(self.num_nodes)]).astype(np.int64)  # global node ids
        self.node_of_item = node_of_item

        # per depth d: edges parent(depth d) --token--> child(depth d+1), sorted by (parent, token)
        self.keys, self.edge_token, self.edge_child, self.child_ptr = [], [], [], []
        for d in range(L):
            edges = np.unique(np.stack([node_of_item[d], table[:, d], node_of_item[d + 1]], axis=1), axis=0)
            parent, token, child = edges.T
            self.keys.append(torch.as_tensor(parent * V + token))
            self.edge_token.append(torch.as_tensor(token))
            self.edge_child.append(torch.as_tensor(child))
            self.child_ptr.append(torch.as_tensor(np.searchsorted(parent, np.arange(self.num_nodes[d] + 1))))
        leaf_item = np.full(self.num_nodes[L], -1, dtype=np.int64)
        leaf_item[node_of_item[L]] = sid_tok.item_ids
        self.leaf_item = torch.as_tensor(leaf_item)
        self._row_of_item = {int(i): r for r, i in enumerate(sid_tok.item_ids.tolist())}
        self._items_per_node = [np.bincount(node_of_item[d], minlength=self.num_nodes[d]) for d in range(L + 1)]
        self._device_cache: dict = {}

    @property
    def new_tokens(self) -> int:
        """An answer's length in tokens: the SID's levels, and EOS where answers end with it."""
        return self.levels + int(self.eos)

    # ---- tables on the scores' device ---------------------------------------------
    def _on(self, device) -> dict:
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = {
                "keys": [k.to(device) for k in self.keys],
                "edge_token": [t.to(device) for t in self.edge_token],
                "edge_child": [c.to(device) for c in self.edge_child],
                "child_ptr": [p.to(device) for p in self.child_ptr],
                "leaf_item": self.leaf_item.to(device),
            }
        return self._device_cache[device]

    def walk(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trie node reached by each row of `tokens` (R, t); returns (node, ok) with ok False off the trie."""
        tab = self._on(tokens.device)
        R, t = tokens.shape
        node = torch.zeros(R, dtype=torch.long, device=tokens.device)
        ok = torch.ones(R, dtype=torch.bool, device=tokens.device)
        for d in range(min(t, self.levels)):  # loop over SID levels (L <= 4), vectorised over rows
            keys = tab["keys"][d]
            key = node * self.vocab_size + tokens[:, d].long()
            pos = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)
            hit = keys[pos] == key
            ok &= hit
            node = torch.where(hit, tab["edge_child"][d][pos], torch.zeros_like(node))
        return node, ok

    def items_for_token_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """(R, >=L) generated token ids -> (R,) item ids, -1 where the first L tokens are not a valid SID."""
        tokens = torch.as_tensor(tokens)
        if tokens.shape[1] < self.levels:
            return torch.full((tokens.shape[0],), -1, dtype=torch.long)
        node, ok = self.walk(tokens[:, : self.levels])
        items = self._on(tokens.device)["leaf_item"][node]
        return torch.where(ok, items, torch.full_like(items, -1))

    def sid_token_ids(self, item_id: int) -> list[int] | None:
        """The token ids of an item's SID (None for an item without one)."""
        row = self._row_of_item.get(int(item_id))
        return None if row is None else self.token_table[row].tolist()

    def dead_node_keys(self, exclude_items: Sequence[Sequence[int]]) -> torch.Tensor:
        """Sorted keys `prompt * G + global_node` of trie nodes whose every item is excluded for that prompt."""
        G = int(self.node_offset[-1])
        keys = []
        for p, items in enumerate(exclude_items):
            rows = np.asarray([self._row_of_item[int(i)] for i in (items or []) if int(i) in self._row_of_item], dtype=np.int64)
            if not len(rows):
                continue
            rows = np.unique(rows)
            for d in range(self.levels + 1):
                nodes = self.node_of_item[d][rows]
                excluded = np.bincount(nodes, minlength=self.num_nodes[d])
                dead = np.flatnonzero(excluded == self._items_per_node[d])
                keys.append(p * G + self.node_offset[d] + dead)
        if not keys:
            return torch.empty(0, dtype=torch.long)
        return torch.as_tensor(np.sort(np.concatenate(keys)))

    def allowed_mask(self, generated: torch.Tensor, prompt_of_row: torch.Tensor | None = None,
                     dead_keys: torch.Tensor | None = None, vocab_size: int | None = None) -> torch.Tensor:
        """(R, V) bool mask of the tokens each row may emit next, given its generated tokens (R, t).

        V is `vocab_size` (the model's logits width, which may exceed the tokenizer's length)."""
        R, t = generated.shape
        device = generated.device
        mask = torch.zeros(R, vocab_size or self.vocab_size, dtype=torch.bool, device=device)
        if t == self.levels:  # SID complete: only end it
            mask[:, self.eos_id] = True
            return mask
        if t > self.levels:  # already ended (a longer max_new_tokens): pad is what HF writes after EOS
            mask[:, self.pad_id] = True
            mask[:, self.eos_id] = True
            return mask
        tab = self._on(device)
        node, ok = self.walk(generated)
        ptr = tab["child_ptr"][t]
        start, end = ptr[node], ptr[node + 1]
        count = torch.where(ok, end - start, torch.zeros_like(start))
        rows = torch.repeat_interleave(torch.arange(R, device=device), count)
        first = torch.cumsum(count, 0) - count
        edge = torch.repeat_interleave(start - first, count) + torch.arange(int(count.sum()), device=device)
        if dead_keys is not None and len(dead_keys) and prompt_of_row is not None:
            G = int(self.node_offset[-1])
            child_key = prompt_of_row[rows] * G + int(self.node_offset[t + 1]) + tab["edge_child"][t][edge]
            pos = torch.searchsorted(dead_keys, child_key).clamp_(max=len(dead_keys) - 1)
            alive = dead_keys[pos] != child_key
            rows, edge = rows[alive], edge[alive]
        mask[rows, tab["edge_token"][t][edge]] = True
        return mask

    def logits_processor(self, prompt_len: int, exclude_items: Sequence[Sequence[int]] | None = None) -> "SidLogitsProcessor":
        """A `LogitsProcessor` for one `generate` call whose (padded) prompts are `prompt_len` tokens long.

        `exclude_items[p]` lists the items prompt p must never produce (its context); rows are mapped
        to prompts in order, `rows // (rows / len(exclude_items))`, as beams and return sequences are.
        """
        return SidLogitsProcessor(self, prompt_len, exclude_items)


class SidLogitsProcessor(LogitsProcessor):
    """Sets every token that does not continue a valid (and non-excluded) SID to -inf."""

    def __init__(self, constraint: SidConstraint, prompt_len: int, exclude_items=None):
        self.constraint = constraint
        self.prompt_len = int(prompt_len)
        self.n_prompts = len(exclude_items) if exclude_items is not None else None
        self.dead_keys = constraint.dead_node_keys(exclude_items) if exclude_items is not None else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        R = input_ids.shape[0]
        generated = input_ids[:, self.prompt_len:]
        prompt_of_row, dead = None, None
        if self.dead_keys is not None and len(self.dead_keys):
            if R % self.n_prompts:
                raise ValueError(f"{R} rows for {self.n_prompts} prompts: exclude_items must have one entry per prompt")
            prompt_of_row = torch.arange(R, device=input_ids.device) // (R // self.n_prompts)
            dead = self.dead_keys.to(input_ids.device)
        mask = self.constraint.allowed_mask(generated, prompt_of_row, dead, vocab_size=scores.shape[1])
        out = scores.masked_fill(~mask, NEG_INF)
        empty = ~mask.any(dim=1)
        if empty.any():  # never leave a row all -inf (NaN under softmax): let it end, ranked last
            out[empty, self.constraint.eos_id] = DEAD_ROW_SCORE
        return out


# ---- generation helpers -------------------------------------------------------------
@contextlib.contextmanager
def pinned_generation_config(model, hf_tok, **settings):
    """Swap `model.generation_config` for one holding only `settings` + token ids, so no
    checkpoint default (top_k=50, repetition penalty, forced tokens, ...) leaks into a call."""
    saved = model.generation_config
    eos = hf_tok.eos_token_id
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else eos
    pinned = dict(eos_token_id=eos, pad_token_id=pad, bos_token_id=hf_tok.bos_token_id, repetition_penalty=1.0,
                  no_repeat_ngram_size=0, top_k=0, top_p=1.0, typical_p=1.0, min_p=None,
                  temperature=1.0, length_penalty=1.0, early_stopping=False, use_cache=True)
    if not settings.get("do_sample"):  # sampling knobs unused; left unset so the config validates quietly
        pinned.update(top_k=None, top_p=None, typical_p=None, temperature=None)
    cfg = GenerationConfig(**{**pinned, **settings})
    model.generation_config = cfg
    try:
        yield cfg
    finally:
        model.generation_config = saved


def encode_prompts(hf_tok, prompts: Sequence[str], device):
    """Token ids and attention mask of `prompts`, left padded (generation continues after each row's last token)."""
    side = hf_tok.padding_side
    hf_tok.padding_side = "left"  # generation continues after the last prompt token of every row
    try:
        enc = hf_tok(list(prompts), return_tensors="pt", padding=True)
    finally:
        hf_tok.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


# attention implementations that apply a custom 4D mask as given (flash attention ignores it)
TREE_ATTENTION = ("sdpa", "eager")


def _shares_prompt_cache(model, cache) -> bool:
    """Whether a prompt's beams can share its KV cache (`_tree_step`): the attention must apply a
    custom 4D mask as given, the cache must crop back to the prompt, and no sliding window may hide
    part of the prompt from the beams (the mask would show it)."""
    cfg = model.config
    sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return (getattr(cfg, "_attn_implementation", None) in TREE_ATTENTION and not sliding
            and bool(getattr(cache, "is_croppable", True)) and hasattr(cache, "crop"))


def _forward_takes(model, name: str) -> bool:
    """Whether the causal LM's forward takes argument `name` (a PEFT wrapper passes it on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in _forward_parameters(type(base))


@functools.lru_cache(maxsize=None)
def _forward_parameters(cls) -> frozenset:  # once per model class, not per decoding step
    import inspect

    return frozenset(inspect.signature(cls.forward).parameters)


def _keeps_logits(model) -> bool:
    return _forward_takes(model, "logits_to_keep")


def cached(model, cache) -> dict:
    """The forward's KV-cache argument: `cache` where the forward names it so (transformers 5.24 renamed
    `past_key_values`, which now warns and goes in 5.40), else `past_key_values`."""
    return {"cache" if _forward_takes(model, "cache") else "past_key_values": cache}


def output_cache(out):
    """The KV cache a forward returned, under either name (`cached`)."""
    return out["cache"] if "cache" in out else out.past_key_values


@torch.no_grad()
def _cached_beam_batch(model, constraint: SidConstraint, input_ids, attn, num_beams: int, exclude,
                       tree: bool | None = None):
    """One batch of constrained beam search that reads each prompt once.

    `generate(num_beams=B)` copies every prompt B times before its first forward pass, so for a
    SID (a handful of tokens after a few hundred prompt tokens) almost all the work is B identical
    prefills. Here each prompt is prefilled once and the L + 1 decoding steps (L SID tokens, then
    EOS unless the constraint's answers end without it) run on its KV cache. With `tree` (the default where the attention takes a 4D mask) the
    beams share that cache: each step feeds every beam's tokens at once, each attending to the prompt
    and to its own beam (`_tree_step`), and the cache is cropped back to the prompt; without it
    (`tree=False`, or a model `_shares_prompt_cache` refuses) the cache is repeated for the beams and
    reordered every step, which copies it each time (bench_decode.py: 4 to 5 times slower on the tiny
    model at 50 and 150 beams, 1.4 and 2.7 times on SmolLM2-135M). The scores are what `generate` computes with
    length_penalty=0: the sum of the raw token log-probabilities, EOS included where the answers end
    with it (`SidConstraint.eos`), with disallowed
    tokens masked out (tests check the engines agree).
    Returns (items (P, num_beams), scores (P, num_beams)); -1 / -inf where the trie has fewer
    valid SIDs than beams.
    """
    P = input_ids.shape[0]
    device = input_ids.device
    dead = constraint.dead_node_keys(exclude).to(device) if exclude is not None else None
    pos = (attn.long().cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True)
    cache, next_pos = output_cache(out), attn.long().sum(-1)  # (P,) position of the first new token
    if tree is None:
        tree = _shares_prompt_cache(model, cache)
    keep_logits = tree and _keeps_logits(model)  # once per batch: a signature lookup, not per step
    logp = torch.log_softmax(out.logits[:, -1].float(), -1)
    V = logp.shape[1]
    prompt_of_row = torch.arange(P, device=device)
    generated = torch.empty(P, 0, dtype=torch.long, device=device)
    scores = torch.zeros(P, device=device)
    for t in range(constraint.new_tokens):
        mask = constraint.allowed_mask(generated, prompt_of_row, dead, vocab_size=V)
        cand = (scores[:, None] + logp).masked_fill_(~mask, NEG_INF)
        if t == constraint.levels:  # the SID is complete: its score includes log p(EOS)
            scores = cand[:, constraint.eos_id]
            break
        width = cand.shape[0] // P  # beams per prompt so far (1 at the first step)
        top, idx = cand.view(P, width * V).topk(num_beams, dim=1)
        src = (torch.arange(P, device=device)[:, None] * width + idx // V).view(-1)  # parent row of each beam
        token = (idx % V).view(-1, 1)
        generated = torch.cat([generated[src], token], 1)
        scores, prompt_of_row = top.view(-1), prompt_of_row[src]
        if t + 1 == constraint.new_tokens:  # a SID without EOS is complete: no forward pass after its last token
            break
        if tree:
            logits = _tree_step(model, cache, attn, next_pos, generated.view(P, num_beams, -1), keep_logits)
        else:
            if t == 0:
                cache.batch_repeat_interleave(num_beams)
                attn, next_pos = attn.repeat_interleave(num_beams, 0), next_pos.repeat_interleave(num_beams)
            else:
                cache.reorder_cache(src)
                attn, next_pos = attn[src], next_pos[src]
            attn = torch.cat([attn, attn.new_ones(len(src), 1)], 1)
            logits = model(input_ids=token, attention_mask=attn, position_ids=next_pos[:, None], **cached(model, cache),
                           use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        logp = torch.log_softmax(logits.float(), -1)
    items = constraint.items_for_token_ids(generated)
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    return items.view(P, num_beams), scores.view(P, num_beams)


def _tree_step(model, cache, attn, next_pos, beams, keep_logits: bool) -> torch.Tensor:
    """Logits after the last token of each beam, (P * B, V), for beams (P, B, n) of generated tokens:
    the B * n tokens of a prompt's beams go in as one sequence after its cached prompt, a 4D mask
    letting each token see the prompt (`attn`) and the tokens before it in its own beam, at the
    positions it would have in its own sequence. The cache is cropped back to the prompt after.
    `keep_logits`: the forward takes `logits_to_keep` (`_keeps_logits`)."""
    P, B, n = beams.shape
    T, device = attn.shape[1], beams.device
    step = torch.arange(n, device=device).repeat(B)  # each fed token's place in its beam
    beam = torch.arange(B, device=device).repeat_interleave(n)
    own = (beam[:, None] == beam[None, :]) & (step[None, :] <= step[:, None])
    sees = torch.cat([attn.bool()[:, None, :].expand(P, B * n, T), own.expand(P, -1, -1)], -1)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill_(~sees, torch.finfo(dtype).min)
    last = torch.arange(B, device=device) * n + n - 1
    keep = {"logits_to_keep": last} if keep_logits else {}  # else every fed token's logits, then these
    out = model(input_ids=beams.reshape(P, B * n), attention_mask=mask[:, None], position_ids=next_pos[:, None] + step,
                **cached(model, cache), use_cache=True, **keep)
    cache.crop(-B * n)  # negative: tokens to drop (a positive length is refused by newer transformers)
    return (out.logits if keep else out.logits[:, last]).reshape(P * B, -1)


@torch.no_grad()
def constrained_beam_search(model, hf_tok, constraint: SidConstraint, prompts: Sequence[str], num_beams: int = 20,
                            top_k: int = 10, exclude: Sequence[Sequence[int]] | None = None, batch_size: int = 16,
                            constrained: bool = True, progress: bool = False,
                            engine: str = "cached") -> list[list[tuple[int, float]]]:
    """Per prompt, up to `top_k` distinct valid items with their SID log-probabilities, best first.

    `exclude[p]` holds items prompt p must not return (pruned inside the search, so beams are not
    wasted on them). `engine="cached"` prefills each prompt once and its beams share that KV cache
    where the attention takes a 4D mask (see `_cached_beam_batch`); `"repeated"` copies the cache
    for the beams instead (what "cached" does under flash attention); `engine="generate"` runs
    `model.generate` with the SID `LogitsProcessor` (same results, slower).
    `constrained=False` runs plain `generate` beam search (for benchmarks) and keeps only the
    completions that happen to be valid items.
    """
    if top_k > num_beams:
        raise ValueError(f"top_k={top_k} > num_beams={num_beams}: beam search can return at most num_beams items")
    if engine not in ("cached", "repeated", "generate"):
        raise ValueError(f"engine must be 'cached', 'repeated' or 'generate', got {engine!r}")
    model.eval()
    device = next(model.parameters()).device
    results: list[list[tuple[int, float]]] = []
    spans = list(_batches(len(prompts), batch_size))
    if progress:
        from tqdm.auto import tqdm
        spans = tqdm(spans, desc="beam search", unit="batch")
    settings = dict(do_sample=False, num_beams=num_beams, num_return_sequences=num_beams,
                    max_new_tokens=constraint.new_tokens, length_penalty=0.0, early_stopping=True,
                    return_dict_in_generate=True, output_scores=True)
    for s, e in spans:
        input_ids, attn = encode_prompts(hf_tok, prompts[s:e], device)
        ex = None if exclude is None else [list(x) for x in exclude[s:e]]
        if constrained and engine != "generate":
            tree = None if engine == "cached" else False
            items_t, scores_t = _cached_beam_batch(model, constraint, input_ids, attn, num_beams, ex, tree)
            items, scores = items_t.tolist(), scores_t.cpu().tolist()
        else:
            procs = LogitsProcessorList([constraint.logits_processor(input_ids.shape[1], ex)] if constrained else [])
            with pinned_generation_config(model, hf_tok, **settings):
                out = model.generate(input_ids=input_ids, attention_mask=attn, logits_processor=procs)
            seqs = out.sequences[:, input_ids.shape[1]:]
            items = constraint.items_for_token_ids(seqs).view(e - s, num_beams).tolist()
            scores = out.sequences_scores.view(e - s, num_beams).float().cpu().tolist()
        for p in range(e - s):
            banned = set(int(i) for i in ex[p]) if ex is not None else set()
            seen, ranked = set(), []
            for item, score in sorted(zip(items[p], scores[p]), key=lambda x: -x[1]):
                if item < 0 or item in seen or item in banned or not np.isfinite(score) or score < -1e8:
                    continue  # -1e9 scores are beam-search fillers when the trie has fewer branches than beams
                seen.add(item)
                ranked.append((int(item), float(score)))
                if len(ranked) == top_k:
                    break
            results.append(ranked)
    return results


@torch.no_grad()
def constrained_sample(model, hf_tok, constraint: SidConstraint, prompts: Sequence[str], num_generations: int = 8,
                       temperature: float = 1.0, exclude: Sequence[Sequence[int]] | None = None,
                       batch_size: int = 16, seed: int | None = None) -> list[list[dict]]:
    """Per prompt, `num_generations` sampled SIDs (pure temperature sampling: top_k=0, top_p=1).

    Each completion is a dict `{"completion": SID token string, "item_id": int, "token_ids": list[int]}`;
    every completion is a valid item by construction.
    """
    model.eval()
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    settings = dict(do_sample=True, num_beams=1, num_return_sequences=num_generations, temperature=float(temperature),
                    max_new_tokens=constraint.new_tokens)
    results: list[list[dict]] = []
    for s, e in _batches(len(prompts), batch_size):
        input_ids, attn = encode_prompts(hf_tok, prompts[s:e], device)
        ex = None if exclude is None else [list(x) for x in exclude[s:e]]
        procs = LogitsProcessorList([constraint.logits_processor(input_ids.shape[1], ex)])
        with pinned_generation_config(model, hf_tok, **settings):
            seqs = model.generate(input_ids=input_ids, attention_mask=attn, logits_processor=procs)
        gen = seqs[:, input_ids.shape[1]:input_ids.shape[1] + constraint.levels].cpu()
        items = constraint.items_for_token_ids(gen).view(e - s, num_generations).tolist()
        gen = gen.view(e - s, num_generations, -1).tolist()
        for p in range(e - s):
            results.append([{"completion": constraint.sid_tok.tokens_for_item(i) if i >= 0 else "",
                             "item_id": int(i), "token_ids": toks} for i, toks in zip(items[p], gen[p])])
    return results
