"""Per-user cuts and future-negative targets, checked against an independent plain-pandas count."""
import io
import math
from contextlib import redirect_stdout
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from negrec.cli import main as cli_main
from negrec.data import DataConfig, SplitConfig, data_stats, prepare_data

DAY = 86400


def independent_test_targets(u_data, horizon=7, min_context=5, test_frac=0.8, neg_max=2):
    """A deliberately naive per-user loop over the raw file (no negrec code)."""
    df = pd.read_csv(u_data, sep="\t", names=["user", "item", "rating", "ts"])
    out = {}
    for user, g in df.groupby("user"):
        g = g.sort_values("ts", kind="stable")
        days = sorted(set(g["ts"] // DAY))
        cands = [d * DAY for d in days[1:]]
        if not cands:
            continue
        chosen = next((c for c in cands if (g["ts"] < c).sum() >= test_frac * len(g)), cands[-1])
        if (g["ts"] < chosen).sum() < min_context:
            continue
        context = set(g.loc[g["ts"] < chosen, "item"])
        window = g[(g["ts"] >= chosen) & (g["ts"] < chosen + horizon * DAY) & (g["rating"] <= neg_max)]
        out[user] = set(window["item"]) - context
    return out


def test_ml100k_test_users_and_mean_future_negatives(ml100k_dir, tmp_path):
    expected = independent_test_targets(ml100k_dir / "u.data")
    n_users = len(expected)
    nonempty = [len(v) for v in expected.values() if v]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["data", "stats", "--set", "data.format=movielens", "--set", f"data.path={ml100k_dir}",
                       "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    printed = buf.getvalue()
    stats = pd.read_json(tmp_path / "run" / "data" / "stats.json", typ="series")
    assert stats["test_users"] == n_users
    assert stats["test_users_nonempty_F7"] == len(nonempty)
    assert stats["test_mean_F7"] == pytest.approx(np.mean(nonempty), abs=1e-3)
    assert f"test   samples {n_users:,}" in printed
    assert f"H=7: {len(nonempty):,} (mean |F_H| {round(float(np.mean(nonempty)), 3)})" in printed
    # the mean over every test user, empty targets included, is printed too
    mean_all = float(np.mean([len(v) for v in expected.values()]))
    assert stats["test_mean_F7_all"] == pytest.approx(mean_all, abs=1e-3)
    assert f"H=7: {round(mean_all, 3)}" in printed.split("over all test users")[1]
    assert "dropped rows     duplicates 0, of items without text 0 (0 items dropped), subsampling 0" in printed
    # and the per-user sets themselves agree
    test = pd.read_parquet(tmp_path / "run" / "data" / "samples_test.parquet")
    got = {int(u): set(map(int, f)) for u, f in zip(test["user_id"], test["future_neg_h7"])}
    assert got == {int(u): {int(i) for i in s} for u, s in expected.items()}


@pytest.mark.parametrize("prepared", ["ml100k_prepared", "ml100k_event"])
def test_samples_never_leak(prepared, request):
    p = request.getfixturevalue(prepared)
    log = p.interactions
    for split in ("train", "valid", "test"):
        s = p.samples[split]
        assert len(s) > 0
        for row in s.sample(min(len(s), 60), random_state=0).itertuples():
            ulog = log[log.user_id == row.user_id]
            before = ulog[ulog.ts < row.cut_ts]
            assert set(row.context_items) == set(before.item_id)
            assert all(t < row.cut_ts for t in row.neg_ts) and all(t < row.cut_ts for t in row.pos_ts)
            assert list(row.neg_items) == list(before[before.feedback == -1].item_id[-p.cfg.split.max_history:])
            for h in p.horizons:
                fut = set(getattr(row, f"future_neg_h{h}"))
                assert not fut & set(before.item_id)
                win = ulog[(ulog.ts >= row.cut_ts) & (ulog.ts < row.cut_ts + h * DAY) & (ulog.feedback == -1)]
                assert fut <= set(win.item_id)
    # validation targets stop at the test cut; training targets at the validation cut
    cuts = p.cuts.set_index("user_id")
    v = p.samples["valid"]
    for row in v.itertuples():
        ulog = log[(log.user_id == row.user_id) & (log.ts >= cuts.test_cut[row.user_id])]
        assert not set(row.future_neg_h7) & set(ulog[ulog.feedback == -1].item_id) - set(
            log[(log.user_id == row.user_id) & (log.ts < cuts.test_cut[row.user_id])].item_id)
    # anything fitted for a split sees only events before each user's cut for that split
    fit = p.fit_log("test").merge(cuts.reset_index()[["user_id", "test_cut"]], on="user_id")
    assert ((fit.test_cut < 0) | (fit.ts < fit.test_cut)).all()
    fit = p.fit_log("train").merge(cuts.reset_index()[["user_id", "valid_cut", "test_cut"]], on="user_id")
    first = np.where(fit.valid_cut >= 0, fit.valid_cut, fit.test_cut)
    assert ((first < 0) | (fit.ts < first)).all()
    assert len(p.fit_log("train")) < len(p.fit_log("test")) < len(log)


def test_next_negative_is_first_negative_after_cut(ml100k_prepared):
    p = ml100k_prepared
    s = p.samples["test"]
    log = p.interactions
    for row in s.head(50).itertuples():
        after = log[(log.user_id == row.user_id) & (log.ts >= row.cut_ts) & (log.feedback == -1)]
        assert row.next_neg == (after.item_id.iloc[0] if len(after) else -1)


def test_next_negative_stops_at_the_split_limit(ml100k_prepared):
    """Train and valid samples never take their next negative from the period a later split
    evaluates: it is the first negative after the cut if that lies before the limit, else -1."""
    p = ml100k_prepared
    log, cuts = p.interactions, p.cuts.set_index("user_id")
    neg = log[log.feedback == -1]
    first_after = {}
    for split, limit_col in (("valid", "test_cut"), ("train", "train_limit")):
        s = p.samples[split]
        taken_away = 0
        for row in s.itertuples():
            after = neg[(neg.user_id == row.user_id) & (neg.ts >= row.cut_ts)]
            limit = cuts.loc[row.user_id, limit_col]
            inside = after[after.ts < limit]
            assert row.next_neg == (inside.item_id.iloc[0] if len(inside) else -1)
            taken_away += len(inside) == 0 and len(after) > 0
        first_after[split] = taken_away
    assert first_after["valid"] > 0 and first_after["train"] > 0  # the bound matters on ML-100K


def test_next_negative_leak_toy():
    """One user, negatives on days 1, 5 and 9: the valid cut's next negative must not come from
    the test period even when nothing negative happens between the cuts."""
    from negrec.data.splits import SampleBuilder

    day = [0, 0, 0, 0, 0, 1, 4, 9, 9]
    fb = [1, 1, 1, 1, 1, -1, 0, -1, 1]
    log = pd.DataFrame({"user_id": np.int64(7), "item_id": np.arange(1, 10), "ts": np.array(day) * DAY + np.arange(9),
                        "feedback": np.array(fb, np.int8), "kind": pd.Categorical(["liked"] * 9)})
    b = SampleBuilder(log, [1, 3, 7], 50)
    valid = b.build(np.array([7]), np.array([4 * DAY]), "valid", limit_ts=np.array([9 * DAY])).to_arrow()
    test = b.build(np.array([7]), np.array([9 * DAY]), "test").to_arrow()
    assert valid.column("next_neg").to_pylist() == [-1]  # the negative on day 9 belongs to the test period
    assert valid.column("future_neg_h7").to_pylist() == [[]]
    assert test.column("next_neg").to_pylist() == [8]
    unbounded = b.build(np.array([7]), np.array([4 * DAY]), "valid").to_arrow()
    assert unbounded.column("next_neg").to_pylist() == [8]


def test_global_date_cut(ml100k_dir):
    cfg = DataConfig(format="movielens", path=str(ml100k_dir),
                     split=SplitConfig(global_test_date="1998-03-01", global_valid_date="1998-02-01"))
    p = prepare_data(cfg)
    test = p.samples["test"]
    assert (test.cut_ts == pd.Timestamp("1998-03-01", tz="UTC").value // 10**9).all()
    assert len(test) > 0
    valid_date = pd.Timestamp("1998-02-01", tz="UTC").value // 10**9
    assert (p.samples["train"].cut_ts < valid_date).all()
    assert (p.fit_log("train").ts < valid_date).all()
    for f in p.samples["train"].future_neg_h7:  # training targets stop at the global valid date too
        assert set(f) <= set(p.interactions[p.interactions.ts < valid_date].item_id)


def test_global_test_date_alone_keeps_validation_futures_unseen():
    """A global test date without a global valid date: each user's own valid cut bounds what models
    fitted for validation see (train_limit), so the validation rows' futures are not trained on."""
    from negrec.data.splits import compute_cuts

    test_day = 20 * DAY
    log = _toy_log([(u, 100 * u + k, DAY * (k + 1) + u, -1 if k % 3 == 0 else 1) for u in (1, 2) for k in range(25)])
    cuts = compute_cuts(log, SplitConfig(global_test_date="1970-01-21", min_context=3)).set_index("user_id")
    assert (cuts.test_cut == test_day).all() and (cuts.test_limit == test_day).all()
    assert ((cuts.valid_cut > 0) & (cuts.valid_cut < test_day)).all()
    assert (cuts.train_limit == cuts.valid_cut).all()


def test_kuairand_horizons_grow(kuairand_prepared):
    st = data_stats(kuairand_prepared)
    assert st["test_users_nonempty_F1"] <= st["test_users_nonempty_F3"] <= st["test_users_nonempty_F7"]
    assert st["test_users_nonempty_F1"] < st["test_users_nonempty_F7"]  # a 14-day log: H matters


def test_stats_print_rows_dropped_per_reason(tmp_path):
    from negrec.data import format_stats
    from negrec.data.loaders import ML_GENRES

    u_data = "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{881250949 + DAY * (i % 9) + u}\n" for u in range(1, 7) for i in range(1, 13))
    u_data += "1\t1\t2\t881250950\n" * 2  # one row twice: one duplicate
    (tmp_path / "u.data").write_text(u_data)
    flags = "|".join(["0"] * len(ML_GENRES))
    (tmp_path / "u.item").write_text("".join(f"{i}|Movie {i}|01-Jan-1995||http://x|{flags}\n" for i in range(1, 13)),
                                     encoding="latin-1")
    p = prepare_data(DataConfig(format="movielens", path=str(tmp_path), max_users=4))
    st = data_stats(p)
    assert st["test_users_by_unit"] == {"day": 4, "event": 4}  # counted under written day cuts
    kept = set(p.interactions.user_id)
    per_user = pd.read_csv(tmp_path / "u.data", sep="\t", header=None).drop_duplicates().groupby(0).size()
    dropped = int(per_user[~per_user.index.isin(kept)].sum())
    assert len(kept) == 4 and st["duplicates_dropped"] == 1 and st["rows_dropped_subsampling"] == dropped > 0
    assert st["rows_read"] == len(p.interactions) + 1 + dropped
    assert f"duplicates 1, of items without text 0 (0 items dropped), subsampling {dropped}" in format_stats(st, p.horizons)
    no_rows = format_stats({**st, f"train_users_nonempty_F{max(p.horizons)}": 0}, p.horizons)
    assert "warning          no train sample with a dislike" in no_rows and "min_context" in no_rows
    assert "no validation sample" not in no_rows
    no_valid = format_stats({**st, "valid_samples": 0, "cut_unit": "day"}, p.horizons)
    assert "warning          no validation sample" in no_valid and "data.split.cut_unit: event" in no_valid
    assert "cut_unit: event" not in format_stats({**st, "valid_samples": 0, "cut_unit": "event"}, p.horizons)
    # written day cuts that drop most of the users event cuts would give: said, with the setting
    assert "event cuts would give" not in format_stats(st, p.horizons)  # this log's users span nine days
    bursty = format_stats({**st, "test_users_by_unit": {"day": 338, "event": 943}}, p.horizons)
    assert "warning          day cuts give 338 users a test cut, event cuts would give 943" in bursty
    assert "data.split.cut_unit: event (or auto" in bursty
    main = st["main_horizon"]
    assert "no test sample has a dislike" not in format_stats(st, p.horizons)
    no_test = format_stats({**st, f"test_users_nonempty_F{main}": 0}, p.horizons)
    assert f"warning          no test sample has a dislike in the {main} days" in no_test
    assert "data.main_horizon" in no_test


# ---------------------------------------------------------------- event cuts (cut_unit: event)
TEST_FRAC, VALID_FRAC = Fraction(4, 5), Fraction(3, 5)


@pytest.fixture(scope="module")
def ml100k_event(ml100k_dir, tmp_path_factory):
    cfg = DataConfig(format="movielens", path=str(ml100k_dir),
                     split=SplitConfig(cut_unit="event", train_event_stride=10))
    return prepare_data(cfg, tmp_path_factory.mktemp("ml100k_event") / "data")


def _nth_event_ts(df, frac, n_of):
    """Per user, the ts of the event at 0-based position ceil(frac * n) (n from n_of); users without one left out."""
    pos = n_of.map(lambda n: math.ceil(frac * n))
    at = df[df["pos"] == df["user"].map(pos)]
    return at.set_index("user")["ts"]


def _before(df, cut):
    """Per user, the number of events strictly before the user's cut."""
    return (df["ts"] < df["user"].map(cut)).groupby(df["user"]).sum().reindex(cut.index)


def independent_event_cuts(u_data, min_context=5):
    """Test and valid event cuts from the raw file with plain pandas group-bys (no negrec code).
    The tie order within a second does not matter: every tied event has the cut's timestamp."""
    df = pd.read_csv(u_data, sep="\t", names=["user", "item", "rating", "ts"]).sort_values(["user", "ts"], kind="stable")
    df["pos"] = df.groupby("user").cumcount()
    test = _nth_event_ts(df, TEST_FRAC, df.groupby("user").size())
    before_test = _before(df, test)
    test = test[before_test >= min_context]
    valid = _nth_event_ts(df[df["ts"] < df["user"].map(test)], VALID_FRAC, before_test[test.index])
    valid = valid[_before(df, valid) >= min_context]
    return df, test, valid


def independent_future_negatives(df, cut, horizon=7, neg_max=2):
    """(user -> F_H) for each user's cut: negatives in [cut, cut + H days) minus the context."""
    m = df.assign(cut=df["user"].map(cut)).dropna(subset=["cut"])
    context = m[m["ts"] < m["cut"]][["user", "item"]].drop_duplicates()
    window = m[(m["ts"] >= m["cut"]) & (m["ts"] < m["cut"] + horizon * DAY) & (m["rating"] <= neg_max)]
    window = window[["user", "item"]].drop_duplicates().merge(context, how="left", indicator=True)
    fut = window[window["_merge"] == "left_only"].groupby("user")["item"].agg(set)
    return {int(u): fut.get(u, set()) for u in cut.index}


def test_ml100k_event_cuts_give_most_users_a_target(ml100k_event, ml100k_dir):
    df, test, valid = independent_event_cuts(ml100k_dir / "u.data")
    expected = independent_future_negatives(df, test)
    p = ml100k_event
    cuts = p.cuts.set_index("user_id")
    assert cuts.loc[cuts.test_cut >= 0, "test_cut"].to_dict() == test.astype("int64").to_dict()
    assert cuts.loc[cuts.valid_cut >= 0, "valid_cut"].to_dict() == valid.astype("int64").to_dict()
    st = data_stats(p)
    n_nonempty = sum(bool(v) for v in expected.values())
    assert st["test_users"] == len(test) and st["test_samples"] == len(test)
    assert st["test_users_nonempty_F7"] == n_nonempty >= 600  # day cuts give 217 of 338 test users
    s = p.samples["test"]
    got = {int(u): set(map(int, f)) for u, f in zip(s.user_id, s.future_neg_h7)}
    assert got == {u: {int(i) for i in v} for u, v in expected.items()}


def test_event_cuts_never_leak(ml100k_event):
    p = ml100k_event
    cuts = p.cuts
    assert (cuts.test_cut >= 0).sum() > 900
    fit = p.fit_log("test").merge(cuts[["user_id", "test_cut"]], on="user_id")
    assert ((fit.test_cut < 0) | (fit.ts < fit.test_cut)).all()
    fit = p.fit_log("train").merge(cuts[["user_id", "valid_cut", "test_cut"]], on="user_id")
    first = np.where(fit.valid_cut >= 0, fit.valid_cut, fit.test_cut)
    assert ((first < 0) | (fit.ts < first)).all()
    # training targets end at the user's train limit: each F_7 item (and the next negative) is
    # negated in [cut, min(cut + 7 days, limit))
    train = p.samples["train"].merge(cuts[["user_id", "train_limit"]], on="user_id").reset_index(names="row")
    assert len(train) > 1000 and (train.cut_ts < train.train_limit).all()
    neg = p.interactions[p.interactions.feedback == -1][["user_id", "item_id", "ts"]]
    for col, end in (("future_neg_h7", train.cut_ts + 7 * DAY), ("next_neg", train.train_limit)):
        pairs = train.assign(end=np.minimum(end, train.train_limit))[["row", "user_id", "cut_ts", "end", col]]
        pairs = pairs.explode(col).dropna().rename(columns={col: "item_id"}).astype({"item_id": "int64"})
        pairs = pairs[pairs.item_id >= 0]
        m = pairs.merge(neg, on=["user_id", "item_id"])
        inside = m[(m.ts >= m.cut_ts) & (m.ts < m.end)]
        assert len(pairs) > 1000
        assert set(zip(inside.row, inside.item_id)) == set(zip(pairs.row, pairs.item_id))


def _toy_log(events):
    """A canonical log from (user, item, ts, feedback) tuples, sorted by (user, ts)."""
    u, i, t, f = map(np.array, zip(*events))
    log = pd.DataFrame({"user_id": u.astype(np.int64), "item_id": i.astype(np.int64), "ts": t.astype(np.int64),
                        "feedback": f.astype(np.int8)})
    log = log.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    return log.assign(kind=pd.Categorical(np.where(log.feedback < 0, "hated", "liked")))


def test_event_cut_ties_go_to_the_future():
    """User 1: ten events, the last four at one second T. The event at position ceil(0.8 * 10) = 8
    sits at T, so the cut is T with 6 (not 8) context events, and all four tied events are future.
    Its valid cut is the event at ceil(0.6 * 6) = 4, tied with event 3: 3 context events.
    User 2: the tie run starts at event 2, leaving 2 < min_context events before the cut: no cut."""
    from negrec.data.prepare import Prepared
    from negrec.data.splits import SampleBuilder, compute_cuts

    T = 10 * DAY + 5000
    a = [(1, 10 + k, 10 * DAY + t, 1) for k, t in enumerate([100, 200, 300, 400, 400, 500])]
    a += [(1, 20, T, -1), (1, 10, T, -1), (1, 21, T, 1), (1, 22, T, -1)]  # item 10 is in the context
    b = [(2, 30 + k, 10 * DAY + t, -1) for k, t in enumerate([100, 200] + [900] * 8)]
    log = _toy_log(a + b)
    cfg = SplitConfig(cut_unit="event", min_context=3)
    cuts = compute_cuts(log, cfg).set_index("user_id")
    assert cuts.loc[1, "test_cut"] == T and cuts.loc[1, "valid_cut"] == 10 * DAY + 400
    assert cuts.loc[2, "test_cut"] == -1 and cuts.loc[2, "valid_cut"] == -1
    assert cuts.loc[1, "test_limit"] == T and cuts.loc[1, "train_limit"] == 10 * DAY + 400
    # day cuts: every event lies on one day, so neither user has a cut at all
    assert (compute_cuts(log, SplitConfig(min_context=3)).test_cut == -1).all()
    s = SampleBuilder(log, [1], 50).build(np.array([1]), np.array([T]), "test").to_arrow().to_pylist()[0]
    assert s["n_context"] == 6 and sorted(s["context_items"]) == [10, 11, 12, 13, 14, 15]
    assert sorted(s["future_neg_h1"]) == [20, 22] and s["next_neg"] in (20, 10)
    fit = Prepared(log, None, cuts.reset_index(), None, DataConfig(split=cfg)).fit_log("test")
    assert list(fit[fit.user_id == 1].ts) == list(log[(log.user_id == 1)].ts[:6])
    assert len(fit[fit.user_id == 2]) == 10  # users without a cut keep all their events


def test_event_cut_position_is_not_fooled_by_float_rounding():
    from negrec.data.splits import compute_cuts

    log = _toy_log([(1, k, 1000 + 10 * k, 1) for k in range(25)])
    cuts = compute_cuts(log, SplitConfig(cut_unit="event", test_frac=0.28, valid_frac=0.5, min_context=2))
    assert 0.28 * 25 > 7  # 7.000000000000001 in floating point: the position is still 7, not 8
    assert cuts.test_cut[0] == 1070
    assert cuts.valid_cut[0] == 1040  # ceil(0.5 * 7) = 4


def test_cut_unit_is_checked():
    from negrec.data.splits import compute_cuts

    with pytest.raises(ValueError, match="cut_unit.*'week'.*day\\|event\\|auto"):
        SplitConfig(cut_unit="week")
    with pytest.raises(ValueError, match="rolling_every"):
        SplitConfig(rolling_every=-1)
    cfg = SplitConfig()
    cfg.cut_unit = "hour"
    with pytest.raises(ValueError, match="cut_unit"):
        compute_cuts(_toy_log([(1, 1, 0, 1)]), cfg)


def test_auto_cut_unit_follows_how_users_spread_their_events():
    """Ten users with 20 events each. Spread over 20 days, every user has a day cut: auto keeps day.
    All on one day, no user has one (event cuts give all ten): auto takes event. Seven users in one
    burst and three spread: day cuts give 3 of the 10 event cuts give, under half: event. A written
    unit is kept, with no counts; a cut of `auto` not yet chosen is refused."""
    from negrec.data.splits import compute_cuts, resolve_cut_unit

    def log(bursty_users):
        return _toy_log([(u, k, (1 if u < bursty_users else DAY) * (k + 1) + 100, -1 if k % 3 == 0 else 1)
                         for u in range(10) for k in range(20)])

    auto = SplitConfig(cut_unit="auto")
    for bursty, unit, day_users in ((0, "day", 10), (10, "event", 0), (7, "event", 3), (5, "day", 5), (4, "day", 6)):
        cfg, chosen = resolve_cut_unit(log(bursty), auto)
        assert cfg.cut_unit == unit and chosen == {"chosen": unit, "counted": "test", "test_users_day": day_users,
                                                   "test_users_event": 10}
        assert auto.cut_unit == "auto"  # the config given is not changed
    assert resolve_cut_unit(log(10), SplitConfig(cut_unit="day")) == (SplitConfig(cut_unit="day"), {})
    # one global test cut for all: the units differ in the validation cuts, which are counted instead
    dated, chosen = resolve_cut_unit(log(10), SplitConfig(cut_unit="auto", global_test_date="1970-01-15"))
    assert dated.cut_unit == "event" and chosen["test_users_day"] == 0 < chosen["test_users_event"]
    assert chosen["counted"] == "validation" and resolve_cut_unit(log(10), auto)[1]["counted"] == "test"
    with pytest.raises(ValueError, match="auto is chosen from the log first"):
        compute_cuts(log(0), auto)


def test_rolling_test_cuts():
    """User 1: 40 events, one an hour, a negative every third. Test cut at event 32 (0.8 * 40); with
    rolling_every=3 extra cuts at events 35 and 38, each with its own context and F_H.
    User 2: the same but events 34..39 share one second: the cut at 38 would repeat the one at 35."""
    from negrec.data.prepare import Prepared, build_samples
    from negrec.data.splits import compute_cuts, cuts_for_test

    def user(uid, tied=()):
        ts = [3600 * k if k not in tied else 3600 * min(tied) for k in range(40)]
        # the last event repeats item 33: a target of the first cut, context of the later ones
        return [(uid, 33 if k == 39 else k, ts[k], -1 if k % 3 == 0 else 1) for k in range(40)]

    log = _toy_log(user(1) + user(2, tied=range(34, 40)))
    cfg = DataConfig(horizons=[1, 3], main_horizon=3, split=SplitConfig(cut_unit="event", rolling_every=3, max_history=50))
    cuts = compute_cuts(log, cfg.split)
    u, t = cuts_for_test(log, cuts, cfg.split)
    assert list(u) == [1, 1, 1, 2, 2] and list(t) == [3600 * k for k in (32, 35, 38, 32)] + [3600 * 34]
    samples = build_samples(log, cuts, cfg)
    test = samples["test"]
    assert list(zip(test.user_id, test.cut_ts)) == list(zip(u, t))
    for row in test.itertuples():
        ulog = log[log.user_id == row.user_id]
        before = ulog[ulog.ts < row.cut_ts]
        assert row.n_context == len(before)
        for h in (1, 3):
            win = ulog[(ulog.ts >= row.cut_ts) & (ulog.ts < row.cut_ts + h * DAY) & (ulog.feedback == -1)]
            assert set(getattr(row, f"future_neg_h{h}")) == set(win.item_id) - set(before.item_id)
    assert [sorted(f) for f in test.future_neg_h3[:3]] == [[33, 36], [36], []]  # each cut has its own
    # models are still fitted once per user, on events before the first test cut
    fit = Prepared(log, None, cuts, samples, cfg).fit_log("test")
    assert fit.groupby("user_id").ts.max().max() < 32 * 3600
    # at most rolling_max extra cuts per user
    cfg.split.rolling_max = 1
    assert list(cuts_for_test(log, cuts, cfg.split)[1]) == [3600 * k for k in (32, 35, 32, 34)]


def test_ml100k_rolling_rows_are_keyed_by_user_and_cut(ml100k_dir):
    cfg = DataConfig(format="movielens", path=str(ml100k_dir),
                     split=SplitConfig(cut_unit="event", rolling_every=20, rolling_max=3))
    p = prepare_data(cfg)
    test = p.samples["test"]
    assert test.duplicated(["user_id", "cut_ts"]).sum() == 0 and len(test) > test.user_id.nunique()
    assert test.groupby("user_id").size().max() == 4
    first = test.groupby("user_id").cut_ts.min()
    cuts = p.cuts.set_index("user_id")
    assert (first == cuts.loc[first.index, "test_cut"]).all()
    assert (test.groupby("user_id").cut_ts.diff().dropna() > 0).all()
    st = data_stats(p)
    assert st["test_samples"] == len(test) and st["test_users"] == test.user_id.nunique()


def test_unlogged_targets_share_and_ceiling():
    """F_H targets that the fitted log never shows (new items) are counted, and the Recall@10 cap of
    a method ranking only logged items follows from them, checked against a plain-Python count."""
    from negrec.data.prepare import Prepared, build_samples
    from negrec.data.splits import compute_cuts

    rng = np.random.default_rng(0)
    events = []
    for u in range(1, 9):
        for k in range(30):  # late events bring items 100+ that nobody met before
            item = int(rng.integers(100, 140)) if k >= 24 and rng.random() < 0.6 else int(rng.integers(0, 30))
            events.append((u, item, 1000 * k + u, -1 if rng.random() < 0.5 else 1))
    log = _toy_log(events)
    cfg = DataConfig(horizons=[1], main_horizon=1, split=SplitConfig(cut_unit="event", min_context=3))
    cuts = compute_cuts(log, cfg.split)
    p = Prepared(log, None, cuts, build_samples(log, cuts, cfg), cfg)
    share, ceiling = p.unlogged_targets("test", k=2)

    logged = set(p.fit_log("test").item_id)
    futures = [f for f in p.samples["test"]["future_neg_h1"] if len(f)]
    flat = [int(i) for f in futures for i in f]
    assert 0 < share < 1 and len(futures) > 3
    assert share == pytest.approx(sum(i not in logged for i in flat) / len(flat))
    assert ceiling == pytest.approx(np.mean([min(sum(int(i) in logged for i in f), 2) / min(len(f), 2) for f in futures]))


def test_unlogged_targets_warn_when_most_are_new():
    from negrec.data.prepare import _describe_unlogged

    stats = {"main_horizon": 7, "valid_targets_unlogged_share": 0.2, "test_logged_recall@10_ceiling": 0.7}
    assert "capped" not in _describe_unlogged({**stats, "test_targets_unlogged_share": 0.3})
    line = _describe_unlogged({**stats, "test_targets_unlogged_share": 0.94})
    assert "valid 20%, test 94%" in line and "at most 0.700" in line and "capped for every method" in line
