"""Context-discerning prompts: negative and positive history in separate marked segments, or
one compact timeline of SID tokens with a feedback token per event.

Two formats (`prompt.format`):
- "verbose" (for pretrained LMs): words, headers and a chat template; negatives and positives in
  their own segments, each item with its feedback kind next to its SID.
- "compact" (for small models trained from scratch): the user's timeline as token ids only,
  `<|neg|><a_3><b_7><c_1></s> <|pos|>...` (one feedback token, the SID tokens and EOS per event,
  oldest first), ending with the query token `<|neg|>`: "the next item this user dislikes is"
  (`prompt.event_eos: false`: no EOS, the answer is the SID alone).
  The next-negative trainer (`negrec.train.timeline`) learns from every event of such timelines
  at once, and `CompactCodec` builds the very same token ids the prompt strings tokenize to.
  With `prompt.like_tokens` a non-negative event's SID is written with like tokens (`<pa_3>...`).

Negative feedback is sparse and positive history long, so each has its own segment, budget
and header, and every item carries its feedback kind ("hated", "skipped", "low rating",
"liked") next to its SID: the model must be able to tell the two contexts apart.
`context_mix` (0 = negatives only ... 1 = full mixed history) scales the positive and timeline
budgets; the progressive GRPO stage moves it. One builder serves SFT, GRPO and evaluation, so
the three see byte-identical prompts. The item-level alignment tasks use the same wrapper.

Everything about prompt and completion text lives here: the history prompt (`PromptBuilder`,
`CompactCodec`), the item-level alignment examples (`alignment_examples`, `choice_example`), the
next-negative SFT examples (`next_negative_examples`), what an item is called (`item_label`) and
the completion whitespace rule (`answer`).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from negrec.data.schema import cut_label, feature_columns
from negrec.data.splits import DAY

# Item-level alignment instructions (SFT align stage); also fed to the BPE trainer of the tiny model.
ALIGN_INSTRUCTIONS = {
    "text_to_sid": "Which item is this? {text}",
    "sid_to_text": "Describe item {sid}.",
    "prefix_to_genre": "Which genres do items starting with {prefix} have?",
    "features_to_sid": "Which item has these features? {features}",
    "choose_text": "Item {sid}. Which description fits it?\n{options}\nAnswer with a letter.",
    "choose_sid": "Item: {text}\nWhich semantic ID is it?\n{options}\nAnswer with a letter.",
}
# choose_sid_stepwise asks choose_sid's question (the tiny model's BPE is trained on the instruction
# texts, so a new one would change its vocabulary) and is answered in two steps: the first code of
# the item's SID, then the letter. A small model cannot map the title to its SID and find that SID
# among the options in one step; with the code written out, the letter is a lookup.
ALIGN_TASKS = (*ALIGN_INSTRUCTIONS, "choose_sid_stepwise")
CHOICE_TASKS = ("choose_text", "choose_sid", "choose_sid_stepwise")
CHOICE_LETTERS = "ABCD"
# Feedback tokens of the compact format (added to the LM's vocabulary by `build-model`).
FEEDBACK_TOKENS = {-1: "<|neg|>", 0: "<|neu|>", 1: "<|pos|>"}
# Written before the first event of a new UTC day, and before the query when the cut falls on a day
# after the last shown event (`prompt.day_breaks`): what follows a break is the user's next session,
# which a day-cut future is, and which the events of one burst are not.
DAY_TOKEN = "<|day|>"


def compact_tokens(day_breaks: bool = True) -> list[str]:
    """The compact format's own tokens: the feedback tokens, and DAY_TOKEN with `day_breaks`."""
    return [*FEEDBACK_TOKENS.values(), *[DAY_TOKEN] * bool(day_breaks)]


PROMPT_FORMATS = ("verbose", "compact")


def like_token(sid_token: str) -> str:
    """The token a non-negative event's SID is written with under `prompt.like_tokens` (<a_3> ->
    <pa_3>): a user's dislikes then stand out in the history by their own tokens."""
    return "<p" + sid_token[1:]


# The system line of verbose prompts. Compact prompts go without: on the tiny model it was the same
# 14 tokens in every alignment example, a third of a title -> SID example (README "Prompts")
VERBOSE_SYSTEM = "You predict which items a user will dislike."


