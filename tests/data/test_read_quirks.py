"""Logs that are valid but written unusually are read as meant (found by an audit of odd inputs):
rule columns with blank cells, literal multi-character separators, a file name with brackets, ISO
dates in mixed forms, flags written 0/1, UTF-8 MovieLens titles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from negrec.data.generic import GenericLogSpec, load_generic
from negrec.data.loaders import load_movielens_dat
from negrec.data.schema import NEGATIVE, POSITIVE, DataError

DAY = 86_400
TS24 = 1_704_067_200  # 2024-01-01
COLS = {"user_id": "uid", "item_id": "iid", "ts": "when", "rating": "stars"}


def _rows(n_users=4, n_items=6):
    return [(u, 10 + i, TS24 + DAY * i + u, 1 + (u + i) % 5) for u in range(1, n_users + 1) for i in range(n_items)]


def _csv(path, header, lines, sep=","):
    path.write_text(sep.join(header) + "\n" + "\n".join(sep.join(str(x) for x in r) for r in lines) + "\n")
    return path


def _spec(path, **over):
    return GenericLogSpec(**{"path": str(path), "columns": dict(COLS), "ts_unit": "s", **over})


def test_a_blank_cell_leaves_a_flag_column_numeric(tmp_path):
    """One empty `is_hate` cell used to keep the whole column text, so `is_hate == 1` matched nothing."""
    rows = [(*r, int(r[3] == 3) if k != 4 else "") for k, r in enumerate(_rows())]
    path = _csv(tmp_path / "log.csv", ["uid", "iid", "when", "stars", "is_hate"], rows)
    out, _ = load_generic(_spec(path, negative_if="is_hate == 1", positive_if="rating >= 4",
                                columns={**COLS, "is_hate": "is_hate"}))
    want = sum(1 for k, r in enumerate(rows) if r[4] == 1)
    assert want > 0 and int((out["feedback"] == NEGATIVE).sum()) == want


def test_a_bare_flag_rule_reads_0_1_and_refuses_other_values(tmp_path):
    frame = pd.DataFrame(_rows(), columns=["uid", "iid", "when", "stars"])
    frame["hate"] = (frame["stars"] == 1).astype(float)
    frame.loc[3, "hate"] = np.nan  # a missing flag is no dislike
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    out, _ = load_generic(_spec(tmp_path / "log.parquet", negative_if="hate", columns={**COLS, "hate": "hate"}))
    assert int((out["feedback"] == NEGATIVE).sum()) == int((frame["hate"] == 1).sum())
    with pytest.raises(DataError, match=r"does not give true/false per row: data row 1 gives"):
        load_generic(_spec(tmp_path / "log.parquet", negative_if="rating"))  # a rating is not a rule


def test_a_multi_character_separator_is_literal(tmp_path):
    path = _csv(tmp_path / "log.txt", ["uid", "iid", "when", "stars"], _rows(), sep="||")
    out, _ = load_generic(_spec(path, sep="||"))
    assert len(out) == len(_rows()) and int((out["feedback"] == POSITIVE).sum()) > 0


def test_a_file_named_with_brackets_is_that_file(tmp_path):
    path = _csv(tmp_path / "log[2024].csv", ["uid", "iid", "when", "stars"], _rows())
    out, _ = load_generic(_spec(path))
    assert len(out) == len(_rows())


def test_iso_dates_in_mixed_forms(tmp_path):
    rows = [(u, i, pd.Timestamp(ts, unit="s").strftime("%Y-%m-%d" if k % 2 else "%Y-%m-%d %H:%M:%S"), s)
            for k, (u, i, ts, s) in enumerate(_rows())]
    path = _csv(tmp_path / "log.csv", ["uid", "iid", "when", "stars"], rows)
    out, _ = load_generic(_spec(path, ts_unit="auto"))
    days = np.asarray(out["ts"]) // DAY
    assert np.array_equal(days, np.asarray([ts for _, _, ts, _ in _rows()]) // DAY)
    rows[3] = (*rows[3][:2], TS24, rows[3][3])  # an epoch number among the dates: refused, and why
    _csv(path, ["uid", "iid", "when", "stars"], rows)
    with pytest.raises(DataError, match=r"line 5: field 'when'.*cannot parse timestamp '1704067200' \(a number among dates"):
        load_generic(_spec(path, ts_unit="auto"))


def test_utf8_movielens_titles_are_not_mojibake(tmp_path):
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{1 + (u + i) % 5}::{TS24 + i * DAY + u}\n"
                                                  for u in range(1, 4) for i in range(1, 4)))
    (tmp_path / "movies.dat").write_bytes("1::GoldenEye café (1995)::Action\n2::B (1995)::Drama\n3::C (1995)::Comedy\n"
                                          .encode("utf-8"))
    _, items = load_movielens_dat(tmp_path)
    assert "GoldenEye café (1995)" in set(items["title"])
    (tmp_path / "movies.dat").write_bytes("1::Café (1995)::Action\n2::B (1995)::Drama\n3::C (1995)::Comedy\n"
                                          .encode("latin-1"))  # ml-1m's own encoding still works
    _, items = load_movielens_dat(tmp_path)
    assert "Café (1995)" in set(items["title"])


def test_the_items_table_may_have_its_own_separator(tmp_path):
    path = _csv(tmp_path / "log.csv", ["uid", "iid", "when", "stars"], _rows(), sep=";")
    items = _csv(tmp_path / "items.csv", ["iid", "title"], [(10 + i, str(1984 + i)) for i in range(6)])
    spec = _spec(path, sep=";", items_path=str(items), item_columns={"item_id": "iid", "title": "title"})
    with pytest.raises(DataError, match="wrong separator"):
        load_generic(spec)
    spec.items_sep = ","
    _, got = load_generic(spec)
    assert set(got["title"]) == {str(1984 + i) for i in range(6)}  # titles that are numbers stay text


def test_day_month_dates_read_with_ts_format_and_warned_without(tmp_path, capsys):
    """dd/mm/yyyy dates whose days are all <= 12 read as mm/dd unless `ts_format` says otherwise;
    without it the loader says the dates are ambiguous."""
    days = pd.date_range("2024-01-01", periods=12, freq="D")  # 01/01 .. 12/01: every day <= 12
    rows = [(u, 10 + i, d.strftime("%d/%m/%Y 10:00"), 1 + (u + i) % 5) for u in range(1, 4) for i, d in enumerate(days)]
    path = _csv(tmp_path / "log.csv", ["uid", "iid", "when", "stars"], rows)
    out, _ = load_generic(_spec(path, ts_unit="datetime", ts_format="%d/%m/%Y %H:%M"))
    want = [int(pd.Timestamp(f"{d.date()} 10:00", tz="UTC").timestamp()) for d in days]
    assert sorted(set(out["ts"].tolist())) == want
    capsys.readouterr()
    guessed, _ = load_generic(_spec(path, ts_unit="datetime"))
    assert sorted(set(guessed["ts"].tolist())) != want  # read as month/day: the silent misread the warning names
    assert "read both as month/day and day/month" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"cannot parse timestamp .* with data.generic.ts_format '%Y-%m-%d'"):
        load_generic(_spec(path, ts_unit="datetime", ts_format="%Y-%m-%d"))
    later = rows + [(9, 10, "25/01/2024 10:00", 1)]  # a day above 12 after month/day was inferred
    path = _csv(tmp_path / "log2.csv", ["uid", "iid", "when", "stars"], later)
    with pytest.raises(DataError, match=r"'25/01/2024 10:00' \(day/month\? set data.generic.ts_format"):
        load_generic(_spec(path, ts_unit="datetime"))


def test_trailing_separators_in_the_header_are_unnamed_columns(tmp_path):
    """A spreadsheet export's trailing separators give empty header names: not a name repeated."""
    path = tmp_path / "log.csv"
    path.write_text("uid,iid,when,stars,,\n" + "\n".join(",".join(map(str, r)) + ",," for r in _rows()) + "\n")
    out, _ = load_generic(_spec(path))
    assert len(out) == len(_rows())


