"""Per-user cuts and future-negative targets, checked against an independent plain-pandas count."""
import io
from contextlib import redirect_stdout

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


def test_samples_never_leak(ml100k_prepared):
    p = ml100k_prepared
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
    kept = set(p.interactions.user_id)
    per_user = pd.read_csv(tmp_path / "u.data", sep="\t", header=None).drop_duplicates().groupby(0).size()
    dropped = int(per_user[~per_user.index.isin(kept)].sum())
    assert len(kept) == 4 and st["duplicates_dropped"] == 1 and st["rows_dropped_subsampling"] == dropped > 0
    assert st["rows_read"] == len(p.interactions) + 1 + dropped
    assert f"duplicates 1, of items without text 0 (0 items dropped), subsampling {dropped}" in format_stats(st, p.horizons)