@dataclass
class PromptConfig:
    # unset (null): VERBOSE_SYSTEM under format: verbose, none under compact (see `wrap`)
    system: str | None = None
    task: str = "Name one item this user will dislike next."
    neg_header: str = "Negative feedback (oldest first):"
    pos_header: str = "Positive feedback (oldest first):"
    mixed_header: str = "Recent timeline (oldest first):"
    empty: str = "(none)"
    # the segments and words below (headers, max_neg ... title_words) shape format: verbose alone
    max_neg: int = 10            # budget of the negative segment (always shown)
    max_pos: int = 10            # budget of the positive segment at context_mix = 1
    max_mixed: int = 0           # budget of the mixed timeline segment at context_mix = 1 (0 = no timeline)
    order: str = "neg_first"     # neg_first | pos_first
    show_kind: bool = True
    show_titles: bool = False
    title_words: int = 4         # titles are cut to this many words
    use_chat_template: bool = True  # when the tokenizer has one
    answer_prefix: str = "Answer:"
    # compact (SID + feedback tokens per event; what sft_next's timeline mode trains on) | verbose
    # (words, segments, chat template: for a pretrained LM with sft_next.mode: prompt)
    format: str = "compact"
    max_events: int = 50         # compact: events of the timeline shown (at context_mix = 1)
    # compact: up to this many of the user's negatives older than the shown events, before them (as
    # negative events): a long history's earlier dislikes at 5 tokens each, its other events left out
    older_negatives: int = 0
    # compact: EOS after every event's SID and after the answer. False: every SID has the same length,
    # so the next feedback token already marks where an event ends, and constrained decoding stops
    # after the SID's last token: one token fewer an event, the timeline SFT 12-20% and predict
    # 30% faster, but recall leaned down over three seeds (README "EOS after each event")
    event_eos: bool = True
    feedback_tokens: bool = True  # compact: false = every event gets <|neu|> (the context-discerning ablation)
    # compact: the SIDs of non-negative events written with tokens of their own (`like_token`, added
    # by build-model), so that picking the dislikes out of a history does not hinge on the feedback
    # token before each SID
    like_tokens: bool = False
    # compact: DAY_TOKEN between events of different UTC days (see above); unset (null): on when the
    # cuts are at day starts (data.split.cut_unit: day, `prompt_config`)
    day_breaks: bool | None = None

    def __post_init__(self):
        if self.format not in PROMPT_FORMATS:
            raise ValueError(f"prompt.format: expected one of {PROMPT_FORMATS}, got {self.format!r}")
        if self.system is None:
            self.system = VERBOSE_SYSTEM if self.format == "verbose" else ""
        if self.order not in ("neg_first", "pos_first"):
            raise ValueError(f"prompt.order: expected neg_first or pos_first, got {self.order!r}")
        if self.like_tokens and (self.format != "compact" or not self.feedback_tokens):
            # verbose prompts never use them; without feedback tokens they would leak the feedback
            # into the context-discerning ablation
            raise ValueError("prompt.like_tokens needs format: compact and feedback_tokens: true")
        if self.day_breaks and self.format != "compact":
            raise ValueError("prompt.day_breaks needs format: compact (verbose prompts have no day tokens)")
        if not self.event_eos and self.format != "compact":
            raise ValueError("prompt.event_eos: false needs format: compact (a verbose answer always ends with EOS)")
        if self.older_negatives and self.format != "compact":
            raise ValueError("prompt.older_negatives needs format: compact (verbose prompts have a negative segment)")
        for name in ("max_neg", "max_pos", "max_mixed", "title_words", "max_events", "older_negatives"):
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
        self._codec = None
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
        """The final prompt text for an instruction: chat template when available, plain otherwise;
        no system line (or message) when `system` is empty, as under the compact format."""
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        if self.chat:
            messages = [*system, {"role": "user", "content": user_text}]
            return self.hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join([self.cfg.system] * bool(self.cfg.system) + [user_text, self.cfg.answer_prefix])

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

    def build(self, sample_row, context_mix: float = 1.0, neg_window_days: float | None = None, query: int = -1) -> str:
        """The prompt for one (user, cut) sample row of `Prepared.samples[split]`. `query`: the feedback
        the compact prompt's last token asks about (-1, the next dislike: the task; 0 or 1 measure
        what the query token is worth, benchmarks/bench_query_token.py)."""
        if self.cfg.format == "compact":
            return self.compact_text(sample_row, context_mix, neg_window_days, query)
        if query != -1:
            raise ValueError("a verbose prompt asks for the next dislike only (query=-1)")
        return self.wrap(self.history_text(sample_row, context_mix, neg_window_days))

    @property
    def answer_eos(self) -> bool:
        """Whether an answer (an item's SID) ends with EOS: always in verbose prompts (TRL ends every
        completion so), under the compact format unless `event_eos` is off. Every decoder of these
        prompts takes its constraint from `sid_constraint`, which follows it."""
        return self.cfg.format != "compact" or self.cfg.event_eos

    def sid_constraint(self, hf_tokenizer):
        """The SID trie for decoding answers to these prompts: ending with EOS or not (`answer_eos`)."""
        from negrec.llm.constrained import SidConstraint

        return SidConstraint(self.sid_tok, hf_tokenizer, eos=self.answer_eos)

    # ---- the compact timeline -----------------------------------------------------------
    def timeline_events(self, row, context_mix: float = 1.0, neg_window_days: float | None = None) -> list[tuple[int, int]]:
        """(item, feedback) of the shown events, oldest first: up to `older_negatives` negatives from
        before the window, every negative of the window, and the most recent round(context_mix * n)
        of its n other events (0 = negatives only)."""
        older, recent = self._shown_events(row, context_mix, neg_window_days)
        return [(i, f) for i, f, _ in older + recent]

    def _shown_events(self, row, context_mix: float, neg_window_days: float | None) -> tuple[list, list]:
        """(older negatives, recent events): (item, feedback, ts) lists, oldest first."""
        if not 0.0 <= float(context_mix) <= 1.0:
            raise ValueError(f"context_mix must be in [0, 1], got {context_mix}")
        items, fbs, ts = _seq(row["mixed_items"]), _seq(row["mixed_feedback"]), _seq(row["mixed_ts"])
        known = [k for k, i in enumerate(items) if int(i) in self.sid_tok]
        shown = known[-self.cfg.max_events:] if self.cfg.max_events else []
        events = [(int(items[k]), int(fbs[k]), int(ts[k])) for k in shown]
        start = None if neg_window_days is None else int(row["cut_ts"]) - float(neg_window_days) * DAY
        others = [k for k, e in enumerate(events) if e[1] >= 0]
        others = others[len(others) - int(round(context_mix * len(others))):]
        negatives = [k for k, e in enumerate(events) if e[1] < 0 and (start is None or e[2] >= start)]
        keep = set(others) | set(negatives)
        first = shown[0] if shown else len(items)
        older = self._older_negatives(row, sum(f < 0 for f in fbs[first:]), start) if self.cfg.older_negatives else []
        return older, [events[k] for k in sorted(keep)]

    def _older_negatives(self, row, n_shown: int, start: float | None) -> list[tuple[int, int, int]]:
        """The last `older_negatives` of the row's negatives before its shown events: `neg_items`
        and `mixed_items` both end at the cut, so those are all but its last `n_shown` negatives."""
        items, ts = _seq(row["neg_items"]), _seq(row["neg_ts"])
        older = [(int(i), -1, int(t)) for i, t in zip(items[:max(len(items) - n_shown, 0)], ts)
                 if int(i) in self.sid_tok and (start is None or t >= start)]
        return older[-self.cfg.older_negatives:]

    def compact_text(self, row, context_mix: float = 1.0, neg_window_days: float | None = None, query: int = -1) -> str:
        """The compact prompt: each shown event as feedback token + SID (+ EOS with `event_eos`), then the query token;
        the older negatives first, with no day breaks among them."""
        if self._codec is None:  # built once: it reads the whole SID table
            self._codec = compact_codec(self.sid_tok, self.hf_tokenizer, self.cfg)
        older, recent = self._shown_events(row, context_mix, neg_window_days)
        breaks = None
        if self.cfg.day_breaks:
            breaks = np.r_[np.zeros(len(older), bool), new_day_flags([t for _, _, t in recent] + [int(row["cut_ts"])])]
        return self._codec.text([(i, f) for i, f, _ in older + recent], breaks, query)

    def template_texts(self) -> list[str]:
        """Fixed strings the prompts use (for training a tokenizer that knows them)."""
        cfg = self.cfg
        kinds = ["(hated)", "(skipped)", "(low rating)", "(liked)", "(neutral)", "(negative)", "(positive)"]
        return [cfg.system, cfg.task, cfg.neg_header, cfg.pos_header, cfg.mixed_header, cfg.empty, cfg.answer_prefix,
                " ".join(kinds), *ALIGN_INSTRUCTIONS.values(), "A) B) C) D) A B C D"]


