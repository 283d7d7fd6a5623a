"""Evaluation of a policy: teacher-forced scores and the item-alignment accuracies.

- `teacher_forced_logprobs`: the one teacher-forced scorer, log p(target tokens | prompt tokens)
  summed over the target; each prompt is prefilled once and its KV cache repeated for its targets.
  `score_items` (a SID then EOS: the score beam search gives an item, used by `negrec predict` for
  the same-day candidates) and `completion_logprobs` (any completion text then EOS, tokenized as
  SFTTrainer does) are its two callers.
- `alignment_accuracy`: what alignment SFT taught (SID -> title, title -> SID, 4-choice both ways);
  SFT reports it after training, GRPO benchmarks use it to measure forgetting.
"""
from __future__ import annotations

import random
import re
import time
from typing import Sequence

import numpy as np
import torch

from negrec.llm.constrained import (SidConstraint, cached, constrained_beam_search, encode_prompts, output_cache,
                                    pinned_generation_config)
from negrec.llm.prompts import ALIGN_INSTRUCTIONS, CHOICE_LETTERS, PromptBuilder, PromptConfig, answer, choice_example, item_label


# ---- teacher-forced scores ----------------------------------------------------------------
def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, q in enumerate(seqs):
        ids[r, width - len(q):] = torch.as_tensor(q, dtype=torch.long)
        attn[r, width - len(q):] = 1
    return ids, attn


@torch.no_grad()
def _score_batch(model, prompt_ids: list[list[int]], src: np.ndarray, targets: list[list[int]], pad: int) -> np.ndarray:
    """Summed target log-probs of pairs (prompt_ids[src[j]], targets[j]): one prefill per prompt."""
    device = next(model.parameters()).device
    input_ids, attn = (t.to(device) for t in _left_pad(prompt_ids, pad))
    pos = (attn.long().cumsum(-1) - 1).clamp_(min=0)
    first = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True)
    src_t = torch.as_tensor(src, device=device)
    cache = output_cache(first)
    cache.reorder_cache(src_t)  # one copy of the prompt's cache per scored target
    n_t = torch.as_tensor([len(t) for t in targets], device=device)
    width = int(n_t.max())
    target = torch.full((len(targets), width), pad, dtype=torch.long)
    for r, t in enumerate(targets):
        target[r, :len(t)] = torch.as_tensor(t, dtype=torch.long)
    target = target.to(device)
    logits = first.logits[src_t, -1:]
    if width > 1:  # feed every target token but the last; padding sits after the real tokens
        fed = target[:, :-1]
        fed_mask = (torch.arange(width - 1, device=device)[None] < (n_t[:, None] - 1)).long()
        attn = torch.cat([attn[src_t], fed_mask], 1)
        start = attn[:, : -(width - 1)].long().sum(-1, keepdim=True)
        next_pos = start + torch.arange(width - 1, device=device)
        rest = model(input_ids=fed, attention_mask=attn, position_ids=next_pos, **cached(model, cache), use_cache=True)
        logits = torch.cat([logits, rest.logits], 1)
    logp = torch.log_softmax(logits.float(), -1).gather(2, target[..., None]).squeeze(-1)
    valid = torch.arange(width, device=device)[None] < n_t[:, None]
    return (logp * valid).sum(1).cpu().numpy()