def test_spaces_after_the_separators_are_not_part_of_the_names(tmp_path):
    """A hand-written "uid, iid, when, stars" header names the columns the config maps."""
    path = tmp_path / "log.csv"
    path.write_text("uid, iid, when, stars\n" + "\n".join(", ".join(map(str, r)) for r in _rows()) + "\n")
    out, _ = load_generic(_spec(path))
    plain, _ = load_generic(_spec(_csv(tmp_path / "plain.csv", ["uid", "iid", "when", "stars"], _rows())))
    assert len(out) == len(_rows()) and out["feedback"].tolist() == plain["feedback"].tolist()
    path.write_text("uid, iid, when, uid\n1, 10, 1704067200, 1\n")
    with pytest.raises(DataError, match="named twice"):
        load_generic(_spec(path))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_microsecond_timestamps_read_as_microseconds(tmp_path, fmt):
    rows = [(u, i, (t - TS24 % DAY) * 1_000_000 + 123, r) for u, i, t, r in _rows()]
    frame = pd.DataFrame(rows, columns=["uid", "iid", "when", "stars"])
    path = tmp_path / f"log.{fmt}"
    frame.to_parquet(path, index=False) if fmt == "parquet" else frame.to_csv(path, index=False)
    for unit in ("auto", "us"):
        out, _ = load_generic(_spec(path, ts_unit=unit))
        assert sorted(out["ts"].tolist()) == sorted(t - TS24 % DAY for _, _, t, _ in _rows())