def new_day_flags(ts) -> np.ndarray:
    """Whether each time falls on a later UTC day than the one before it (never the first)."""
    day = np.asarray(ts, np.int64) // DAY
    return np.r_[False, day[1:] != day[:-1]] if len(day) else np.zeros(0, bool)


def compact_codec(sid_tok, hf_tokenizer, cfg: PromptConfig) -> "CompactCodec":
    return CompactCodec(sid_tok, hf_tokenizer, cfg.feedback_tokens, cfg.like_tokens, bool(cfg.day_breaks),
                        cfg.older_negatives, cfg.event_eos)


def prompt_config(raw: dict) -> PromptConfig:
    """Section `prompt` of a loaded config, `day_breaks` resolved from the data's cuts when unset."""
    from negrec.config import section_config
    from negrec.data.prepare import cuts_at_day_start

    cfg = section_config(PromptConfig, raw, "prompt")
    if cfg.day_breaks is not None:
        return cfg
    return replace(cfg, day_breaks=cfg.format == "compact" and cuts_at_day_start(raw))


class CompactCodec:
    """Token ids (and the equivalent text) of compact timelines for one HF tokenizer.

    An event is [feedback token, SID tokens...] (and EOS with `event_eos`), after DAY_TOKEN where it
    opens a new day (with `day_breaks`); a prompt is the tokenizer's own prefix (BOS where it adds
    one), the events, and the query token <|neg|>; with `older_negatives`, the user's negatives from
    before the first event come first, as negative events with no day breaks. With `event_eos` the
    EOS after every SID is what constrained decoding scores after a complete SID; without, decoding
    ends at the SID's last token (`PromptBuilder.answer_eos`): either way training and decoding agree."""

    def __init__(self, sid_tok, hf_tokenizer, feedback_tokens: bool = True, like_tokens: bool = False,
                 day_breaks: bool = False, older_negatives: int = 0, event_eos: bool = True):
        if hf_tokenizer is None:
            raise ValueError("the compact prompt format needs the policy's HF tokenizer")
        vocab = hf_tokenizer.get_vocab()
        missing = [t for t in compact_tokens(day_breaks) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the compact format's tokens {missing}: rebuild the model with "
                             "`negrec build-model` (it adds them) to use prompt.format: compact")
        lacking = [like_token(t) for t in sid_tok.all_tokens() if like_token(t) not in vocab] if like_tokens else []
        if lacking:
            raise ValueError(f"the tokenizer lacks {len(lacking)} like tokens ({', '.join(lacking[:3])}, ...): rebuild "
                             "the model with `negrec build-model` and prompt.like_tokens: true (it adds them)")
        self.sid_tok, self.tok = sid_tok, hf_tokenizer
        self.feedback_tokens, self.like_tokens, self.day_breaks = feedback_tokens, like_tokens, day_breaks
        self.older_negatives = older_negatives  # the timeline windows open with as many as a prompt shows
        self.fb_id = {f: vocab[t] for f, t in FEEDBACK_TOKENS.items()}
        self.day_id = vocab.get(DAY_TOKEN)
        self.eos_id = hf_tokenizer.eos_token_id
        self.event_eos = bool(event_eos)
        self.prefix_ids = list(hf_tokenizer("")["input_ids"])
        self.table = sid_tok.token_id_table(hf_tokenizer)  # (n_items, levels), rows in sid_tok.item_ids order
        self.like_table = self.table  # the non-negative events' SID tokens: their own with like_tokens
        if like_tokens:
            to_like = np.arange(max(vocab.values()) + 1)
            to_like[[vocab[t] for t in sid_tok.all_tokens()]] = [vocab[like_token(t)] for t in sid_tok.all_tokens()]
            self.like_table = to_like[self.table]
        self.row_of_item = {int(i): r for r, i in enumerate(np.asarray(sid_tok.item_ids).tolist())}

    @property
    def end_ids(self) -> list[int]:
        """What closes an event's SID: EOS, or nothing without `event_eos`."""
        return [self.eos_id] if self.event_eos else []

    @property
    def tokens_per_event(self) -> int:
        return self.sid_tok.levels + 1 + len(self.end_ids)

    def target_ids(self) -> np.ndarray:
        """Sorted ids of every token a timeline's loss can target: the SID tokens (and like tokens),
        and EOS with `event_eos`."""
        return np.unique(np.r_[self.table.ravel(), self.like_table.ravel(), self.end_ids].astype(np.int64))

    def fb_token(self, feedback: int) -> str:
        return FEEDBACK_TOKENS[int(np.sign(feedback)) if self.feedback_tokens else 0]

    def text(self, events: list[tuple[int, int]], breaks=None, query: int = -1) -> str:
        """The prompt text; `breaks` (one per event and one for the query) says where DAY_TOKEN goes;
        the query token asks for the next event of feedback `query` (a dislike by default)."""
        eos = self.tok.eos_token if self.event_eos else ""
        day = [DAY_TOKEN if b else "" for b in breaks] if breaks is not None else [""] * (len(events) + 1)
        body = "".join(f"{d}{self.fb_token(f)}{self.sid_text(i, f)}{eos}" for d, (i, f) in zip(day, events))
        return body + day[-1] + self.fb_token(query)

    def sid_text(self, item: int, feedback: int) -> str:
        tokens = self.sid_tok.token_list(item)
        return "".join(tokens if feedback < 0 or not self.like_tokens else map(like_token, tokens))

    def event_ids(self, item: int, feedback: int) -> list[int]:
        fb = self.fb_id[int(np.sign(feedback)) if self.feedback_tokens else 0]
        table = self.table if feedback < 0 else self.like_table
        return [fb, *table[self.row_of_item[int(item)]].tolist(), *self.end_ids]


