"""Next-negative training on whole timelines, the way SASRec and TIGER learn: every event of every
training sequence is a target, in one forward pass per window.

A user's events before their cut (`training_log`: the test cut, or the validation cut for the users
whose validation picks the epoch) become one token sequence in the
compact prompt format (`negrec.llm.prompts.CompactCodec`): per event a feedback token and the item's
SID tokens (like tokens for a non-negative event under `prompt.like_tokens`) and EOS (none under
`prompt.event_eos: false`). The loss sits on the SID tokens (and EOS) of every event, weighted 1 for a
negative event and `other_weight` for the others; the feedback token before each SID is the
condition, so at inference the prompt's final <|neg|> asks for the next item the user dislikes.
Under `prompt.day_breaks` a <|day|> token (also a condition) opens each later day, and a day-cut
prompt ends <|day|><|neg|>: the question is then what the user dislikes in the coming days. Under
`shuffle_within_day` each day's events come in a fresh random order every epoch, so the model learns
which items a day holds rather than the order a burst runs in, which a day-cut future never shows.
Long timelines are cut into windows of `window_events` events, stepping back from the latest.

Training runs for up to `epochs` passes over the windows (or `max_steps`), measures Recall@10 of
constrained beam search on validation users after every `val_every`-th epoch and the last, and keeps
the best validated epoch (early stop after `patience` validations without gain). A checkpoint after
each epoch lets a killed run resume. Learning curves go to TensorBoard and into the summary.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

from negrec.data.splits import DAY
from negrec.llm.constrained import constrained_beam_search
from negrec.llm.peft import is_peft_model
from negrec.llm.prompts import CompactCodec, PromptBuilder, new_day_flags
from negrec.rewards.matching import ItemSets, clean_rankings, hits
from negrec.train.ranks import Ranks, launch_ranks


# ---- data ------------------------------------------------------------------------------
def timeline_windows(log, limit: dict | None, codec: CompactCodec, window_events: int,
                     other_weight: float, shuffle: np.random.Generator | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss weights) per window of each user's events before `limit[user]` (seconds).

    Weights sit on the tokens to predict: 0 on the prefix, feedback and day tokens, 1 on the SID
    tokens (and EOS, with `codec.event_eos`) of a negative event, `other_weight` on those of other events. With `shuffle`,
    each day's events (UTC) come in a random order; the windows' bounds stay where they were. With
    `codec.older_negatives`, a window opens with the user's last negatives before it (weight 0)."""
    log = log[log["item_id"].isin(list(codec.row_of_item))]
    if limit is not None:
        lim = log["user_id"].map(limit).fillna(np.iinfo(np.int64).max).to_numpy()
        log = log[log["ts"].to_numpy() < lim]
    if shuffle is not None:
        log = log.iloc[np.lexsort((shuffle.random(len(log)), log["ts"].to_numpy() // DAY, log["user_id"].to_numpy()))]
    users = log["user_id"].to_numpy()
    rows = np.fromiter((codec.row_of_item[int(i)] for i in log["item_id"].to_numpy()), np.int64, len(log))
    fb = np.sign(log["feedback"].to_numpy()).astype(np.int64)
    fb_ids = np.array([codec.fb_id[int(f) if codec.feedback_tokens else 0] for f in (-1, 0, 1)])
    sids = np.where((fb < 0)[:, None], codec.table[rows], codec.like_table[rows])
    tokens = np.concatenate([fb_ids[fb + 1][:, None], sids, np.tile(np.asarray(codec.end_ids, np.int64), (len(rows), 1))], 1)
    w = np.where(fb < 0, 1.0, other_weight)[:, None] * np.r_[0.0, np.ones(tokens.shape[1] - 1)][None]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(users)]
    # a leading column: DAY_TOKEN (a condition, weight 0) before an event that opens a new day, else -1 (dropped)
    new_day = new_day_flags(log["ts"].to_numpy()) & np.r_[False, users[1:] == users[:-1]]
    lead = np.where(new_day, codec.day_id, -1) if codec.day_breaks else np.full(len(rows), -1)
    tokens, w = np.c_[lead, tokens], np.c_[np.zeros(len(w)), w]
    prefix = np.asarray(codec.prefix_ids, np.int64)
    negatives = np.flatnonzero(fb < 0)
    out = []
    for a, b in zip(starts, ends):
        for end in range(b, a, -window_events):
            s = max(a, end - window_events)
            if w[s:end].sum() > 0:
                t, v = tokens[s:end].copy(), w[s:end]
                t[0, 0] = -1  # a window's first event opens it: no break before it, as in a prompt
                if codec.older_negatives:  # the user's negatives before the window open it, as a prompt's do
                    older = negatives[np.searchsorted(negatives, a):np.searchsorted(negatives, s)][-codec.older_negatives:]
                    t, v = np.r_[tokens[older], t], np.r_[np.zeros((len(older), v.shape[1])), v]
                    t[:len(older), 0] = -1  # no day breaks among them, and no loss: they are context
                keep = t.ravel() >= 0
                out.append((np.r_[prefix, t.ravel()[keep]], np.r_[np.zeros(len(prefix)), v.ravel()[keep]]))
    return out


def example_windows(examples: list[dict], hf_tok, weight: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prompt/completion examples (the item-level alignment tasks) as windows for the same loop:
    prompt ids, completion ids and EOS, tokenized as TRL's SFTTrainer does, with the loss
    (`weight`) on the completion and EOS only."""
    if not examples:  # items of bare ids: nothing to co-train (a tokenizer refuses an empty batch)
        return []
    prompts = hf_tok([e["prompt"] for e in examples])["input_ids"]
    completions = hf_tok([e["completion"] for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, completions):
        ids = np.asarray([*p, *c, hf_tok.eos_token_id], np.int64)
        out.append((ids, np.r_[np.zeros(len(p)), np.full(len(c) + 1, float(weight))]))
    return out


def training_log(data, fit_until: str, val_users) -> tuple:
    """(log, per-user limit) the timeline trains on; see `SFTStageConfig.fit_until`.

    "test" is what the baselines fit for the test split see (events before each user's test cut),
    less the validation users' events from their validation cut on, so the validation Recall that
    picks the epoch is measured on futures the model never saw."""
    if fit_until == "valid":
        return data.fit_log("train"), None
    limits = data.cuts.set_index("user_id")["train_limit"]
    val_users = [u for u in set(int(u) for u in val_users) if u in limits.index]
    return data.fit_log("test"), {u: int(limits[u]) for u in val_users}


def _batches(windows, batch_size: int, rng: np.random.Generator):
    """Batches of similar-length windows (little padding), in random order. Equal lengths are
    ordered at random each epoch: with a stable sort the windows of one length (most timeline
    windows are full) formed the same batches every epoch."""
    lengths = np.asarray([len(ids) for ids, _ in windows])
    order = np.lexsort((rng.random(len(windows)), lengths))
    groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(groups)
    return groups


def _mix_in(groups: list, first: int, n_extra: int, per_batch: int, rng: np.random.Generator) -> list:
    """Add `per_batch` of the extra examples (indices `first`..`first + n_extra - 1`, a fresh random
    order each epoch) to every batch. In batches of their own the short alignment examples took full
    Adam steps and the weight-normalised loss cancelled their weight, so co-training cost recall at
    any weight (R@10 -0.028 at weight 0.1); mixed in, the weight sets their share of each step."""
    if not n_extra or per_batch <= 0:
        return groups
    need = len(groups) * per_batch
    pick = np.concatenate([rng.permutation(n_extra) for _ in range(-(-need // n_extra))])[:need] + first
    return [np.r_[g, pick[i * per_batch:(i + 1) * per_batch]] for i, g in enumerate(groups)]


def _collate(windows, idx, pad_id: int):
    width = max(len(windows[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(idx), width))
    attn = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        t, wt = windows[i]
        ids[r, :len(t)] = torch.as_tensor(t)
        w[r, :len(t)] = torch.as_tensor(wt, dtype=torch.float32)
        attn[r, :len(t)] = 1
    return ids, attn, w


def weighted_lm_loss(model, ids, attn, weights, loss_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted next-token cross-entropy, sum of weights), the LM head computed only where
    a weight is set. `loss_ids` (sorted token ids holding every target, see `check_loss_targets`):
    the softmax runs over those rows of the LM head alone."""
    device = next(model.parameters()).device
    ids, attn, weights = ids.to(device), attn.to(device), weights.to(device)
    body = (model.get_base_model() if is_peft_model(model) else model).base_model  # the transformer, LoRA layers in it
    hidden = body(input_ids=ids, attention_mask=attn).last_hidden_state
    w = weights[:, 1:]
    sel = w > 0
    h, target = hidden[:, :-1][sel], ids[:, 1:][sel]
    head = model.get_output_embeddings()
    if loss_ids is None:
        logits = head(h)
    else:
        logits = (torch.nn.functional.linear(h, head.weight[loss_ids], None if head.bias is None else head.bias[loss_ids])
                  if type(head) is torch.nn.Linear else head(h)[:, loss_ids])  # a wrapped head (LoRA): all rows, then ours
        # every target is in loss_ids (`check_loss_targets`, once per run, not a device sync per batch)
        target = torch.searchsorted(loss_ids, target)
    ce = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
    return (ce * w[sel]).sum(), w[sel].sum()


def check_loss_targets(windows, loss_ids: np.ndarray) -> None:
    """Refuse windows with a weighted target outside `loss_ids`: `weighted_lm_loss` would map it
    to a neighbouring id silently."""
    if np.any(np.diff(loss_ids) <= 0):
        raise ValueError("loss_ids must be sorted and unique (weighted_lm_loss maps targets by searchsorted)")
    targets = np.unique(np.concatenate([t[1:][w[1:] > 0] for t, w in windows] or [np.zeros(0, np.int64)]))
    outside = np.setdiff1d(targets, loss_ids)
    if len(outside):
        raise ValueError(f"{len(outside)} loss target token(s) lie outside the restricted vocabulary "
                         f"(sft loss_vocab: sid), e.g. id {int(outside[0])}")


def batch_loss(model, windows, idx, pad_id: int, n_windows: int, loss_ids: torch.Tensor | None = None,
               ranks: Ranks = Ranks()) -> torch.Tensor | None:
    """Weighted mean loss of one batch. The mixed-in examples (index >= `n_windows`, short) take a
    forward pass of their own, so they are not padded to the timeline windows' width; `loss_ids`
    restricts the timeline windows' softmax (the examples' answers hold text: they keep the full one).
    Under several `ranks`: this rank's share of each part over the whole batch's weight (None when
    the share is empty), so that the ranks' summed gradients are the one-process gradient."""
    idx = np.asarray(idx)
    split = [(ranks.share(part), ids) for part, ids in ((idx[idx < n_windows], loss_ids), (idx[idx >= n_windows], None))]
    parts = [weighted_lm_loss(model, *_collate(windows, part, pad_id), loss_ids=ids) for part, ids in split if len(part)]
    if ranks.world == 1:
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)
    total = sum(float(w[1:][w[1:] > 0].sum()) for w in (windows[i][1] for i in idx))
    return sum(p[0] for p in parts) / total if parts else None


# ---- validation --------------------------------------------------------------------------
def validation_recall(model, hf_tok, sid_tok, builder: PromptBuilder, rows: list[dict], horizon: int,
                      k: int = 10, num_beams: int = 20, batch_size: int = 16) -> float:
    """Mean capped Recall@k of constrained beam search over `rows` (samples with a non-empty F_H)."""
    if not rows:
        return float("nan")
    return float(np.mean(validation_recalls(model, hf_tok, sid_tok, builder, rows, horizon, k, num_beams, batch_size)))


def validation_recalls(model, hf_tok, sid_tok, builder: PromptBuilder, rows: list[dict], horizon: int,
                       k: int = 10, num_beams: int = 20, batch_size: int = 16, ranks: Ranks = Ranks()) -> np.ndarray:
    """Capped Recall@k of constrained beam search for each of `rows` (under several `ranks`, each
    searches its span of whole batches and every rank gets them all)."""
    if ranks.world > 1:
        mine = rows[ranks.span(len(rows), batch_size)]
        return ranks.gather(validation_recalls(model, hf_tok, sid_tok, builder, mine, horizon, k, num_beams, batch_size)
                            if mine else np.zeros(0))
    constraint = builder.sid_constraint(hf_tok)
    prompts = [builder.build(r) for r in rows]
    exclude = [list(r["context_items"]) for r in rows]
    ranked = constrained_beam_search(model, hf_tok, constraint, prompts, num_beams=max(num_beams, k), top_k=k,
                                     exclude=exclude, batch_size=batch_size)
    dense = np.full((len(rows), k), -1, dtype=np.int64)
    for r, lst in enumerate(ranked):
        dense[r, :len(lst)] = [i for i, _ in lst]
    targets = ItemSets.from_lists([r[f"future_neg_h{horizon}"] for r in rows])
    n_hit = hits(clean_rankings(dense, ItemSets.from_lists(exclude), k=k), targets).sum(1)
    return n_hit / np.maximum(np.minimum(k, targets.lengths), 1)


def significantly_worse(recalls: np.ndarray, best: np.ndarray | None) -> bool:
    """True when `recalls` is below `best` on the same users by more than one standard error of
    the paired difference: smaller gaps are validation noise (200 users: SE ~0.01 of Recall@10)."""
    if best is None or len(recalls) < 2:
        return False
    diff = recalls - best
    return bool(diff.mean() < -diff.std(ddof=1) / np.sqrt(len(diff)))


def validation_rows(samples, horizon: int, max_rows: int, seed: int = 0) -> list[dict]:
    col = f"future_neg_h{horizon}"
    df = samples[samples[col].map(len) > 0]
    if max_rows and len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=seed)
    return df.to_dict("records")


# ---- training ------------------------------------------------------------------------------
def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint whole


def _resume(saved: dict, key: str, model, opt, sched, state: dict, rng, seed: int):
    """(state, rng) after loading a checkpoint written under `key` into model, optimizer and
    schedule; (state, rng) unchanged for another key. The batch order and dropout go on as if
    never killed (a checkpoint from before they were saved: reseeded per epoch)."""
    if saved.get("key") != key:
        return state, rng
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    state = saved["state"]
    if "rng" in saved:
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
    else:
        rng = np.random.default_rng(seed + state["epoch"])
    print(f"[timeline] resuming after epoch {state['epoch']} (step {state['step']})")
    return state, rng


def train_timeline(model, hf_tok, sid_tok, windows, val_rows, builder, cfg, horizon: int,
                   ckpt_path: Path | None = None, resume_key: str = "", tb_dir: Path | None = None,
                   extra: list | None = None, loss_ids: np.ndarray | None = None, reshuffle=None,
                   autocast: torch.dtype | None = None) -> dict:
    """Train on `windows`, select the epoch by validation Recall@10; the model ends at the best epoch.
    `extra` (the co-trained alignment examples) rides along, `cfg.align_per_batch` in every batch;
    `loss_ids` (token ids) restricts the windows' softmax (`weighted_lm_loss`); `reshuffle(rng)`
    gives each epoch's windows (`timeline_windows` with `shuffle`); `autocast` (a dtype) runs the
    forward and backward in it, the weights and AdamW staying in theirs (`negrec.llm.model.training_autocast`).
    Under a launcher the ranks train the model together (`negrec.train.ranks`); rank 0 writes."""
    from torch.utils.tensorboard import SummaryWriter

    ranks = launch_ranks(model)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    total, n_epochs = _budget(cfg, len(windows))
    opt, sched = _optimizer(model, cfg, total)
    state = {"epoch": 0, "step": 0, "history": [], "best": -1.0, "best_epoch": 0, "best_state": None, "bad": 0,
             "best_recalls": None, "kept_epoch": 0, "kept_recall": -1.0}
    if ckpt_path is not None and ckpt_path.exists() and cfg.resume:
        state, rng = _resume(torch.load(ckpt_path, weights_only=False), resume_key, model, opt, sched, state, rng, cfg.seed)
    writer = SummaryWriter(log_dir=str(tb_dir)) if tb_dir and ranks.is_main else None
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
    device_type = next(model.parameters()).device.type
    mixed = (lambda: torch.autocast(device_type, dtype=autocast)) if autocast is not None else contextlib.nullcontext
    loss_ids = _loss_rows(windows, loss_ids, next(model.parameters()).device)
    timeline, extra = windows, list(extra or [])
    n_windows, windows = len(timeline), list(timeline) + extra  # extras index after the timeline windows
    while state["epoch"] < n_epochs and state["step"] < total and state["bad"] < cfg.patience:
        model.train()
        if reshuffle is not None:  # the count can change (with other_weight 0 a window may lose its negatives)
            timeline = reshuffle(rng)
            n_windows, windows = len(timeline), list(timeline) + extra
        batches = _mix_in(_batches(timeline, cfg.batch_size, rng), n_windows, len(extra),
                          cfg.align_per_batch, rng)
        loss_of = functools.partial(batch_loss, model, windows, pad_id=pad, n_windows=n_windows, loss_ids=loss_ids,
                                    ranks=ranks)
        losses = _train_epoch(lambda lf: _step(model, opt, ranks, mixed, lf), loss_of, sched, batches, state, total,
                              f"epoch {state['epoch'] + 1}/{n_epochs}", ranks.is_main, writer, cfg.logging_steps)
        model.eval()
        state["epoch"] += 1
        last = state["epoch"] >= n_epochs or state["step"] >= total
        validate = bool(val_rows) and (state["epoch"] % cfg.val_every == 0 or last)
        per_user = (validation_recalls(model, hf_tok, sid_tok, builder, val_rows, horizon, num_beams=cfg.val_beams,
                                       ranks=ranks) if validate else None)
        _log_epoch(state, losses, per_user, len(val_rows), writer, ranks.is_main)
        if validate or not val_rows:  # with validation, only a validated epoch can be kept (every rank the same)
            _select_epoch(state, model, per_user if validate else np.zeros(0))
        if ckpt_path is not None and ranks.is_main:
            _save_checkpoint(ckpt_path, {"key": resume_key, "model": model.state_dict(), "opt": opt.state_dict(),
                                         "sched": sched.state_dict(), "state": state,
                                         "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
    if writer:
        writer.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return _fit_summary(state, cfg.patience)


def _fit_summary(state: dict, patience: int) -> dict:
    """What `train_timeline` returns: epochs and steps run, the kept and the best epoch, the history."""
    return {"epochs_run": state["epoch"], "steps": state["step"], "kept_epoch": state["kept_epoch"],
            "kept_val_recall@10": _recall_or_none(state["kept_recall"]), "best_epoch": state["best_epoch"],
            "best_val_recall@10": _recall_or_none(state["best"]), "history": copy.deepcopy(state["history"]),
            "stopped_early": state["bad"] >= patience}


def _loss_rows(windows, loss_ids, device) -> torch.Tensor | None:
    """`loss_ids` as a tensor on `device`, once checked to hold every weighted target of `windows`."""
    if loss_ids is None:
        return None
    check_loss_targets(windows, np.asarray(loss_ids))
    return torch.as_tensor(np.asarray(loss_ids), dtype=torch.long, device=device)


def _budget(cfg, n_windows: int) -> tuple[int, int]:
    """(total steps, epochs). A budget in steps (max_steps > 0) wins over epochs: the same time on
    any catalogue or log size."""
    steps_per_epoch = math.ceil(n_windows / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else int(round(cfg.epochs * steps_per_epoch))
    n_epochs = math.ceil(total / steps_per_epoch) if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs))
    return total, n_epochs


def _optimizer(model, cfg, total: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, its schedule): a linear warm-up over the first `warmup_ratio` of the steps, times a
    cosine decay from step 0 to 0 at `total`."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return opt, sched


def _train_epoch(step, loss_of, sched, batches, state: dict, total: int, desc: str, show: bool, writer,
                 logging_steps: int) -> list[float]:
    """One pass over `batches` (stopping at `total` steps): `step(lambda: loss_of(idx))` per batch,
    the schedule stepped after it and `state["step"]` advanced; each batch's loss. Loss and learning
    rate go to `writer` every `logging_steps`; `show`: the progress bar (rank 0's)."""
    from tqdm.auto import tqdm

    losses = []
    bar = tqdm(batches, desc=desc, unit="batch", disable=not show)
    for idx in bar:
        if state["step"] >= total:
            break
        losses.append(step(lambda: loss_of(idx)))
        sched.step()
        state["step"] += 1
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if writer and state["step"] % logging_steps == 0:
            writer.add_scalar("train/loss", losses[-1], state["step"])
            writer.add_scalar("train/lr", sched.get_last_lr()[0], state["step"])
    return losses


def _recall_or_none(recall: float) -> float | None:
    """A validation recall for the summary; None (JSON null, not NaN) where no epoch was validated."""
    return round(recall, 4) if recall >= 0 else None  # NaN and the -1 start both fail the test


def _step(model, opt, ranks: Ranks, mixed, loss_of) -> float:
    """One optimizer step on the batch whose loss `loss_of()` computes (this rank's share of it);
    the batch's loss."""
    with mixed():
        loss = loss_of()
    opt.zero_grad(set_to_none=True)
    if loss is not None:
        loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    value = ranks.sum_grads(params, loss if loss is not None else torch.zeros(())) if ranks.world > 1 else loss.item()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return value


def _log_epoch(state: dict, losses: list[float], recalls: np.ndarray | None, n_users: int, writer,
               show: bool = True) -> None:
    """The epoch's mean loss and, when it was validated, its validation Recall@10: into the
    history, stdout and TensorBoard."""
    loss = float(np.mean(losses))
    entry = {"epoch": state["epoch"], "step": state["step"], "train_loss": round(loss, 4)}
    line = f"[timeline] epoch {state['epoch']}: loss {loss:.3f}"
    if recalls is not None:
        recall = float(recalls.mean())
        entry["val_recall@10"] = round(recall, 4)
        line += f", validation Recall@10 {recall:.4f} ({n_users} users)"
        if writer:
            writer.add_scalar("valid/recall@10", recall, state["step"])
    state["history"].append(entry)
    if show:
        print(line)
    if writer:
        writer.add_scalar("train/epoch_loss", loss, state["step"])


def _select_epoch(state: dict, model, recalls: np.ndarray) -> None:
    """Keep this epoch's weights unless its validation recall is significantly below the best
    epoch's (`significantly_worse`): within noise the later epoch, which has seen more steps at a
    lower learning rate, is kept. `patience` counts validations in a row that are significantly worse."""
    recall = float(recalls.mean()) if len(recalls) else float("nan")
    if len(recalls) and recall > state["best"]:
        state.update(best=recall, best_epoch=state["epoch"], best_recalls=recalls)
    if significantly_worse(recalls, state["best_recalls"]):
        state["bad"] += 1
        return
    state.update(bad=0, kept_epoch=state["epoch"], kept_recall=recall,
                 best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