def test_kuairand_flags_are_read_through_spaces_in_their_names(tmp_path):
    """A raw KuaiRand header written `user_id, video_id, ..., is_like` (spaces after the commas):
    the flag is `is_like`, its likes positive, not neutral exposures."""
    from negrec.data.loaders import load_kuairand

    rows = [f"{u}, {100 + i}, {(TS24 + DAY * i + u) * 1000}, 5000, 20000, {int(i == 3)}, {int(i % 2)}"
            for u in range(1, 4) for i in range(8)]
    (tmp_path / "kr").mkdir()
    (tmp_path / "kr" / "log_standard_a.csv").write_text(
        "user_id,video_id,time_ms,play_time_ms,duration_ms, is_hate, is_like\n" + "\n".join(rows) + "\n")
    out, _ = load_kuairand(tmp_path / "kr")
    assert int((out["feedback"] == NEGATIVE).sum()) == 3
    assert int((out["feedback"] == POSITIVE).sum()) == sum(1 for i in range(8) if i % 2 and i != 3) * 3


def test_a_kuairand_folder_of_gzipped_logs_is_read(tmp_path):
    import gzip

    from negrec.data.loaders import load_kuairand

    rows = [f"{u},{100 + i},{(TS24 + DAY * i + u) * 1000},5000,20000,{int(i == 3)}" for u in range(1, 4) for i in range(8)]
    (tmp_path / "kr").mkdir()
    text = "user_id,video_id,time_ms,play_time_ms,duration_ms,is_hate\n" + "\n".join(rows) + "\n"
    (tmp_path / "kr" / "log_standard_a.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "kr" / "log_random_b.csv").write_text(text)
    out, _ = load_kuairand(tmp_path / "kr")
    assert len(out) == 2 * len(rows) and int((out["feedback"] == NEGATIVE).sum()) == 6


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_blank_ratings_are_counted_and_located_in_the_stats(tmp_path, fmt):
    """A blank rating matches neither rule: the row stays, and the stats say how many and where."""
    from negrec.data import DataConfig, SplitConfig, data_stats, format_stats, prepare_data
    from negrec.data.generic import GenericLogSpec as Spec

    rows = [(u, 10 + i, TS24 + DAY * i + u, 1 + (u + i) % 5) for u in range(1, 9) for i in range(12)]
    blank = {5, 17, 40}
    frame = pd.DataFrame([(*r[:3], np.nan if k in blank else r[3]) for k, r in enumerate(rows)],
                         columns=["uid", "iid", "when", "stars"])
    path = tmp_path / f"log.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    spec = Spec(path=str(path), columns=dict(COLS), ts_unit="s")
    p = prepare_data(DataConfig(format="generic", generic=spec, split=SplitConfig(cut_unit="event")))
    st = data_stats(p)
    where = f"line {min(blank) + 2}" if fmt == "csv" else f"row {min(blank) + 1}"
    assert st["blank_values"] == {"'stars' (rating)": {"cells": 3, "first": f"{path}: {where}"}}
    assert len(p.interactions) == len(rows)
    assert "blank cells      'stars' (rating): 3 (the first at" in format_stats(st, p.horizons)