# ---- item-level alignment and next-negative examples (prompt/completion pairs for SFT) -------
def item_label(row: dict) -> str:
    """What the model reads about an item: its title, else its text (both may be empty), cut
    (`negrec.data.schema.cut_label`: the timeline loop does not truncate)."""
    return cut_label(row.get("title") or "") or cut_label(row.get("text") or "")


def labelled_items(items) -> int:
    """How many items have a title or text (`item_label`): what the alignment tasks and checks read."""
    has = np.zeros(len(items), bool)
    for col in ("title", "text"):
        if col in items:
            has |= items[col].fillna("").astype(str).str.strip().ne("").to_numpy()
    return int(has.sum())


def can_align(items) -> bool:
    """Whether the items give alignment anything to teach: a title or text, or features (`features_to_sid`)."""
    return labelled_items(items) > 0 or bool(feature_columns(items))


def _feature_text(row: dict, feat_cols: list[str]) -> str:
    return ", ".join(f"{c[5:]}={row[c]}" for c in feat_cols)


def answer(builder: PromptBuilder, text: str) -> str:
    """Completion text. SID tokens follow the prompt directly (constrained decoding starts there);
    words after the plain template's "Answer:" start with a space, a clean BPE boundary."""
    return text if builder.chat or text.startswith("<") else " " + text


