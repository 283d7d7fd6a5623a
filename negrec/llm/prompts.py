"""Context-discerning prompts: negative and positive history in separate marked segments.

Negative feedback is sparse and positive history long, so each has its own segment, budget
and header, and every item carries its feedback kind ("hated", "skipped", "low rating",
"liked") next to its SID: the model must be able to tell the two contexts apart.
`context_mix` (0 = negatives only ... 1 = full mixed history) scales the positive and timeline
budgets; the progressive GRPO stage moves it. One builder serves SFT, GRPO and evaluation, so
the three see byte-identical prompts. The item-level alignment tasks use the same wrapper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DAY = 86400

# Item-level alignment instructions (SFT align stage); also fed to the BPE trainer of the tiny model.
ALIGN_INSTRUCTIONS = {
    "text_to_sid": "Which item is this? {text}",
    "sid_to_text": "Describe item {sid}.",
    "prefix_to_genre": "Which genres do items starting with {prefix} have?",
    "features_to_sid": "Which item has these features? {features}",
    "choose_text": "Item {sid}. Which description fits it?\n{options}\nAnswer with a letter.",
    "choose_sid": "Item: {text}\nWhich semantic ID is it?\n{options}\nAnswer with a letter.",
}
CHOICE_LETTERS = "ABCD"


@dataclass
class PromptConfig:
    system: str = "You predict which items a user will dislike."
    task: str = "Name one item this user will dislike next."
    neg_header: str = "Negative feedback (oldest first):"
    pos_header: str = "Positive feedback (oldest first):"
    mixed_header: str = "Recent timeline (oldest first):"
    empty: str = "(none)"
    max_neg: int = 10            # budget of the negative segment (always shown)
    max_pos: int = 10            # budget of the positive segment at context_mix = 1
    max_mixed: int = 0           # budget of the mixed timeline segment at context_mix = 1 (0 = no timeline)
    order: str = "neg_first"     # neg_first | pos_first
    show_kind: bool = True
    show_titles: bool = False
    title_words: int = 4         # titles are cut to this many words
    use_chat_template: bool = True  # when the tokenizer has one
    answer_prefix: str = "Answer:"

    def __post_init__(self):
        if self.order not in ("neg_first", "pos_first"):
            raise ValueError(f"prompt.order: expected neg_first or pos_first, got {self.order!r}")
        for name in ("max_neg", "max_pos", "max_mixed", "title_words"):
            if getattr(self, name) < 0:
                raise ValueError(f"prompt.{name} must be >= 0")


def _seq(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, float) and np.isnan(x):
        return []
    return list(np.asarray(x).tolist())


class PromptBuilder:
    """Builds prompts from `negrec.data` sample rows; see docs/ARCHITECTURE.md."""

    def __init__(self, cfg: PromptConfig, sid_tok, items=None, hf_tokenizer=None):
        self.cfg = cfg
        self.sid_tok = sid_tok
        self.hf_tokenizer = hf_tokenizer
        self.titles: dict[int, str] = {}
        if items is not None and "title" in items:
            self.titles = dict(zip(items["item_id"].astype(int).tolist(), items["title"].fillna("").astype(str).tolist()))
        self.chat = bool(cfg.use_chat_template and hf_tokenizer is not None and getattr(hf_tokenizer, "chat_template", None))

    # ---- pieces ---------------------------------------------------------------------
    def short_title(self, item_id: int) -> str:
        return " ".join(self.titles.get(int(item_id), "").split()[: self.cfg.title_words])

    def item_text(self, item_id: int, kind: str | None = None) -> str:
        parts = [self.sid_tok.tokens_for_item(item_id)]
        if self.cfg.show_titles and self.short_title(item_id):
            parts.append(self.short_title(item_id))
        if self.cfg.show_kind and kind:
            parts.append(f"({kind})")
        return " ".join(parts)

    def _segment(self, header: str, entries: list[tuple[int, str | None]]) -> str:
        body = "; ".join(self.item_text(i, k) for i, k in entries) if entries else self.cfg.empty
        return f"{header} {body}"

    def wrap(self, user_text: str) -> str:
        """The final prompt text for an instruction: chat template when available, plain otherwise."""
        if self.chat:
            messages = [{"role": "system", "content": self.cfg.system}, {"role": "user", "content": user_text}]
            return self.hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.cfg.system}\n{user_text}\n{self.cfg.answer_prefix}"

    # ---- the history prompt -------------------------------------------------------------
    def history_text(self, row, context_mix: float = 1.0, neg_window_days: float | None = None) -> str:
        if not 0.0 <= float(context_mix) <= 1.0:
            raise ValueError(f"context_mix must be in [0, 1], got {context_mix}")
        cfg = self.cfg
        known = self.sid_tok.__contains__
        negs = [(int(i), int(t), str(k)) for i, t, k in zip(_seq(row["neg_items"]), _seq(row["neg_ts"]), _seq(row["neg_kinds"]))]
        if neg_window_days is not None:
            start = int(row["cut_ts"]) - float(neg_window_days) * DAY
            negs = [n for n in negs if n[1] >= start]
        negs = [(i, k) for i, _, k in negs if known(i)][-cfg.max_neg:] if cfg.max_neg else []
        n_pos = int(round(context_mix * cfg.max_pos))
        pos = [(int(i), str(k)) for i, k in zip(_seq(row["pos_items"]), _seq(row["pos_kinds"])) if known(i)]
        pos = pos[-n_pos:] if n_pos else []
        segments = [self._segment(cfg.neg_header, negs)]
        if cfg.max_pos:
            segments.append(self._segment(cfg.pos_header, pos))
        if cfg.order == "pos_first":
            segments.reverse()
        n_mixed = int(round(context_mix * cfg.max_mixed))
        if n_mixed:
            fb_word = {-1: "negative", 0: "neutral", 1: "positive"}
            mixed = [(int(i), fb_word.get(int(f), "neutral")) for i, f in zip(_seq(row["mixed_items"]), _seq(row["mixed_feedback"])) if known(i)]
            segments.append(self._segment(cfg.mixed_header, mixed[-n_mixed:]))
        return "\n".join(segments + [cfg.task])

    def build(self, sample_row, context_mix: float = 1.0, neg_window_days: float | None = None) -> str:
        """The prompt for one (user, cut) sample row of `Prepared.samples[split]`."""
        return self.wrap(self.history_text(sample_row, context_mix, neg_window_days))

    def completion(self, item_id: int) -> str:
        """The target text for an item: its SID tokens (the trainer appends EOS)."""
        return self.sid_tok.tokens_for_item(item_id)

    def template_texts(self) -> list[str]:
        """Fixed strings the prompts use (for training a tokenizer that knows them)."""
        cfg = self.cfg
        kinds = ["(hated)", "(skipped)", "(low rating)", "(liked)", "(neutral)", "(negative)", "(positive)"]
        return [cfg.system, cfg.task, cfg.neg_header, cfg.pos_header, cfg.mixed_header, cfg.empty, cfg.answer_prefix,
                " ".join(kinds), *ALIGN_INSTRUCTIONS.values(), "A) B) C) D) A B C D"]
