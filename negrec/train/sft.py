"""Supervised stages on TRL's SFTTrainer: item-level alignment, then next-negative SFT.

Alignment teaches the new SID tokens with item-level tasks (no user history):
text -> SID, SID -> text, SID prefix -> genre words, features -> SID (for text-less data),
and the CoNRec 4-choice task (given a SID pick its description among 4, and the reverse).
Next-negative SFT maps a context-discerning history prompt to the SID of an item the user
negates within the horizon (F_H). Both use prompt/completion datasets, so the loss is on the
completion only, and the same `PromptBuilder` as GRPO and evaluation.

`run_sft(raw, run_dir, task)` reads section `sft_align` / `sft_next`, resumes from the last
Trainer checkpoint after a kill, logs to run_dir/tb/sft_<task>, and writes the final policy
atomically to run_dir/sft_<task>/final. `alignment_accuracy` measures what alignment taught
(GRPO reuses it to measure forgetting).
"""
from __future__ import annotations

import random
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from negrec.config import section_config, to_dict
from negrec.io import config_hash, mark_done, read_json, stage_done, write_json
from negrec.llm.constrained import SidConstraint, _encode_prompts, constrained_beam_search, pinned_generation_config
from negrec.llm.model import load_policy, save_policy
from negrec.llm.prompts import ALIGN_INSTRUCTIONS, CHOICE_LETTERS, PromptBuilder, PromptConfig

ALIGN_TASKS = ("text_to_sid", "sid_to_text", "prefix_to_genre", "features_to_sid", "choose_text", "choose_sid")


@dataclass
class SFTStageConfig:
    init_from: str = ""          # model folder to start from; "" = previous stage (align: model/, next: sft_align/final)
    # alignment data
    tasks: list[str] = field(default_factory=lambda: ["text_to_sid", "sid_to_text", "prefix_to_genre", "choose_text", "choose_sid"])
    max_items: int = 0           # 0 = every item with a SID
    item_repeats: int = 1        # copies of each item-level example per epoch (fresh distractors each copy)
    # next-negative data
    horizon: int = 0             # F_H horizon in days; 0 = data's main horizon
    context_mix: float = 1.0
    neg_window_days: float | None = None
    max_samples: int = 2000      # (user, cut) train rows used; 0 = all
    targets_per_sample: int = 2  # F_H items per row turned into examples
    # training
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 5e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 16         # tiny models learn the item vocabulary faster with more, smaller steps
    grad_accum: int = 1
    max_length: int = 384
    gradient_checkpointing: bool = True  # TRL's default; measured on the tiny CPU model: 1.7 s/step with, 4.8 s without
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    resume: bool = True
    eval_items: int = 200        # items for the closing alignment_accuracy (0 = skip)
    # next-negative training mode: "timeline" learns from every event of every user's timeline in
    # the compact prompt format (needs prompt.format: compact); "prompt" builds one prompt per
    # (user, cut) train sample and a completion per F_H target (any prompt format)
    mode: str = "prompt"
    window_events: int = 100     # timeline: events per training window
    other_weight: float = 1.0    # timeline: loss weight of non-negative events' SIDs (negatives weigh 1)
    val_rows: int = 300          # timeline: validation users scored after each epoch (0 = none: last epoch kept)
    val_beams: int = 20          # timeline: beam width of the validation search
    patience: int = 2            # timeline: epochs without a validation gain before stopping

    def __post_init__(self):
        if self.mode not in ("prompt", "timeline"):
            raise ValueError(f"sft mode must be prompt or timeline, got {self.mode!r}")
        bad = sorted(set(self.tasks) - set(ALIGN_TASKS))
        if bad:
            raise ValueError(f"sft tasks {bad} unknown; known: {list(ALIGN_TASKS)}")
        if not 0.0 <= self.context_mix <= 1.0:
            raise ValueError("sft context_mix must be in [0, 1]")


# ---- alignment data ------------------------------------------------------------------
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def _item_label(row: dict) -> str:
    return str(row.get("title") or "").strip() or str(row.get("text") or "").strip()


def _feature_text(row: dict, feat_cols: list[str]) -> str:
    return ", ".join(f"{c[5:]}={row[c]}" for c in feat_cols)


def answer(builder: PromptBuilder, text: str) -> str:
    """Completion text. SID tokens follow the prompt directly (constrained decoding starts there);
    words after the plain template's "Answer:" start with a space, a clean BPE boundary."""
    return text if builder.chat or text.startswith("<") else " " + text


