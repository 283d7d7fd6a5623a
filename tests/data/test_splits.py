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