def first_code(sid_tok, item: int) -> str:
    """The item's first SID token, e.g. <a_12>."""
    return sid_tok.token(0, sid_tok.codes_for_item(item)[0])


def _distractors(sid_tok, task: str, item: int, pool: list[int], rng: random.Random) -> list[int]:
    """3 random other items; for the stepwise question, items whose first codes differ from the
    item's and from each other (where the catalogue has 4 first codes), so the first code answers it."""
    if task != "choose_sid_stepwise":
        return rng.sample([i for i in pool if i != item], 3)
    out, seen = [], {first_code(sid_tok, item)}
    for j in rng.sample(pool, min(len(pool), 64)):
        code = first_code(sid_tok, j)
        if j != item and code not in seen:
            out.append(j)
            seen.add(code)
            if len(out) == 3:
                return out
    return out + rng.sample([i for i in pool if i != item and i not in out], 3 - len(out))


def choice_example(builder: PromptBuilder, sid_tok, task: str, item: int, labels: dict[int, str], pool: list[int], rng: random.Random) -> dict:
    """One CoNRec 4-choice example: the item plus 3 distractors, shuffled (`CHOICE_TASKS`)."""
    options = _distractors(sid_tok, task, item, pool, rng) + [item]
    rng.shuffle(options)
    letter = CHOICE_LETTERS[options.index(item)]
    if task == "choose_text":
        lines = "\n".join(f"{CHOICE_LETTERS[k]}) {labels[o]}" for k, o in enumerate(options))
        prompt = ALIGN_INSTRUCTIONS["choose_text"].format(sid=sid_tok.tokens_for_item(item), options=lines)
    else:
        lines = "\n".join(f"{CHOICE_LETTERS[k]}) {sid_tok.tokens_for_item(o)}" for k, o in enumerate(options))
        prompt = ALIGN_INSTRUCTIONS["choose_sid"].format(text=labels[item], options=lines)
    reply = f"{first_code(sid_tok, item)} {letter}" if task == "choose_sid_stepwise" else letter
    return {"prompt": builder.wrap(prompt), "completion": answer(builder, reply), "task": task, "item_id": item,
            "letter": letter}


