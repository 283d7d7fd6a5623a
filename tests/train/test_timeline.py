"""Timeline next-negative training: the compact prompt and the training windows agree token for
token, and on a synthetic log with planted per-user dislike clusters the trained policy beats
popularity (a policy that does not learn from the user's history cannot)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from negrec.llm.model import ModelConfig, build_policy
from negrec.llm.prompts import DAY_TOKEN, CompactCodec, PromptBuilder, PromptConfig
from negrec.train.sft import SFTStageConfig
from negrec.train.timeline import example_windows, timeline_windows, train_timeline, validation_recall
from tests.llm.conftest import synthetic_items

N_CLUSTERS, N_USERS, N_EVENTS, N_CONTEXT = 4, 240, 36, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def planted_log(item_ids: np.ndarray, seed: int = 0, clusters: list | None = None) -> pd.DataFrame:
    """Each user dislikes items of one cluster (random ones unless given) and likes 24 items of the
    others, in random order; every cluster is disliked by as many users, so the most disliked items
    overall cannot tell users apart."""
    rng = np.random.default_rng(seed)
    clusters = clusters if clusters is not None else np.array_split(rng.permutation(item_ids), N_CLUSTERS)
    rows = []
    for u in range(N_USERS):
        c = u % N_CLUSTERS
        others = np.concatenate([clusters[j] for j in range(N_CLUSTERS) if j != c])
        events = [(int(i), -1) for i in clusters[c]] + [(int(i), 1) for i in rng.choice(others, 24, replace=False)]
        for e, k in enumerate(rng.permutation(len(events))):  # each item once per user, in random order
            rows.append((u + 1, events[k][0], 1_000_000 + u * 1000 + e * 60, events[k][1]))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "feedback"])


def clustered_sid_tokenizer(seed: int = 5):
    """48 items whose first SID code is their planted cluster, as semantic IDs group similar items.
    (With random SIDs the 2-layer model did not learn the clusters in 20 epochs: the item -> cluster
    map has to be found from co-occurrence alone.)"""
    from negrec.tokenizer import SemanticIdTokenizer

    rng = np.random.default_rng(seed)
    codes = np.array([(c, j // 4, j % 4) for c in range(N_CLUSTERS) for j in rng.permutation(16)[:48 // N_CLUSTERS]])
    return SemanticIdTokenizer.from_codes(rng.choice(480, size=48, replace=False) + 1, codes, [N_CLUSTERS, 4, 4])


def sample_rows(log: pd.DataFrame, users, n_context: int = N_CONTEXT) -> list[dict]:
    """One (user, cut) row per user: the first `n_context` events are the context, F_7 the later negatives."""
    out = []
    for u in users:
        g = log[log.user_id == u]
        ctx, fut = g.iloc[:n_context], g.iloc[n_context:]
        out.append({"user_id": u, "cut_ts": int(fut.ts.iloc[0]), "mixed_items": ctx.item_id.to_numpy(),
                    "mixed_feedback": ctx.feedback.to_numpy(), "mixed_ts": ctx.ts.to_numpy(),
                    "context_items": ctx.item_id.to_numpy(),
                    "future_neg_h7": fut[fut.feedback < 0].item_id.to_numpy()})
    return out


@pytest.fixture(scope="module")
def setup():
    sid = clustered_sid_tokenizer()
    items = synthetic_items(sid)
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, bpe_vocab_size=300)
    model, hf, _ = build_policy(cfg, sid, items, [], device="cpu")
    builder = PromptBuilder(PromptConfig(format="compact", max_events=50), sid, items, hf)
    ids, first = np.asarray(sid.item_ids), np.asarray(sid.codes)[:, 0]
    return model, hf, sid, builder, planted_log(ids, clusters=[ids[first == c] for c in range(N_CLUSTERS)])


@pytest.mark.parametrize("event_eos", [True, False])
def test_compact_prompt_tokenizes_as_the_training_windows(setup, event_eos):
    """An event is its feedback token and SID, then EOS (none with `event_eos: false`), in prompt
    and training window alike."""
    model, hf, sid, _, log = setup
    builder = PromptBuilder(PromptConfig(format="compact", max_events=50, event_eos=event_eos), sid, None, hf)
    row = sample_rows(log, [1])[0]
    codec = CompactCodec(sid, hf, event_eos=event_eos)
    ids = hf(builder.build(row))["input_ids"]
    events = [codec.event_ids(i, f) for i, f in zip(row["mixed_items"], row["mixed_feedback"])]
    assert ids == codec.prefix_ids + [t for e in events for t in e] + [codec.fb_id[-1]]
    assert codec.tokens_per_event == sid.levels + 1 + event_eos == len(events[0])
    assert (hf.eos_token_id in ids) == event_eos and builder.answer_eos == event_eos
    ctx = log[log.user_id == 1].iloc[:N_CONTEXT]
    (window, weights), = timeline_windows(ctx, None, codec, 100, other_weight=0.5)
    assert window.tolist() == ids[:-1]
    per_event = weights[len(codec.prefix_ids):].reshape(N_CONTEXT, -1)
    assert (per_event[:, 0] == 0).all()  # never a loss on the feedback token (it is the condition)
    assert np.allclose(per_event[:, 1:].max(1), np.where(ctx.feedback.to_numpy() < 0, 1.0, 0.5))


@pytest.mark.parametrize("day_breaks", [False, True])
def test_older_negatives_open_the_prompt_as_they_open_the_training_window(setup, day_breaks):
    """`prompt.older_negatives`: the prompt shows the last events and, before them, the user's last
    negatives from before those events; the training window over the same events opens with the
    same negatives, token for token, with no loss and no day break on them."""
    _, hf, sid, _, log = setup
    if day_breaks:
        cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, bpe_vocab_size=300)
        _, hf, _ = build_policy(cfg, sid, synthetic_items(sid), [], device="cpu", day_token=True)
    ctx = log[log.user_id == 1].iloc[:N_CONTEXT].copy()
    ctx["ts"] = 1_000_000 + np.arange(N_CONTEXT) * 30_000  # about three events a day: day breaks to place
    n_shown, n_older = 10, 3
    recent, negs = ctx.iloc[-n_shown:], ctx[ctx.feedback < 0]
    assert len(negs) - (recent.feedback < 0).sum() > n_older  # more older negatives than are shown
    row = {"user_id": 1, "cut_ts": int(ctx.ts.iloc[-1]) + 30_000, "mixed_items": recent.item_id.to_numpy(),
           "mixed_feedback": recent.feedback.to_numpy(), "mixed_ts": recent.ts.to_numpy(),
           "neg_items": negs.item_id.to_numpy(), "neg_ts": negs.ts.to_numpy()}
    cfg = PromptConfig(format="compact", max_events=n_shown, older_negatives=n_older, day_breaks=day_breaks)
    builder = PromptBuilder(cfg, sid, None, hf)
    codec = CompactCodec(sid, hf, day_breaks=day_breaks, older_negatives=n_older)
    older = negs[negs.ts < recent.ts.iloc[0]].item_id.to_numpy()[-n_older:]
    assert builder.timeline_events(row)[:n_older] == [(int(i), -1) for i in older]
    assert builder.timeline_events(row)[n_older:] == list(zip(recent.item_id.tolist(), recent.feedback.tolist()))
    ids = hf(builder.build(row))["input_ids"]
    window, weights = timeline_windows(ctx, None, codec, n_shown, other_weight=1.0)[0]  # the latest window
    assert window.tolist() == ids[:-1]
    head = len(codec.prefix_ids) + n_older * codec.tokens_per_event
    assert ids[len(codec.prefix_ids):head] == [t for i in older for t in codec.event_ids(i, -1)]
    assert not weights[:head].any() and weights[head:].any()
    assert (DAY_TOKEN in builder.build(row)) == day_breaks
    plain = timeline_windows(ctx, None, CompactCodec(sid, hf, day_breaks=day_breaks), n_shown, other_weight=1.0)
    assert [len(w) for w, _ in plain][-1] == len(timeline_windows(ctx, None, codec, n_shown, 1.0)[-1][0])  # none before the first


def test_the_query_token_asks_about_the_feedback_given(setup):
    """`build(row, query=f)`: the same compact prompt, its last token the feedback asked about (what
    benchmarks/bench_query_token.py varies); a verbose prompt asks for the next dislike only."""
    _, _, sid, builder, log = setup
    ctx = log[log.user_id == 1].iloc[:N_CONTEXT]
    row = {"user_id": 1, "cut_ts": int(ctx.ts.iloc[-1]) + 1, "mixed_items": ctx.item_id.to_numpy(),
           "mixed_feedback": ctx.feedback.to_numpy(), "mixed_ts": ctx.ts.to_numpy()}
    asked = builder.build(row)
    assert asked.endswith("<|neg|>") and builder.build(row, query=-1) == asked
    assert builder.build(row, query=1) == asked[:-len("<|neg|>")] + "<|pos|>"
    assert builder.build(row, query=0) == asked[:-len("<|neg|>")] + "<|neu|>"
    with pytest.raises(ValueError, match="next dislike only"):
        PromptBuilder(PromptConfig(format="verbose"), sid).build(row, query=1)


def test_like_tokens_write_the_non_negative_events_with_their_own_tokens(setup):
    """`prompt.like_tokens`: build-model adds a like token per SID token (its rows copies of the SID
    token's); the prompt, the event ids and the training windows write a non-negative event's SID
    with them and a negative's with the SID tokens, so text and windows still agree token for token."""
    from negrec.llm.prompts import like_token

    _, _, sid, _, log = setup
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, bpe_vocab_size=300)
    model, hf, info = build_policy(cfg, sid, synthetic_items(sid), [], device="cpu", like_tokens=True)
    assert info["like_tokens_added"] == len(sid.all_tokens())
    emb, vocab = model.get_input_embeddings().weight, hf.get_vocab()
    for t in sid.all_tokens():
        assert torch.equal(emb[vocab[like_token(t)]], emb[vocab[t]])
    row = sample_rows(log, [1])[0]
    codec = CompactCodec(sid, hf, like_tokens=True)
    text = PromptBuilder(PromptConfig(format="compact", like_tokens=True), sid, None, hf).build(row)
    item, fb = int(row["mixed_items"][0]), int(row["mixed_feedback"][0])
    written = "".join(map(like_token, sid.token_list(item))) if fb >= 0 else sid.tokens_for_item(item)
    assert text.startswith(codec.fb_token(fb) + written)
    assert text.count("<pa_") == int((row["mixed_feedback"] >= 0).sum())
    assert text.count("<a_") == int((row["mixed_feedback"] < 0).sum())
    events = [codec.event_ids(i, f) for i, f in zip(row["mixed_items"], row["mixed_feedback"])]
    ids = hf(text)["input_ids"]
    assert ids == codec.prefix_ids + [t for e in events for t in e] + [codec.fb_id[-1]]
    (window, _), = timeline_windows(log[log.user_id == 1].iloc[:N_CONTEXT], None, codec, 100, other_weight=0.5)
    assert window.tolist() == ids[:-1]
    vocab = hf.get_vocab()  # the targets: every SID token an item uses, its like token, and EOS (unless event_eos is off)
    used = {t for i in sid.item_ids for t in sid.token_list(int(i))}
    want = {vocab[t] for t in used} | {vocab[like_token(t)] for t in used}
    assert set(codec.target_ids().tolist()) == want | {hf.eos_token_id}
    assert set(CompactCodec(sid, hf, like_tokens=True, event_eos=False).target_ids().tolist()) == want
    for bad in (dict(format="verbose"), dict(format="compact", feedback_tokens=False)):
        with pytest.raises(ValueError, match="like_tokens needs format: compact and feedback_tokens: true"):
            PromptConfig(like_tokens=True, **bad)
    with pytest.raises(ValueError, match=r"lacks 12 like tokens \(<pa_0>"):  # a model built without them
        CompactCodec(sid, setup[1], like_tokens=True)


