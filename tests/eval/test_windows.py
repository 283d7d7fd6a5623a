"""`eval.history_windows`: the policy asked from older windows of a user's history, its item
probabilities summed over them, for users away from the cut; the setting follows the cut unit, and
predict ranks with it."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from negrec.eval.windows import mix_rankings, older_window_rows
from tests._tiny_run import CONFIG, tiny_overrides

DAY = 86_400


def _log():
    # user 1: 12 events a day apart, every third a dislike; user 2: 3 events
    rows = [(1, 100 + e, 1_000 + e * DAY, -1 if e % 3 == 0 else 1) for e in range(12)]
    rows += [(2, 200 + e, 5_000 + e, 1) for e in range(3)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "feedback"]).sample(frac=1, random_state=0)


def test_older_windows_are_the_events_before_the_prompts_own():
    log = _log()
    known = [i for i in log["item_id"] if i != 109]  # item 109 has no SID: no prompt shows it
    cut = 1_000 + 11 * DAY  # user 1's last event falls at the cut: not history
    # the samples keep the last 4 events before the cut (data.split.max_history), 109 among them, so
    # the row's prompt of 4 events shows 3 (107, 108, 110); the windows go on from the event before 107
    rows = [{"user_id": 1, "cut_ts": cut, "tag": "a", "mixed_items": [107, 108, 109, 110],
             "mixed_ts": [1_000 + e * DAY for e in (7, 8, 9, 10)]},
            {"user_id": 2, "cut_ts": 10**9, "tag": "b", "mixed_items": [200, 201, 202], "mixed_ts": [5_000, 5_001, 5_002]}]
    owners, older = older_window_rows(log, rows, known, window=4, n_windows=4)
    assert owners == [0, 0]  # user 1's 9 other known events fill two windows; user 2's 3 are all shown
    assert [list(r["mixed_items"]) for r in older] == [[103, 104, 105, 106], [100, 101, 102]]
    assert all(r["tag"] == "a" and r["cut_ts"] == cut for r in older)  # the row's other fields kept
    assert list(older[0]["mixed_ts"]) == [1_000 + e * DAY for e in (3, 4, 5, 6)]
    assert list(older[0]["mixed_feedback"]) == [-1, 1, 1, -1]
    # the negatives up to each window's end, as a row's neg_items end at its cut (prompt.older_negatives)
    assert [list(r["neg_items"]) for r in older] == [[100, 103, 106], [100]]
    assert older_window_rows(log, rows, known, window=4, n_windows=1) == ([], [])  # one window: the prompt alone
    assert older_window_rows(log, rows, known, window=4, n_windows=2)[0] == [0]


def test_older_windows_only_for_users_away_from_the_cut():
    log = _log()
    cut = 1_000 + 11 * DAY  # user 1's latest event (day 10) lies one day before the cut
    rows = [{"user_id": 1, "cut_ts": cut - DAY + 60, "mixed_items": [107, 108, 109, 110],
             "mixed_ts": [1_000 + e * DAY for e in (7, 8, 9, 10)]},  # a minute after its latest event
            {"user_id": 1, "cut_ts": cut, "mixed_items": [107, 108, 109, 110],
             "mixed_ts": [1_000 + e * DAY for e in (7, 8, 9, 10)]}]
    known = log["item_id"].tolist()
    assert older_window_rows(log, rows, known, window=4, n_windows=3, min_gap=DAY)[0] == [1, 1]  # away a day
    assert older_window_rows(log, rows, known, window=4, n_windows=3, min_gap=DAY + 1) == ([], [])
    assert older_window_rows(log, rows, known, window=4, n_windows=3, min_gap=60)[0] == [0, 0, 1, 1]


def test_mixed_rankings_sum_each_items_probability_over_the_windows():
    lg = math.log
    ranked = [[(7, lg(0.5)), (8, lg(0.3))],  # row 0's own prompt
              [(9, lg(0.6))],                # row 1's own prompt
              [(8, lg(0.3)), (9, lg(0.1))]]  # row 0's older window
    mixed = mix_rankings(ranked, [0, 1, 0], n_rows=2, k=2)
    assert [i for i, _ in mixed[0]] == [8, 7]  # 0.6 over 0.5: an item both windows name rises
    assert mixed[0][0][1] == pytest.approx(lg(0.6)) and mixed[1] == [(9, pytest.approx(lg(0.6)))]
    assert [i for i, _ in mix_rankings(ranked, [0, 1, 0], 2, k=3)[0]] == [8, 7, 9]


def test_history_windows_follow_the_cut_unit_and_a_set_value_wins():
    from negrec.config import ConfigError, check_config, load_config
    from negrec.eval.run import EvalConfig, eval_config
    from negrec.eval.windows import DAY_CUT_WINDOWS

    assert eval_config(load_config(str(CONFIG), ["data.split.cut_unit=day"])).history_windows == DAY_CUT_WINDOWS
    assert eval_config(load_config(str(CONFIG), ["data.split.cut_unit=event"])).history_windows == 1
    assert eval_config(load_config(str(CONFIG), ["data.split.cut_unit=day", "eval.history_windows=2"])).history_windows == 2
    verbose = load_config(str(CONFIG), ["data.split.cut_unit=day", "prompt.format=verbose"])
    assert eval_config(verbose).history_windows == 1  # a verbose prompt has no windows
    with pytest.raises(ConfigError, match="eval.history_windows: 3 asks the policy from windows of a compact"):
        check_config(load_config(str(CONFIG), ["prompt.format=verbose", "eval.history_windows=3"]))
    with pytest.raises(ValueError, match="history_windows must be at least 1"):
        EvalConfig(history_windows=0)
    with pytest.raises(ValueError, match="history_windows_gap_days must not be negative"):
        EvalConfig(history_windows_gap_days=-1.0)


def test_predict_ranks_from_the_windows_and_one_window_ranks_as_before(policy_run, tmp_path):
    from negrec.config import load_config
    from negrec.data import Prepared
    from negrec.eval.run import run_predict
    from negrec.llm.prompts import PromptConfig

    def ranked(n_windows: int, gap_days: float = 0.0) -> pd.DataFrame:
        run = tmp_path / f"w{n_windows}_{gap_days}"
        shutil.copytree(policy_run, run)
        raw = load_config(str(CONFIG), [*tiny_overrides(), "eval.policies=[sft_next]", "eval.max_users=20",
                                        "eval.batch_size=4", f"eval.history_windows={n_windows}",
                                        f"eval.history_windows_gap_days={gap_days}"])
        run_predict(raw, run)
        out = pd.read_parquet(run / "eval" / "predictions" / "sft_next.parquet")
        return out.sort_values(["user_id", "cut_ts", "rank"]).reset_index(drop=True)

    one, three = ranked(1), ranked(3)
    assert one[["user_id", "cut_ts", "rank"]].equals(three[["user_id", "cut_ts", "rank"]])
    assert ranked(3, gap_days=10**6).equals(one)  # no user away that long: every list from its prompt alone
    prepared = Prepared.load(policy_run / "data")
    samples = prepared.samples["test"].set_index(["user_id", "cut_ts"])
    for (u, c), lst in three.groupby(["user_id", "cut_ts"]):  # no window returns the user's own context
        assert not set(lst["item_id"]) & set(samples.loc[(u, c), "context_items"])
    log = prepared.interactions
    same = (one["item_id"] == three["item_id"]).groupby([one["user_id"], one["cut_ts"]]).all()
    history = np.array([((log["user_id"] == u) & (log["ts"] < c)).sum() for u, c in same.index])
    shown = PromptConfig().max_events
    long, short = same.to_numpy()[history > shown], same.to_numpy()[history <= shown]
    assert len(long) and len(short)  # both kinds of user among the 20
    assert short.all()  # a history the prompt shows whole has no older window: the list of one window
    assert not long.all()  # older windows move the lists of longer histories
    # under the shipped gap of a day, a user seen within the day of the cut ranks from the prompt alone
    gated = ranked(3, gap_days=1.0)
    days_away = np.array([(c - np.max(samples.loc[(u, c), "mixed_ts"])) / DAY for u, c in same.index])
    near = pd.MultiIndex.from_tuples(list(same.index[days_away < 1]), names=["user_id", "cut_ts"])
    assert ((days_away < 1) & ~same.to_numpy()).any()  # among them, users whose lists three windows move
    pick = lambda df: df.set_index(["user_id", "cut_ts"]).loc[near].reset_index()
    assert pick(gated).equals(pick(one))