def aligned_item_ids(sid_tok, items, max_items: int = 0, rng: random.Random | int = 0) -> list[int]:
    """The items alignment SFT teaches: all with a SID, or a seeded sample of `max_items`."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    ids = sorted(int(i) for i in items["item_id"] if int(i) in sid_tok)
    if max_items and len(ids) > max_items:
        ids = sorted(rng.sample(ids, max_items))
    return ids


def _item_examples(builder: PromptBuilder, sid_tok, item: int, record: dict, label: str, tasks,
                   feat_cols: list[str]) -> list[dict]:
    """text -> SID, SID -> text and features -> SID examples of one item (those its data allows)."""
    sid = sid_tok.tokens_for_item(item)
    asks = []
    if label and "text_to_sid" in tasks:
        asks.append(("text_to_sid", {"text": label}, sid))
    if label and "sid_to_text" in tasks:
        asks.append(("sid_to_text", {"sid": sid}, label))
    if feat_cols and ("features_to_sid" in tasks or not label):
        asks.append(("features_to_sid", {"features": _feature_text(record, feat_cols)}, sid))
    return [{"prompt": builder.wrap(ALIGN_INSTRUCTIONS[task].format(**fields)), "completion": answer(builder, target),
             "task": task, "item_id": item} for task, fields, target in asks]


def alignment_examples(builder: PromptBuilder, sid_tok, items, tasks=tuple(ALIGN_INSTRUCTIONS), max_items: int = 0,
                       repeats: int = 1, seed: int = 0, item_seed: int | None = None) -> list[dict]:
    """Prompt/completion examples of the item-level alignment tasks. `item_seed` draws the
    `max_items` sample apart from the distractors and order (default: one draw from `seed`)."""
    rng = random.Random(seed)
    records = {int(r["item_id"]): r for r in items.to_dict("records") if int(r["item_id"]) in sid_tok}
    ids = aligned_item_ids(sid_tok, items, max_items, rng if item_seed is None else item_seed)
    labels = {i: item_label(records[i]) for i in ids}
    with_text = [i for i in ids if labels[i]]
    feat_cols = feature_columns(items)
    out: list[dict] = []
    for _ in range(max(1, repeats)):
        for i in ids:
            out += _item_examples(builder, sid_tok, i, records[i], labels[i], tasks, feat_cols)
            if labels[i] and len(with_text) >= 4:
                for task in CHOICE_TASKS:
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