@torch.no_grad()
def teacher_forced_logprobs(model, prompt_ids: Sequence[Sequence[int]], rows: Sequence[int],
                            targets: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16) -> np.ndarray:
    """log p(targets[j] | prompt_ids[rows[j]]) summed over the target's tokens, teacher-forced, for
    each j. Prompts are left padded and prefilled once per batch of `batch_size` prompts; each
    prompt's KV cache is repeated for its targets. Empty targets score -inf."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(len(rows), -np.inf)
    lengths = np.asarray([len(t) for t in targets], dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    for s in range(0, len(prompt_ids), batch_size):
        e = min(len(prompt_ids), s + batch_size)
        sel = order[(rows[order] >= s) & (rows[order] < e) & (lengths[order] > 0)]
        if len(sel):
            batch = [list(p) for p in prompt_ids[s:e]]
            out[sel] = _score_batch(model, batch, rows[sel] - s, [list(targets[j]) for j in sel], pad_id)
    return out


def _pad_id(hf_tok) -> int:
    return hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id


@torch.no_grad()
def score_items(model, hf_tok, constraint: SidConstraint, prompts: Sequence[str], rows: Sequence[int],
                items: Sequence[int], batch_size: int = 16) -> np.ndarray:
    """log p(SID of items[j], then EOS where the constraint's answers end with it | prompts[rows[j]])
    for each pair: the score beam search gives that item (sum of raw token log-probs), teacher-forced.
    Items without a SID score -inf."""
    model.eval()
    end = [constraint.eos_id] if constraint.eos else []
    targets = [constraint.sid_token_ids(int(i)) for i in items]
    targets = [[] if t is None else t + end for t in targets]
    prompt_ids = hf_tok(list(prompts))["input_ids"] if len(prompts) else []
    return teacher_forced_logprobs(model, prompt_ids, rows, targets, _pad_id(hf_tok), batch_size)


@torch.no_grad()
def completion_logprobs(model, hf_tok, prompts: list[str], completions: list[str], batch_size: int = 32) -> np.ndarray:
    """log p(completion + EOS | prompt) for each pair, teacher-forced, tokenized as SFTTrainer does
    (the pair is tokenized as one text; the completion is what follows the prompt's own tokens)."""
    prefixes: dict[tuple, int] = {}
    rows, targets = [], []
    for p, c in zip(prompts, completions):
        start = len(hf_tok(p)["input_ids"])
        full = hf_tok(p + c)["input_ids"] + [hf_tok.eos_token_id]
        rows.append(prefixes.setdefault(tuple(full[:start]), len(prefixes)))
        targets.append(full[start:])
    return teacher_forced_logprobs(model, list(prefixes), rows, targets, _pad_id(hf_tok), batch_size)


# ---- greedy answers and 4-choice questions -------------------------------------------------
@torch.no_grad()
def greedy_texts(model, hf_tok, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuation text of each prompt (special tokens dropped)."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, attn = encode_prompts(hf_tok, prompts[s:s + batch_size], device)
        with pinned_generation_config(model, hf_tok, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens):
            seq = model.generate(input_ids=ids, attention_mask=attn)
        out += hf_tok.batch_decode(seq[:, ids.shape[1]:], skip_special_tokens=True)
    return out


@torch.no_grad()
def choice_accuracy(model, hf_tok, builder, examples: list[dict], batch_size: int = 32) -> float:
    """Share of 4-choice examples whose most likely next token, among the 4 letters, is the answer."""
    device = next(model.parameters()).device
    probe = examples[0]["prompt"]
    n_probe = len(hf_tok(probe)["input_ids"])
    letter_ids = [hf_tok(probe + answer(builder, L))["input_ids"][n_probe] for L in CHOICE_LETTERS]
    correct = 0
    for s in range(0, len(examples), batch_size):
        batch = examples[s:s + batch_size]
        ids, attn = encode_prompts(hf_tok, [e["prompt"] for e in batch], device)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -1, letter_ids]
        pred = logits.argmax(-1).tolist()
        correct += sum(CHOICE_LETTERS[p] == e["completion"].strip() for p, e in zip(pred, batch))
    return correct / len(examples)


@torch.no_grad()
def stepwise_choice_accuracy(model, hf_tok, examples: list[dict], batch_size: int = 32) -> dict:
    """Stepwise 4-choice examples (`choose_sid_stepwise`), greedy answers (a code, then a letter):
    `letter`, the share giving the right letter, and `first_code`, the share starting with the item's
    first code, so that a wrong letter reads as not knowing the item or as not reading the options."""
    texts = greedy_texts(model, hf_tok, [e["prompt"] for e in examples], max_new_tokens=4, batch_size=batch_size)
    codes = [e["completion"].strip().split(">")[0] + ">" for e in examples]  # "<a_12> C" -> "<a_12>"
    return {"letter": float(np.mean([stepwise_letter(t) == e["letter"] for t, e in zip(texts, examples)])),
            "first_code": float(np.mean([t.strip().startswith(c) for t, c in zip(texts, codes)]))}


def stepwise_letter(text: str) -> str | None:
    """The letter a stepwise answer ("<a_12> C") gives: the first standalone A-D after its last SID token."""
    found = re.search(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", text.split(">")[-1])
    return found.group(1) if found else None


def likelihood_choice_accuracy(model, hf_tok, prompts: list[str], candidates: list[list[str]], batch_size: int) -> float:
    """Share of questions whose first candidate (the right one) has the highest completion likelihood."""
    flat_p = [p for p, cands in zip(prompts, candidates) for _ in cands]
    flat_c = [c for cands in candidates for c in cands]
    scores = completion_logprobs(model, hf_tok, flat_p, flat_c, batch_size).reshape(len(prompts), -1)
    return float(np.mean(scores.argmax(1) == 0))


# ---- alignment accuracy ---------------------------------------------------------------------
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def _generation_accuracies(model, hf_tok, sid_tok, builder, labels: dict, chosen: list[int], batch_size: int) -> dict:
    """SID -> title (greedy, exact match after whitespace/case normalisation) and title -> SID
    (constrained beam search, top-1 must be the item)."""
    prompts = [builder.wrap(ALIGN_INSTRUCTIONS["sid_to_text"].format(sid=sid_tok.tokens_for_item(i))) for i in chosen]
    max_tokens = max(len(hf_tok(answer(builder, labels[i]), add_special_tokens=False)["input_ids"]) for i in chosen) + 2
    texts = greedy_texts(model, hf_tok, prompts, max_tokens, batch_size)
    constraint = SidConstraint(sid_tok, hf_tok)
    prompts = [builder.wrap(ALIGN_INSTRUCTIONS["text_to_sid"].format(text=labels[i])) for i in chosen]
    ranked = constrained_beam_search(model, hf_tok, constraint, prompts, num_beams=4, top_k=1, batch_size=batch_size)
    return {"sid_to_title": float(np.mean([_norm(t) == _norm(labels[i]) for t, i in zip(texts, chosen)])),
            "title_to_sid": float(np.mean([bool(r) and r[0][0] == i for r, i in zip(ranked, chosen)])),
            "valid": float(np.mean([bool(r) and r[0][0] in sid_tok for r in ranked]))}


def _choice_accuracies(model, hf_tok, sid_tok, builder, labels: dict, chosen: list[int], pool: list[int],
                       rng: random.Random, batch_size: int) -> dict:
    """4-choice, both directions: (a) the CoNRec lettered question, answered by the most likely
    letter; (b) lm-eval style, the candidate with the highest completion likelihood."""
    lettered = {task: choice_accuracy(model, hf_tok, builder, [choice_example(builder, sid_tok, task, i, labels, pool, rng)
                                                              for i in chosen], batch_size)
                for task in ("choose_text", "choose_sid")}
    distractors = {i: rng.sample([j for j in pool if j != i], 3) for i in chosen}
    text_ll = likelihood_choice_accuracy(
        model, hf_tok, [builder.wrap(ALIGN_INSTRUCTIONS["sid_to_text"].format(sid=sid_tok.tokens_for_item(i))) for i in chosen],
        [[answer(builder, labels[j]) for j in [i] + distractors[i]] for i in chosen], batch_size)
    sid_ll = likelihood_choice_accuracy(
        model, hf_tok, [builder.wrap(ALIGN_INSTRUCTIONS["text_to_sid"].format(text=labels[i])) for i in chosen],
        [[sid_tok.tokens_for_item(j) for j in [i] + distractors[i]] for i in chosen], batch_size)
    # last, so that the draws above (and the figures they gave before this question existed) stay the same
    stepwise = stepwise_choice_accuracy(
        model, hf_tok, [choice_example(builder, sid_tok, "choose_sid_stepwise", i, labels, pool, rng) for i in chosen],
        batch_size)
    return {**lettered, "choose_sid_stepwise": stepwise["letter"], "stepwise_first_code": stepwise["first_code"],
            "choice_text_likelihood": text_ll, "choice_sid_likelihood": sid_ll}


def alignment_line(a: dict) -> str:
    """`alignment_accuracy`'s result in one line, beside chance (the stage logs and report.md)."""
    line = (f"title -> SID {a['title_to_sid']:.2f} (chance {a['chance_title_to_sid']:.4f}), SID -> title "
            f"{a['sid_to_title']:.2f}, 4-choice by likelihood {a['choice_sid_likelihood']:.2f} (SID) / "
            f"{a['choice_text_likelihood']:.2f} (text), lettered {a['choose_sid']:.2f} / {a['choose_text']:.2f}")
    if "choose_sid_stepwise" not in a:
        return line + f" (chance {a['chance_choice']:.2f})"
    code = f"; first code right {a['stepwise_first_code']:.2f}" if "stepwise_first_code" in a else ""
    return line + f", code then letter {a['choose_sid_stepwise']:.2f} (chance {a['chance_choice']:.2f}{code})"


# what each alignment task teaches, as `alignment_accuracy` measures it (key, chance key)
TASK_ACCURACY = {"text_to_sid": ("title_to_sid", "chance_title_to_sid"), "sid_to_text": ("sid_to_title", None),
                 "choose_sid": ("choose_sid", "chance_choice"), "choose_text": ("choose_text", "chance_choice"),
                 "choose_sid_stepwise": ("choose_sid_stepwise", "chance_choice")}
CLEAR_MARGIN = 0.10  # "clearly above chance": at least this much over it (n = 200: about 3 SE at chance 0.25)


def unlearnt_tasks(a: dict, tasks) -> list[str]:
    """The trained `tasks` whose accuracy in `alignment_accuracy`'s result `a` is less than
    CLEAR_MARGIN above chance, as "task acc (chance c)". Tasks it does not measure
    (features_to_sid, prefix_to_genre) are not judged."""
    out = []
    for task in dict.fromkeys(tasks):
        if task in TASK_ACCURACY:
            key, chance_key = TASK_ACCURACY[task]
            chance = a[chance_key] if chance_key else 0.0
            if a[key] < chance + CLEAR_MARGIN:
                out.append(f"{task} {a[key]:.2f} (chance {f'{chance:.4f}'.rstrip('0').rstrip('.')})")
    return out


def alignment_accuracy(model, hf_tok, sid_tok, items, n: int = 200, builder: PromptBuilder | None = None,
                       prompt_cfg: PromptConfig | None = None, seed: int = 1, batch_size: int = 32) -> dict:
    """SID -> title (greedy, exact match), title -> SID (constrained beam, top-1 hit) and CoNRec 4-choice
    accuracies (both directions) on `n` random items; chance levels are reported beside them."""
    model.eval()
    builder = builder or PromptBuilder(prompt_cfg or PromptConfig(), sid_tok, items, hf_tok)
    rng = random.Random(seed)
    records = {int(r["item_id"]): r for r in items.to_dict("records") if int(r["item_id"]) in sid_tok}
    labels = {i: item_label(r) for i, r in records.items()}
    pool = sorted(i for i in labels if labels[i])
    if len(pool) < 4:
        raise ValueError("alignment_accuracy needs at least 4 items with a title or text")
    chosen = sorted(rng.sample(pool, min(n, len(pool))))
    t0 = time.time()
    gen = _generation_accuracies(model, hf_tok, sid_tok, builder, labels, chosen, batch_size)
    choice = _choice_accuracies(model, hf_tok, sid_tok, builder, labels, chosen, pool, rng, batch_size)
    return {"n": len(chosen), "sid_to_title": gen["sid_to_title"], "title_to_sid": gen["title_to_sid"],
            "choose_text": choice["choose_text"], "choose_sid": choice["choose_sid"],
            "choose_sid_stepwise": choice["choose_sid_stepwise"], "stepwise_first_code": choice["stepwise_first_code"],
            "choice_text_likelihood": choice["choice_text_likelihood"],
            "choice_sid_likelihood": choice["choice_sid_likelihood"], "valid_sid_rate": gen["valid"],
            "chance_title_to_sid": 1.0 / len(sid_tok), "chance_choice": 0.25, "seconds": round(time.time() - t0, 1)}