def choice_example(builder: PromptBuilder, sid_tok, task: str, item: int, labels: dict[int, str], pool: list[int], rng: random.Random) -> dict:
    """One CoNRec 4-choice example: the item plus 3 random distractors, shuffled."""
    others = rng.sample([i for i in pool if i != item], 3)
    options = others + [item]
    rng.shuffle(options)
    letter = CHOICE_LETTERS[options.index(item)]
    if task == "choose_text":
        lines = "\n".join(f"{CHOICE_LETTERS[k]}) {labels[o]}" for k, o in enumerate(options))
        prompt = ALIGN_INSTRUCTIONS["choose_text"].format(sid=sid_tok.tokens_for_item(item), options=lines)
    else:
        lines = "\n".join(f"{CHOICE_LETTERS[k]}) {sid_tok.tokens_for_item(o)}" for k, o in enumerate(options))
        prompt = ALIGN_INSTRUCTIONS["choose_sid"].format(text=labels[item], options=lines)
    return {"prompt": builder.wrap(prompt), "completion": answer(builder, letter), "task": task, "item_id": item}


def aligned_item_ids(sid_tok, items, max_items: int = 0, rng: random.Random | int = 0) -> list[int]:
    """The items alignment SFT teaches: all with a SID, or a seeded sample of `max_items`."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    ids = sorted(int(i) for i in items["item_id"] if int(i) in sid_tok)
    if max_items and len(ids) > max_items:
        ids = sorted(rng.sample(ids, max_items))
    return ids


def alignment_examples(builder: PromptBuilder, sid_tok, items, tasks=ALIGN_TASKS, max_items: int = 0,
                       repeats: int = 1, seed: int = 0) -> list[dict]:
    """Prompt/completion examples of the item-level alignment tasks."""
    rng = random.Random(seed)
    records = {int(r["item_id"]): r for r in items.to_dict("records") if int(r["item_id"]) in sid_tok}
    ids = aligned_item_ids(sid_tok, items, max_items, rng)
    labels = {i: _item_label(records[i]) for i in ids}
    with_text = [i for i in ids if labels[i]]
    feat_cols = sorted(c for c in items.columns if c.startswith("feat_"))
    out: list[dict] = []
    for _ in range(max(1, repeats)):
        for i in ids:
            sid = sid_tok.tokens_for_item(i)
            if labels[i] and "text_to_sid" in tasks:
                out.append({"prompt": builder.wrap(ALIGN_INSTRUCTIONS["text_to_sid"].format(text=labels[i])),
                            "completion": answer(builder, sid), "task": "text_to_sid", "item_id": i})
            if labels[i] and "sid_to_text" in tasks:
                out.append({"prompt": builder.wrap(ALIGN_INSTRUCTIONS["sid_to_text"].format(sid=sid)),
                            "completion": answer(builder, labels[i]), "task": "sid_to_text", "item_id": i})
            if feat_cols and ("features_to_sid" in tasks or not labels[i]):
                out.append({"prompt": builder.wrap(ALIGN_INSTRUCTIONS["features_to_sid"].format(features=_feature_text(records[i], feat_cols))),
                            "completion": answer(builder, sid), "task": "features_to_sid", "item_id": i})
            if labels[i] and len(with_text) >= 4:
                for task in ("choose_text", "choose_sid"):
                    if task in tasks:
                        out.append(choice_example(builder, sid_tok, task, i, labels, with_text, rng))
        if "prefix_to_genre" in tasks and "genres" in items:
            out.extend(prefix_genre_examples(builder, sid_tok, {i: records[i] for i in ids}))
    rng.shuffle(out)
    return out


def prefix_genre_examples(builder: PromptBuilder, sid_tok, records: dict[int, dict], top: int = 3) -> list[dict]:
    """SID prefix (levels 1..L-1) -> the most common genres of the items under it."""
    out = []
    for depth in range(1, sid_tok.levels):
        groups: dict[tuple, Counter] = {}
        for i, r in records.items():
            genres = [g for g in str(r.get("genres") or "").split("|") if g]
            if genres:
                groups.setdefault(sid_tok.codes_for_item(i)[:depth], Counter()).update(genres)
        for prefix, counts in groups.items():
            prefix_text = "".join(sid_tok.token(lvl, c) for lvl, c in enumerate(prefix))
            words = ", ".join(g for g, _ in counts.most_common(top))
            out.append({"prompt": builder.wrap(ALIGN_INSTRUCTIONS["prefix_to_genre"].format(prefix=prefix_text)),
                        "completion": answer(builder, words), "task": "prefix_to_genre", "item_id": -1})
    return out


# ---- next-negative data --------------------------------------------------------------
def next_negative_examples(builder: PromptBuilder, samples, sid_tok, horizon: int, context_mix: float = 1.0,
                           neg_window_days: float | None = None, max_samples: int = 0, targets_per_sample: int = 2,
                           seed: int = 0) -> list[dict]:
    """History prompt -> SID of an item negated within `horizon` days after the cut (F_H)."""
    col = f"future_neg_h{horizon}"
    if col not in samples:
        raise KeyError(f"samples have no column {col!r}; horizons available: "
                       f"{sorted(int(c.split('_h')[1]) for c in samples.columns if c.startswith('future_neg_h'))}")
    rows = samples[samples[col].map(lambda x: any(int(i) in sid_tok for i in x))]
    if max_samples and len(rows) > max_samples:
        rows = rows.sample(n=max_samples, random_state=seed)
    out = []
    for _, row in rows.iterrows():
        prompt = builder.build(row, context_mix=context_mix, neg_window_days=neg_window_days)
        targets = [int(i) for i in row[col] if int(i) in sid_tok][:targets_per_sample]
        for item in targets:
            out.append({"prompt": prompt, "completion": answer(builder, sid_tok.tokens_for_item(item)),
                        "task": "next_negative", "item_id": item})
    return out


# ---- evaluation ----------------------------------------------------------------------
@torch.no_grad()
def _greedy_texts(model, hf_tok, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, attn = _encode_prompts(hf_tok, prompts[s:s + batch_size], device)
        with pinned_generation_config(model, hf_tok, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens):
            seq = model.generate(input_ids=ids, attention_mask=attn)
        out += hf_tok.batch_decode(seq[:, ids.shape[1]:], skip_special_tokens=True)
    return out


@torch.no_grad()
def _choice_accuracy(model, hf_tok, builder, examples: list[dict], batch_size: int = 32) -> float:
    """Share of 4-choice examples whose most likely next token, among the 4 letters, is the answer."""
    device = next(model.parameters()).device
    probe = examples[0]["prompt"]
    n_probe = len(hf_tok(probe)["input_ids"])
    letter_ids = [hf_tok(probe + answer(builder, L))["input_ids"][n_probe] for L in CHOICE_LETTERS]
    correct = 0
    for s in range(0, len(examples), batch_size):
        batch = examples[s:s + batch_size]
        ids, attn = _encode_prompts(hf_tok, [e["prompt"] for e in batch], device)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -1, letter_ids]
        pred = logits.argmax(-1).tolist()
        correct += sum(CHOICE_LETTERS[p] == e["completion"].strip() for p, e in zip(pred, batch))
    return correct / len(examples)


@torch.no_grad()
def completion_logprobs(model, hf_tok, prompts: list[str], completions: list[str], batch_size: int = 32) -> np.ndarray:
    """log p(completion + EOS | prompt) for each pair, teacher-forced, tokenized as SFTTrainer does."""
    device = next(model.parameters()).device
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
    out = []
    for s in range(0, len(prompts), batch_size):
        seqs, starts = [], []
        for p, c in zip(prompts[s:s + batch_size], completions[s:s + batch_size]):
            p_ids = hf_tok(p)["input_ids"]
            full = hf_tok(p + c)["input_ids"] + [hf_tok.eos_token_id]
            seqs.append(full)
            starts.append(len(p_ids))
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, q in enumerate(seqs):  # right padding: positions match training
            ids[r, :len(q)] = torch.as_tensor(q)
            attn[r, :len(q)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float(), -1).cpu()
        for r, q in enumerate(seqs):
            tgt = torch.as_tensor(q[starts[r]:])
            out.append(float(logp[r, starts[r] - 1:len(q) - 1].gather(1, tgt[:, None]).sum()))
    return np.asarray(out)


def _likelihood_choice_accuracy(model, hf_tok, prompts: list[str], candidates: list[list[str]], batch_size: int) -> float:
    """Share of questions whose first candidate (the right one) has the highest completion likelihood."""
    flat_p = [p for p, cands in zip(prompts, candidates) for _ in cands]
    flat_c = [c for cands in candidates for c in cands]
    scores = completion_logprobs(model, hf_tok, flat_p, flat_c, batch_size).reshape(len(prompts), -1)
    return float(np.mean(scores.argmax(1) == 0))


def alignment_accuracy(model, hf_tok, sid_tok, items, n: int = 200, builder: PromptBuilder | None = None,
                       prompt_cfg: PromptConfig | None = None, seed: int = 1, batch_size: int = 32) -> dict:
    """SID -> title (greedy, exact match), title -> SID (constrained beam, top-1 hit) and CoNRec 4-choice
    accuracies (both directions) on `n` random items; chance levels are reported beside them."""
    model.eval()
    builder = builder or PromptBuilder(prompt_cfg or PromptConfig(), sid_tok, items, hf_tok)
    rng = random.Random(seed)
    records = {int(r["item_id"]): r for r in items.to_dict("records") if int(r["item_id"]) in sid_tok}
    labels = {i: _item_label(r) for i, r in records.items()}
    pool = sorted(i for i in labels if labels[i])
    if len(pool) < 4:
        raise ValueError("alignment_accuracy needs at least 4 items with a title or text")
    chosen = sorted(rng.sample(pool, min(n, len(pool))))
    t0 = time.time()
    # SID -> title: greedy generation, exact match after whitespace/case normalisation
    prompts = [builder.wrap(ALIGN_INSTRUCTIONS["sid_to_text"].format(sid=sid_tok.tokens_for_item(i))) for i in chosen]
    max_tokens = max(len(hf_tok(answer(builder, labels[i]), add_special_tokens=False)["input_ids"]) for i in chosen) + 2
    texts = _greedy_texts(model, hf_tok, prompts, max_tokens, batch_size)
    sid_to_title = float(np.mean([_norm(t) == _norm(labels[i]) for t, i in zip(texts, chosen)]))
    # title -> SID: constrained beam search, top-1 must be the item
    constraint = SidConstraint(sid_tok, hf_tok)
    prompts = [builder.wrap(ALIGN_INSTRUCTIONS["text_to_sid"].format(text=labels[i])) for i in chosen]
    ranked = constrained_beam_search(model, hf_tok, constraint, prompts, num_beams=4, top_k=1, batch_size=batch_size)
    title_to_sid = float(np.mean([bool(r) and r[0][0] == i for r, i in zip(ranked, chosen)]))
    valid = float(np.mean([bool(r) and r[0][0] in sid_tok for r in ranked]))
    # 4-choice, both directions
    # 4-choice, both directions: (a) the CoNRec lettered question, answered by the most likely letter;
    # (b) lm-eval style, the candidate with the highest completion likelihood
    choose_text = _choice_accuracy(model, hf_tok, builder, [choice_example(builder, sid_tok, "choose_text", i, labels, pool, rng) for i in chosen], batch_size)
    choose_sid = _choice_accuracy(model, hf_tok, builder, [choice_example(builder, sid_tok, "choose_sid", i, labels, pool, rng) for i in chosen], batch_size)
    distractors = {i: rng.sample([j for j in pool if j != i], 3) for i in chosen}
    choice_text_ll = _likelihood_choice_accuracy(
        model, hf_tok, [builder.wrap(ALIGN_INSTRUCTIONS["sid_to_text"].format(sid=sid_tok.tokens_for_item(i))) for i in chosen],
        [[answer(builder, labels[j]) for j in [i] + distractors[i]] for i in chosen], batch_size)
    choice_sid_ll = _likelihood_choice_accuracy(
        model, hf_tok, [builder.wrap(ALIGN_INSTRUCTIONS["text_to_sid"].format(text=labels[i])) for i in chosen],
        [[sid_tok.tokens_for_item(j) for j in [i] + distractors[i]] for i in chosen], batch_size)
    return {"n": len(chosen), "sid_to_title": sid_to_title, "title_to_sid": title_to_sid,
            "choose_text": choose_text, "choose_sid": choose_sid,
            "choice_text_likelihood": choice_text_ll, "choice_sid_likelihood": choice_sid_ll, "valid_sid_rate": valid,
            "chance_title_to_sid": 1.0 / len(sid_tok), "chance_choice": 0.25, "seconds": round(time.time() - t0, 1)}


# ---- timeline training ------------------------------------------------------------------
def _run_timeline(model, hf_tok, sid_tok, builder, data, cfg, run_dir: Path, key: str, init: str, t0: float) -> dict:
    """`sft --task next` in timeline mode (see `negrec.train.timeline`)."""
    from negrec.llm.prompts import CompactCodec
    from negrec.train.timeline import timeline_windows, train_timeline, validation_rows

    if builder.cfg.format != "compact":
        raise ValueError("sft_next.mode: timeline trains on compact timelines; set prompt.format: compact")
    out = run_dir / "sft_next"
    horizon = cfg.horizon or data.main_horizon
    codec = CompactCodec(sid_tok, hf_tok, builder.cfg.feedback_tokens)
    windows = timeline_windows(data.fit_log("train"), None, codec, cfg.window_events, cfg.other_weight)
    if not windows:
        raise ValueError("sft_next: no training events before the users' validation cuts")
    val = validation_rows(data.samples["valid"], horizon, cfg.val_rows, cfg.seed)
    n_tok = sum(len(w) for w, _ in windows)
    print(f"[sft_next] timeline: {len(windows)} windows, {n_tok} tokens ({codec.tokens_per_event} per event), "
          f"{len(val)} validation users, from {init}")
    out.mkdir(parents=True, exist_ok=True)
    fit = train_timeline(model, hf_tok, sid_tok, windows, val, builder, cfg, horizon,
                         ckpt_path=out / "timeline_checkpoint.pt", resume_key=key, tb_dir=run_dir / "tb" / "sft_next")
    summary = {"task": "next", "mode": "timeline", "windows": len(windows), "tokens": n_tok,
               "tokens_per_event": codec.tokens_per_event, "window_events": cfg.window_events,
               "prompt_events": builder.cfg.max_events, "init_from": init, **fit,
               "loss_curve": [h["train_loss"] for h in fit["history"]], "config": to_dict(cfg)}
    summary["seconds"] = round(time.time() - t0, 1)
    save_policy(model, hf_tok, sid_tok, out / "final", extra={"stage": "sft_next", "steps": fit["steps"]})
    write_json(out / "summary.json", summary)
    mark_done(out, key)
    (out / "timeline_checkpoint.pt").unlink(missing_ok=True)
    curve = " ".join(f"{h['val_recall@10']:.3f}" for h in fit["history"])
    print(f"[sft_next] {fit['steps']} steps, {fit['epochs_run']} epochs, validation Recall@10 by epoch: {curve}; "
          f"kept epoch {fit['best_epoch']}, {summary['seconds']}s -> {out / 'final'}")
    return summary


# ---- training ------------------------------------------------------------------------
def train_sft(model, hf_tok, examples: list[dict], cfg: SFTStageConfig, out_dir: Path, tb_dir: Path | None = None,
              resume_key: str | None = None):
    """Fine-tune `model` on prompt/completion `examples` with TRL's SFTTrainer; returns the trainer.

    Checkpoints go to out_dir/checkpoints; with `cfg.resume` the last one is resumed when it was
    written for the same `resume_key` (else the folder is cleared and training starts over).
    """
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    ckpt_dir = Path(out_dir) / "checkpoints"
    key_file = ckpt_dir / "_resume_key"
    if ckpt_dir.exists() and (not cfg.resume or (resume_key and (not key_file.exists() or key_file.read_text() != resume_key))):
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if resume_key:
        key_file.write_text(resume_key)
    last = get_last_checkpoint(str(ckpt_dir)) if cfg.resume else None
    on_gpu = next(model.parameters()).device.type == "cuda"
    args = SFTConfig(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio
        weight_decay=cfg.weight_decay, max_length=cfg.max_length, packing=False, completion_only_loss=True,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, report_to="none",
        bf16=on_gpu and torch.cuda.is_bf16_supported(), use_cpu=not on_gpu, dataloader_num_workers=0,
        disable_tqdm=False, dataset_num_proc=None, gradient_checkpointing=cfg.gradient_checkpointing,
    )
    columns = {k: [e[k] for e in examples] for k in ("prompt", "completion")}
    callbacks = [TensorBoardCallback(SummaryWriter(log_dir=str(tb_dir)))] if tb_dir else []
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                         processing_class=hf_tok, callbacks=callbacks)
    if last:
        print(f"[sft] resuming from {last}")
    trainer.train(resume_from_checkpoint=last)  # the TensorBoard callback closes (flushes) its writer at the end
    return trainer


def _loss_curve(trainer) -> list[float]:
    return [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]


def _done_marker(model_dir: Path) -> str:
    """The config hash the stage that wrote `model_dir` recorded (so a rebuilt model invalidates SFT)."""
    for marker in (model_dir / "_DONE", model_dir.parent / "_DONE"):
        if marker.exists():
            return marker.read_text().strip()
    return ""


def run_sft(raw: dict, run_dir, task: str = "align") -> dict:
    """Stage `sft --task align|next`: writes run_dir/sft_<task>/{checkpoints/, final/, summary.json}."""
    from negrec.data import Prepared

    if task not in ("align", "next"):
        raise ValueError(f"sft task must be align or next, got {task!r}")
    run_dir = Path(run_dir)
    cfg = section_config(SFTStageConfig, raw, f"sft_{task}")
    pcfg = section_config(PromptConfig, raw, "prompt")
    out = run_dir / f"sft_{task}"
    if cfg.init_from:
        init = Path(cfg.init_from)
    elif task == "next" and (run_dir / "sft_align" / "final").exists():
        init = run_dir / "sft_align" / "final"
    else:
        init = run_dir / "model"
    key = config_hash({"sft": to_dict(cfg), "prompt": to_dict(pcfg), "task": task, "init": str(init),
                       "init_done": _done_marker(init)})
    if stage_done(out, key) and (out / "final" / "config.json").exists():
        print(f"[sft_{task}] up to date: {out}")
        return read_json(out / "summary.json")
    t0 = time.time()
    data = Prepared.load(run_dir / "data")
    model, hf_tok, sid_tok = load_policy(init)
    builder = PromptBuilder(pcfg, sid_tok, data.items, hf_tok)
    if task == "next" and cfg.mode == "timeline":
        return _run_timeline(model, hf_tok, sid_tok, builder, data, cfg, run_dir, key, str(init), t0)
    if task == "align":
        examples = alignment_examples(builder, sid_tok, data.items, cfg.tasks, cfg.max_items, cfg.item_repeats, cfg.seed)
    else:
        horizon = cfg.horizon or data.main_horizon
        examples = next_negative_examples(builder, data.samples["train"], sid_tok, horizon, cfg.context_mix,
                                          cfg.neg_window_days, cfg.max_samples, cfg.targets_per_sample, cfg.seed)
    if not examples:
        raise ValueError(f"sft_{task}: no training examples (check the items' titles / the train samples' F_H)")
    counts = dict(Counter(e["task"] for e in examples))
    print(f"[sft_{task}] {len(examples)} examples {counts} from {init}")
    trainer = train_sft(model, hf_tok, examples, cfg, out, tb_dir=run_dir / "tb" / f"sft_{task}", resume_key=key)
    model = trainer.model
    summary = {"task": task, "examples": len(examples), "per_task": counts, "init_from": str(init),
               "steps": trainer.state.global_step, "loss_curve": _loss_curve(trainer),
               "train_loss": next((round(float(h["train_loss"]), 4) for h in reversed(trainer.state.log_history)
                                   if "train_loss" in h), None),  # mean over the run, logged even when steps < logging_steps
               "config": to_dict(cfg)}
    if cfg.eval_items:  # asked about the items alignment taught (a max_items subset when set)
        taught = data.items[data.items["item_id"].isin(aligned_item_ids(sid_tok, data.items, cfg.max_items, cfg.seed))]
        summary["alignment"] = alignment_accuracy(model, hf_tok, sid_tok, taught, n=cfg.eval_items, builder=builder)
    summary["seconds"] = round(time.time() - t0, 1)
    save_policy(model, hf_tok, sid_tok, out / "final", extra={"stage": f"sft_{task}", "steps": summary["steps"]})
    write_json(out / "summary.json", summary)
    mark_done(out, key)
    curve = summary["loss_curve"]
    loss = (f"loss {curve[0]:.3f} -> {curve[-1]:.3f}" if curve else
            f"mean loss {summary['train_loss']:.3f} (fewer steps than logging_steps)" if summary["train_loss"] is not None else "no loss logged")
    print(f"[sft_{task}] {summary['steps']} steps, {loss}, {summary['seconds']}s -> {out / 'final'}")
    if "alignment" in summary:
        a = summary["alignment"]
        print(f"  alignment on {a['n']} items: SID->title {a['sid_to_title']:.2f}, title->SID {a['title_to_sid']:.2f} "
              f"(chance {a['chance_title_to_sid']:.4f}), 4-choice lettered text {a['choose_text']:.2f} / SID {a['choose_sid']:.2f}, "
              f"by likelihood text {a['choice_text_likelihood']:.2f} / SID {a['choice_sid_likelihood']:.2f} (chance 0.25), "
              f"valid SIDs {a['valid_sid_rate']:.0%}")
    return summary