def _over_days(ctx: pd.DataFrame, first_of_day=(8, 16)) -> pd.DataFrame:
    """The events moved onto three UTC days, the second and third starting at `first_of_day`."""
    from negrec.data.splits import DAY

    day = np.searchsorted(np.asarray(first_of_day), np.arange(len(ctx)), side="right")
    return ctx.assign(ts=10 * DAY + day * DAY + np.arange(len(ctx)) * 60)


def test_day_breaks_mark_new_days_in_prompt_and_windows_alike(setup):
    """`prompt.day_breaks`: <|day|> before the first event of each later day and before the query
    when the cut falls on a later day than the last event; the windows write it at the same places,
    never as a target; a model built without the token is refused by name."""
    from negrec.data.splits import DAY
    from negrec.llm.prompts import DAY_TOKEN

    _, _, sid, _, log = setup
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, bpe_vocab_size=300)
    model, hf, info = build_policy(cfg, sid, synthetic_items(sid), [], device="cpu", day_token=True)
    ctx = _over_days(log[log.user_id == 1].iloc[:N_CONTEXT])
    row = {**sample_rows(log, [1])[0], "mixed_ts": ctx.ts.to_numpy(), "cut_ts": int(ctx.ts.iloc[-1] // DAY + 1) * DAY}
    builder = PromptBuilder(PromptConfig(format="compact", day_breaks=True), sid, None, hf)
    codec, day = CompactCodec(sid, hf, day_breaks=True), hf.get_vocab()[DAY_TOKEN]
    events = [codec.event_ids(i, f) for i, f in zip(ctx.item_id, ctx.feedback)]
    want = codec.prefix_ids + [t for k, e in enumerate(events) for t in ([day] if k in (8, 16) else []) + e]
    ids = hf(builder.build(row))["input_ids"]
    assert ids == want + [day, codec.fb_id[-1]]
    same_day = hf(builder.build({**row, "cut_ts": int(ctx.ts.iloc[-1]) + 60}))["input_ids"]
    assert same_day == want + [codec.fb_id[-1]]
    (window, weights), = timeline_windows(ctx, None, codec, 100, other_weight=0.5)
    assert window.tolist() == want and (weights[window == day] == 0).all()
    assert hf.decode(window).count(DAY_TOKEN) == 2
    plain = CompactCodec(sid, hf)  # off: the windows of before, token for token
    (old, _), = timeline_windows(ctx, None, plain, 100, other_weight=0.5)
    assert old.tolist() == [t for t in want if t != day]
    with pytest.raises(ValueError, match=r"lacks the compact format's tokens \['<\|day\|>'\]"):
        CompactCodec(sid, setup[1], day_breaks=True)
    with pytest.raises(ValueError, match="day_breaks needs format: compact"):
        PromptConfig(format="verbose", day_breaks=True)


def test_shuffle_within_day_reorders_each_day_and_keeps_the_days(setup):
    """`sft_next.shuffle_within_day`: each user's days keep their events and their order, the events
    of a day come in a random order (a fresh one per draw), and the windows keep their bounds."""
    _, hf, sid, _, log = setup
    codec = CompactCodec(sid, hf)
    ctx = pd.concat([_over_days(log[log.user_id == u].iloc[:N_CONTEXT]) for u in (1, 2)])
    width = len(codec.prefix_ids)

    def events(windows):  # per window, its events as tuples of token ids
        return [[tuple(e) for e in w[width:].reshape(N_CONTEXT, -1).tolist()] for w, _ in windows]

    in_time = events(timeline_windows(ctx, None, codec, 100, other_weight=1.0))
    rng = np.random.default_rng(0)
    draws = [events(timeline_windows(ctx, None, codec, 100, other_weight=1.0, shuffle=rng)) for _ in range(2)]
    assert draws[0] != draws[1]
    for shuffled in draws:
        moved = 0
        for t, sh in zip(in_time, shuffled):  # one window per user
            for a, b in ((0, 8), (8, 16), (16, N_CONTEXT)):
                assert sorted(sh[a:b]) == sorted(t[a:b])
                moved += sh[a:b] != t[a:b]
        assert moved >= 4  # of the 6 days, most reordered (8 events stay in order with odds 1/40320)
    tens = timeline_windows(ctx, None, codec, 10, other_weight=1.0)
    assert [len(w) for w, _ in timeline_windows(ctx, None, codec, 10, 1.0, shuffle=rng)] == [len(w) for w, _ in tens]


def test_negatives_only_and_ablation_prompts(setup):
    model, hf, sid, builder, log = setup
    row = sample_rows(log, [2])[0]
    neg_only = PromptBuilder(PromptConfig(format="compact"), sid, None, hf).timeline_events(row, context_mix=0.0)
    assert [f for _, f in neg_only] == [-1] * int((row["mixed_feedback"] < 0).sum())
    plain = PromptBuilder(PromptConfig(format="compact", feedback_tokens=False), sid, None, hf).build(row)
    assert "<|pos|>" not in plain and plain.count("<|neu|>") == N_CONTEXT + 1 and plain.endswith("<|neu|>")


def test_timeline_policy_beats_popularity_on_planted_clusters(setup):
    """The trained policy finds each user's dislike cluster from their history: far above popularity
    and a random ranking, which cannot tell users apart. The log holds the dislikes alone (every
    event shows the cluster): with the users' 24 likes from the other clusters interleaved,
    the 2-layer model stayed at the random level for 8-30 epochs (lr 3e-4 to 2e-2, 4x the users) and
    learnt only after about 1,000 steps (0.78 after 40 epochs at lr 3e-3): too slow for a test, and
    with 8 epochs that log could only show that popularity is worse than random."""
    model, hf, sid, builder, full = setup
    log, n_context = full[full.feedback < 0], 6
    train_users, test_users = np.arange(1, 201), np.arange(201, N_USERS + 1)
    test_rows = sample_rows(log, test_users, n_context)
    held = {r["user_id"]: r["cut_ts"] for r in test_rows}
    windows = timeline_windows(log, held, CompactCodec(sid, hf), 50, other_weight=1.0)
    cfg = SFTStageConfig(mode="timeline", epochs=8, learning_rate=1e-2, batch_size=8, warmup_ratio=0.05, patience=8,
                         logging_steps=10, resume=False)
    val_rows = sample_rows(log, train_users[:24], n_context)
    before = validation_recall(model, hf, sid, builder, val_rows, 7, num_beams=20)  # the fixture's model, untrained
    fit = train_timeline(model, hf, sid, windows, val_rows, builder, cfg, horizon=7)
    curve = [h["val_recall@10"] for h in fit["history"]]
    assert fit["best_val_recall@10"] == max(curve)  # selection keeps the best epoch
    assert max(curve) > before + 0.3, (before, curve)  # the curve moves
    policy = validation_recall(model, hf, sid, builder, test_rows, 7, num_beams=20)
    # popularity: the items most disliked before the cuts, context removed; random: the expected
    # capped recall of 10 items drawn from those not in the context
    train = log[log.ts < log.user_id.map(held).fillna(np.inf)]
    popular = train.item_id.value_counts().index.to_numpy()
    pop, rand = [], []
    for r in test_rows:
        top = [i for i in popular if i not in set(r["context_items"])][:10]
        f = set(r["future_neg_h7"].tolist())
        pop.append(len(f & set(top)) / max(1, min(10, len(f))))
        rand.append(10 / (len(sid.item_ids) - len(r["context_items"])) * len(f) / max(1, min(10, len(f))))
    assert policy > max(np.mean(pop), np.mean(rand)) + 0.3, (policy, np.mean(pop), np.mean(rand), curve)


def test_training_log_stops_each_user_at_the_right_cut(ml100k_prepared):
    """fit_until=test: nobody's events at or after their test cut; the validation users' stop at
    their validation cut (so the validation that picks the epoch is clean); the others keep the
    events between the two cuts, which is what `test` adds over `valid`."""
    from negrec.train.timeline import training_log

    cuts = ml100k_prepared.cuts.set_index("user_id")
    val_users = list(cuts.index[cuts["train_limit"] < cuts["test_limit"]][:50])
    log, limit = training_log(ml100k_prepared, "test", val_users)
    assert set(limit) == set(val_users) and all(limit[u] == cuts.loc[u, "train_limit"] for u in val_users)
    lim = log["user_id"].map(limit).fillna(np.iinfo(np.int64).max).to_numpy()
    kept = log[log["ts"].to_numpy() < lim]  # what timeline_windows keeps
    assert (kept["ts"].to_numpy() < cuts.loc[kept["user_id"], "test_limit"].to_numpy()).all()
    in_val = kept["user_id"].isin(val_users).to_numpy()
    assert (kept["ts"].to_numpy()[in_val] < cuts.loc[kept["user_id"][in_val], "train_limit"].to_numpy()).all()
    later = kept["ts"].to_numpy()[~in_val] >= cuts.loc[kept["user_id"][~in_val], "train_limit"].to_numpy()
    assert later.sum() > 0.05 * len(kept)
    old, none = training_log(ml100k_prepared, "valid", val_users)
    assert none is None and len(old) < len(kept)


def test_epoch_selection_keeps_the_later_epoch_within_noise():
    """A later epoch a hair below the best (noise) is kept; one clearly below is not, and counts
    towards patience."""
    from negrec.train.timeline import _select_epoch, significantly_worse

    rng = np.random.default_rng(0)
    best = rng.random(200)
    noise = rng.normal(0, 0.05, 200)
    noise -= noise.mean()  # paired SE of the gap: 0.05 / sqrt(200) = 0.0035
    assert not significantly_worse(best - 0.001 + noise, best)
    assert significantly_worse(best - 0.01 + noise, best)
    model = torch.nn.Linear(2, 1)
    state = {"epoch": 1, "best": -1.0, "best_epoch": 0, "best_state": None, "bad": 0, "best_recalls": None,
             "kept_epoch": 0, "kept_recall": -1.0}
    _select_epoch(state, model, best)
    state["epoch"] = 2
    _select_epoch(state, model, best - 0.002 + noise)  # noise: the later epoch is kept
    assert (state["best_epoch"], state["kept_epoch"], state["bad"]) == (1, 2, 0)
    state["epoch"] = 3
    _select_epoch(state, model, best - 0.2 + noise)  # clearly worse: epoch 2 stays, patience counts
    assert (state["kept_epoch"], state["bad"]) == (2, 1)


def test_alignment_examples_join_the_timeline_loop_with_loss_on_the_answer_only(setup):
    """Co-training (`sft_next.align_weight`): an alignment example is its prompt, answer and EOS,
    tokenized as TRL does; the loss weight sits on the answer and EOS, never on the prompt."""
    model, hf, sid, builder, _ = setup
    examples = [{"prompt": "Which item is this? Toy Story\nAnswer:", "completion": sid.tokens_for_item(int(sid.item_ids[0]))},
                {"prompt": "Describe item x.\nAnswer:", "completion": " a long title"}]
    windows = example_windows(examples, hf, weight=0.5)
    for e, (ids, w) in zip(examples, windows):
        prompt = hf(e["prompt"])["input_ids"]
        answer = hf(e["completion"], add_special_tokens=False)["input_ids"]
        assert ids.tolist() == [*prompt, *answer, hf.eos_token_id]
        assert w.tolist() == [0.0] * len(prompt) + [0.5] * (len(answer) + 1)


def test_batches_of_equal_length_windows_change_between_epochs():
    """Length-grouped batches must still be fresh each epoch: equal-length windows are ordered at
    random, so the same windows do not meet in the same batch every epoch."""
    import numpy as np

    from negrec.train.timeline import _batches

    windows = [(np.zeros(10 if i % 3 else 7, np.int64), None) for i in range(60)]
    rng = np.random.default_rng(0)
    epochs = [sorted(tuple(sorted(b.tolist())) for b in _batches(windows, 8, rng)) for _ in range(2)]
    assert epochs[0] != epochs[1]
    for groups in epochs:  # still grouped by length, every window once
        assert sorted(i for g in groups for i in g) == list(range(60))
        assert all(len({len(windows[i][0]) for i in g}) <= 2 for g in groups)


def test_co_trained_examples_ride_in_every_timeline_batch():
    """Alignment examples co-trained with the timelines go into the timeline batches, `per_batch` in
    each, all of them visited before any repeats; in batches of their own their loss weight was
    cancelled by the loss normalisation and Adam's step size."""
    import numpy as np

    from negrec.train.timeline import _batches, _mix_in

    windows = [(np.zeros(30, np.int64), None) for _ in range(40)]
    rng = np.random.default_rng(0)
    groups = _mix_in(_batches(windows, 8, rng), 40, 12, 3, rng)
    assert len(groups) == 5  # the step count is the timeline's
    extras = [i for g in groups for i in g if i >= 40]
    assert all(sum(i >= 40 for i in g) == 3 for g in groups)
    assert sorted(extras[:12]) == list(range(40, 52))  # every example before any repeat
    assert sorted(i for g in groups for i in g if i < 40) == list(range(40))
    assert _mix_in(groups, 40, 0, 3, rng) == groups


def test_co_training_with_no_examples_per_batch_is_refused():
    with pytest.raises(ValueError, match="align_per_batch"):
        SFTStageConfig(mode="timeline", align_weight=1.0, align_per_batch=0)
    SFTStageConfig(mode="timeline", align_weight=0.0, align_per_batch=0)  # nothing co-trained: fine


def test_validation_every_second_epoch_and_the_last(setup):
    """`val_every: 2` over 3 epochs validates after epochs 2 and 3 only, and only a validated epoch
    can be the one kept."""
    model, hf, sid, builder, log = setup
    model = copy.deepcopy(model)
    codec = CompactCodec(sid, hf)
    windows = timeline_windows(log[log.user_id <= 16], None, codec, 50, other_weight=1.0)
    cfg = SFTStageConfig(mode="timeline", epochs=3, learning_rate=1e-3, batch_size=8, val_every=2, patience=5,
                         resume=False)
    fit = train_timeline(model, hf, sid, windows, sample_rows(log, [201, 202, 203, 204]), builder, cfg, horizon=7)
    assert fit["epochs_run"] == 3
    assert [("val_recall@10" in h) for h in fit["history"]] == [False, True, True]
    assert fit["kept_epoch"] in (2, 3) and fit["best_epoch"] in (2, 3)
    with pytest.raises(ValueError, match="val_every"):
        SFTStageConfig(mode="timeline", val_every=0)


def test_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights(setup):
    """`autocast` (model.dtype auto on CUDA, bf16-mixed anywhere): the layers compute in bf16 while the
    weights and AdamW stay fp32, so the small updates are not rounded away; without it, fp32 throughout."""
    model, hf, sid, builder, log = setup
    codec = CompactCodec(sid, hf)
    windows = timeline_windows(log[log.user_id <= 8], None, codec, 50, other_weight=1.0)
    cfg = SFTStageConfig(mode="timeline", epochs=1, learning_rate=1e-3, batch_size=8, resume=False)
    for autocast, computed in ((torch.bfloat16, torch.bfloat16), (None, torch.float32)):
        m = copy.deepcopy(model).float()
        before = m.model.layers[0].mlp.down_proj.weight.detach().clone()
        seen = []
        hook = m.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
        train_timeline(m, hf, sid, windows, [], builder, cfg, horizon=7, autocast=autocast)
        hook.remove()
        assert seen and set(seen) == {computed}
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert not torch.equal(m.model.layers[0].mlp.down_proj.weight, before)


def test_sid_loss_vocab_is_the_cross_entropy_over_the_sid_tokens_and_eos(setup):
    """`loss_vocab: sid`: the windows' softmax runs over the SID tokens and EOS alone (what every
    target is, and all constrained decoding leaves); the mixed-in examples keep the full vocabulary."""
    from negrec.train.timeline import _collate, batch_loss, check_loss_targets, weighted_lm_loss

    model, hf, sid, builder, log = setup
    no_eos = CompactCodec(sid, hf, event_eos=False)
    assert no_eos.target_ids().tolist() == sorted(set(no_eos.table.ravel().tolist()))
    codec = CompactCodec(sid, hf)
    vocab = codec.target_ids()
    assert vocab.tolist() == sorted({*codec.table.ravel().tolist(), hf.eos_token_id})
    windows = timeline_windows(log[log.user_id <= 3], None, codec, 8, 0.5)
    ids, attn, w = _collate(windows, [0, 1, 2], hf.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        sel = w[:, 1:] > 0
        sub = logits[sel][:, torch.as_tensor(vocab)]  # by hand: log-softmax over the vocab's columns
        rows = torch.as_tensor([vocab.tolist().index(t) for t in ids[:, 1:][sel].tolist()])
        want = -(torch.log_softmax(sub, -1)[torch.arange(len(rows)), rows] * w[:, 1:][sel]).sum()
        got, total = weighted_lm_loss(model, ids, attn, w, loss_ids=torch.as_tensor(vocab))
        full, _ = weighted_lm_loss(model, ids, attn, w)
        assert torch.allclose(got, want, rtol=1e-5) and total == w[:, 1:][sel].sum()
        assert got < full  # fewer tokens share the probability mass
        example = example_windows([{"prompt": "Describe item x.\nAnswer:", "completion": " a long title"}], hf)
        both = [*windows[:2], *example]
        mixed = batch_loss(model, both, [0, 1, 2], hf.pad_token_id, 2, loss_ids=torch.as_tensor(vocab))
        parts = [weighted_lm_loss(model, *_collate(both, [0, 1], hf.pad_token_id), loss_ids=torch.as_tensor(vocab)),
                 weighted_lm_loss(model, *_collate(both, [2], hf.pad_token_id))]
        assert torch.allclose(mixed, sum(p[0] for p in parts) / sum(p[1] for p in parts))
    check_loss_targets(windows, vocab)
    with pytest.raises(ValueError, match="outside the restricted vocabulary"):  # a target never mapped silently
        check_loss_targets(windows, vocab[vocab != hf.eos_token_id])
    with pytest.raises(ValueError, match="sorted and unique"):
        check_loss_targets(windows, vocab[::-1])
    cfg = SFTStageConfig(mode="timeline", max_steps=2, epochs=1, batch_size=2, resume=False, loss_vocab="sid")
    with pytest.raises(ValueError, match="outside the restricted vocabulary"):  # train_timeline checks before a step
        train_timeline(model, hf, sid, windows, [], builder, cfg, horizon=7, loss_ids=vocab[vocab != hf.eos_token_id])


def test_loss_vocab_is_checked():
    assert SFTStageConfig(loss_vocab="sid").loss_vocab == "sid"
    with pytest.raises(ValueError, match="loss_vocab must be full or sid"):
        SFTStageConfig(loss_vocab="sids")


def test_a_killed_timeline_run_resumes_to_the_same_weights(setup, tmp_path, monkeypatch):
    """Killed after its first epoch's checkpoint, the rerun goes on with the same batch order: the
    weights equal the uninterrupted run's (the checkpoint holds the random state)."""
    import negrec.train.timeline as tl

    model, hf, sid, builder, log = setup
    windows = timeline_windows(log[log.user_id <= 12], None, CompactCodec(sid, hf), 8, 0.5)
    cfg = SFTStageConfig(mode="timeline", epochs=3, learning_rate=1e-2, batch_size=4, resume=True)
    whole = copy.deepcopy(model)
    train_timeline(whole, hf, sid, windows, [], builder, cfg, 7, ckpt_path=tmp_path / "a.pt", resume_key="k")
    save = tl._save_checkpoint

    def killed_after_first(path, state):
        save(path, state)
        raise KeyboardInterrupt

    killed = copy.deepcopy(model)
    monkeypatch.setattr(tl, "_save_checkpoint", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_timeline(killed, hf, sid, windows, [], builder, cfg, 7, ckpt_path=tmp_path / "b.pt", resume_key="k")
    monkeypatch.setattr(tl, "_save_checkpoint", save)
    resumed = copy.deepcopy(model)  # a fresh process: the model as built, the rest from the checkpoint
    train_timeline(resumed, hf, sid, windows, [], builder, cfg, 7, ckpt_path=tmp_path / "b.pt", resume_key="k")
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], model.state_dict()[k]) for k in a)  # and it trained


def test_a_run_without_validation_records_null_recalls_not_nan(setup):
    """No validation rows (a log without a validation sample): the summary's recalls are JSON null;
    NaN, which strict JSON readers refuse, was written before."""
    import json

    model, hf, sid, builder, log = setup
    windows = timeline_windows(log[log.user_id <= 4], None, CompactCodec(sid, hf), 50, other_weight=1.0)
    cfg = SFTStageConfig(mode="timeline", epochs=1, learning_rate=1e-3, batch_size=8, resume=False)
    fit = train_timeline(copy.deepcopy(model), hf, sid, windows, [], builder, cfg, horizon=7)
    assert fit["kept_val_recall@10"] is None and fit["best_val_recall@10"] is None and fit["kept_epoch"] == 1
    json.dumps(fit, allow_nan=False)
