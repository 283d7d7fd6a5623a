"""Broken input through the CLI: every case ends with exit code 2 and exactly one stderr line that
names the file, the line (or Parquet row), the field and the rule, never a traceback and never
wrong numbers; benign quirks (CRLF, BOM, blank lines, exact duplicates) are accepted and counted.

Each case: (id, make(tmp_path) -> (argv, env), what the one line must contain). The data cases run
`negrec data prepare` on a small log that is valid but for one planted fault."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from negrec.cli import main
from negrec.data.loaders import ML_GENRES

DAY = 86_400
T0 = 881_250_949  # 1997-12-04, inside ML-100K's own span
TS24 = 1_704_067_200  # 2024-01-01
FLAGS = "|".join(["0"] * len(ML_GENRES))


def _write(path, text, encoding="utf-8", newline=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)
    return path


def _config(tmp, data: dict, **sections) -> str:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({"data": data, **sections}))
    return str(path)


def _data_argv(tmp, data: dict, *extra) -> list[str]:
    return ["data", "prepare", "--config", _config(tmp, data), "--run-dir", str(tmp / "run"), *extra]


# ---------------------------------------------------------------- small valid logs, one fault planted
def _ml_rows(users=6, items=12, rating=lambda u, i: 1 + (u * i) % 5):
    return [f"{u}\t{i}\t{rating(u, i)}\t{T0 + DAY * (i % 9) + u}" for u in range(1, users + 1) for i in range(1, items + 1)]


def _ml100k(tmp, rows, bad: str | None = None, at: int = 3, newline="\n", items=12):
    """u.data with `bad` as line `at` (1-based) among valid rows; returns the data section."""
    rows = list(rows)
    if bad is not None:
        rows.insert(at - 1, bad)
    _write(tmp / "ml" / "u.data", newline.join(rows) + newline, newline="")
    _write(tmp / "ml" / "u.item", "".join(f"{i}|Movie {i}|01-Jan-1995||http://x|{FLAGS}\n" for i in range(1, items + 1)),
           "latin-1")
    return {"format": "movielens", "path": str(tmp / "ml"), "split": {"cut_unit": "event"}}


KUAI_HEADER = "user_id\tvideo_id\ttime_ms\tplay_time_ms\tduration_ms\tlabel"


def _kuai(tmp, bad: str | None = None, at: int = 3):
    rows = [f"{u}\t{100 + i}\t{(TS24 + DAY * (i % 9) + u) * 1000}\t5000\t20000\t{(u + i) % 2}"
            for u in range(1, 7) for i in range(12)]
    if bad is not None:
        rows.insert(at - 2, bad)
    _write(tmp / "kr" / "k.tsv", KUAI_HEADER + "\n" + "\n".join(rows) + "\n")
    return {"format": "kuairand", "path": str(tmp / "kr"), "split": {"cut_unit": "event"}}


GEN_COLUMNS = {"user_id": "uid", "item_id": "iid", "ts": "when", "rating": "stars"}


def _gen_rows(n_users=6, n_items=12, when=lambda u, i: TS24 + DAY * (i % 9) + u):
    return [f"{u},{10 + i},{when(u, i)},{1 + (u + i) % 5}" for u in range(1, n_users + 1) for i in range(n_items)]


def _generic_csv(tmp, rows, bad: str | None = None, at: int = 3, ts_unit="s", **spec):
    rows = list(rows)
    if bad is not None:
        rows.insert(at - 2, bad)
    _write(tmp / "log.csv", "uid,iid,when,stars\n" + "\n".join(rows) + "\n")
    return {"format": "generic", "generic": {"path": str(tmp / "log.csv"), "columns": dict(GEN_COLUMNS),
                                             "ts_unit": ts_unit, **spec}, "split": {"cut_unit": "event"}}


def _gen_frame(**over):
    u = np.repeat(np.arange(1, 7), 12)
    i = np.tile(np.arange(12), 6)
    cols = {"uid": u.astype(np.int64), "iid": 10 + i, "when": TS24 + DAY * (i % 9) + u, "stars": (1 + (u + i) % 5) * 1.0}
    cols.update(over)
    return pd.DataFrame(cols)


def _generic_parquet(tmp, frame, hive: bool = False):
    if hive:  # two partitions: the fault sits in the second file
        half = len(frame) // 2
        for k, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
            (tmp / "log" / f"part={k}").mkdir(parents=True)
            part.to_parquet(tmp / "log" / f"part={k}" / "data.parquet", index=False)
        path = tmp / "log"
    else:
        path = tmp / "log.parquet"
        frame.to_parquet(path, index=False)
    return {"format": "generic", "generic": {"path": str(path), "columns": dict(GEN_COLUMNS), "ts_unit": "s"},
            "split": {"cut_unit": "event"}}


def _with(frame, col, row, value):
    frame = frame.copy()
    if not isinstance(value, (int, np.integer)) or frame[col].dtype.kind not in "iu":
        frame[col] = frame[col].astype(object if isinstance(value, str) else float)
    frame.loc[row, col] = value
    return frame


def D(make_data):
    """A `negrec data prepare` case from a function building the data section."""
    return lambda t: (_data_argv(t, make_data(t)), {})


def _recbole(tmp, rows):
    _write(tmp / "toy" / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    _write(tmp / "toy" / "toy.item", "item_id:token\tmovie_title:token_seq\n"
           + "".join(f"{i}\tMovie {i}\n" for i in range(1, 13)))
    return {"format": "recbole", "path": str(tmp / "toy"), "split": {"cut_unit": "event"}}


def _gz(tmp, data: bytes):
    """A generic log at log.csv.gz holding `data` (not gzip, or a truncated gzip stream)."""
    (tmp / "log.csv.gz").write_bytes(data)
    return {"format": "generic", "generic": {"path": str(tmp / "log.csv.gz"), "columns": dict(GEN_COLUMNS), "ts_unit": "s"},
            "split": {"cut_unit": "event"}}


def _gz_truncated(tmp):
    import gzip

    whole = gzip.compress(("uid,iid,when,stars\n" + "\n".join(_gen_rows()) + "\n").encode())
    return _gz(tmp, whole[: len(whole) // 2])


def _items_typo(tmp):
    _write(tmp / "items.csv", "iid,name\n" + "".join(f"{10 + i},Movie {i}\n" for i in range(12)))
    return _generic_csv(tmp, _gen_rows(), items_path=str(tmp / "items.csv"),
                        item_columns={"item_id": "iid", "title": "movie_name"})


def _items_duplicate_string_id(tmp):
    """String item ids are mapped to dense numbers at load: the duplicate is named as the file writes it."""
    _write(tmp / "items.csv", "iid,name\n" + "".join(f"m{i},Movie {i}\n" for i in range(12)) + "m3,Again\n")
    rows = [f"{u},m{i},{TS24 + DAY * (i % 9) + u},{1 + (u + i) % 5}" for u in range(1, 7) for i in range(12)]
    return _generic_csv(tmp, rows, items_path=str(tmp / "items.csv"), item_columns={"item_id": "iid", "title": "name"})


# (id, make(tmp) -> (argv, env), substrings the single stderr line must hold: file, line, field, rule)
def _repeated_header(tmp):
    cfg = _generic_csv(tmp, [r + ",1" for r in _gen_rows()])
    text = (tmp / "log.csv").read_text().split("\n", 1)
    _write(tmp / "log.csv", "uid,iid,when,stars,stars\n" + text[1])
    return cfg


def _kuai_flags_differ(tmp):
    header = "user_id\tvideo_id\ttime_ms\tplay_time_ms\tduration_ms\tis_hate"
    rows = [f"{u}\t{100 + i}\t{(TS24 + DAY * (i % 9) + u) * 1000}\t5000\t20000\t{int(i == 3)}"
            for u in range(1, 7) for i in range(12)]
    for name, head, tail in (("log_a.csv", header + ",is_like", ",1"), ("log_b.csv", header, "")):
        _write(tmp / "kr" / name, head.replace("\t", ",") + "\n" + "\n".join(r.replace("\t", ",") + tail
                                                                            for r in rows) + "\n")
    return {"format": "kuairand", "path": str(tmp / "kr"), "split": {"cut_unit": "event"}}


def _parquet_repeated_name(tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = _gen_frame()
    table = pa.Table.from_arrays([pa.array(f[c]) for c in ("uid", "iid", "when", "stars")] + [pa.array(np.ones(len(f)))],
                                 names=["uid", "iid", "when", "stars", "stars"])
    pq.write_table(table, tmp / "log.parquet")
    return {"format": "generic", "generic": {"path": str(tmp / "log.parquet"), "columns": dict(GEN_COLUMNS),
                                             "ts_unit": "s"}, "split": {"cut_unit": "event"}}


def _parquet_dates_change_form(tmp):
    """dd/mm dates, every day <= 12 in the first row group, a 13th in the second: read in one format
    (the first group's), as a CSV column is, the 13th is refused, not read as day/month on its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = _gen_frame()
    days = pd.to_datetime(f["when"], unit="s").dt.strftime("%d/%m/%Y %H:%M").to_numpy().copy()
    days[40] = "13/01/2024 10:00"
    f["when"] = days
    pq.write_table(pa.Table.from_pandas(f, preserve_index=False), tmp / "log.parquet", row_group_size=36)
    return {"format": "generic", "generic": {"path": str(tmp / "log.parquet"), "columns": dict(GEN_COLUMNS),
                                             "ts_unit": "datetime"}, "split": {"cut_unit": "event"}}


DATA_CASES = [
    ("parquet-repeats-a-name", D(_parquet_repeated_name), ["log.parquet", "'stars'", "named twice"]),
    ("parquet-dates-change-form", D(_parquet_dates_change_form),
     ["log.parquet", "row 41", "'when'", "'13/01/2024 10:00'", "the format of the file's first dates",
      "day/month?", "'%d/%m/%Y %H:%M'"]),
    ("ts-format-bad-directive", D(lambda t: _generic_csv(t, _gen_rows(when=lambda u, i: f"{1 + i % 9:02d}/01/2024 10:00"),
                                                         ts_unit="datetime", ts_format="%d/%m/%Y %Q")),
     ["log.csv", "data.generic.ts_format", "'%d/%m/%Y %Q'"]),
    ("ts-datetime-on-numbers", D(lambda t: _generic_csv(t, _gen_rows(), ts_unit="datetime")),
     ["log.csv", "'when'", "ts_unit is datetime but the timestamps are numbers"]),
    ("ts-us-on-ms", D(lambda t: _generic_csv(t, _gen_rows(when=lambda u, i: (TS24 + DAY * (i % 9) + u) * 1000),
                                             ts_unit="us")),
     ["log.csv", "'when'", "every timestamp is 1,000 times too small", "ts_unit"]),
    ("kuairand-files-differ-in-flags", D(_kuai_flags_differ), ["log_b.csv", "line 1", "'is_like'", "log_a.csv"]),
    ("header-repeats-a-name", D(_repeated_header), ["log.csv", "line 1", "'stars'", "named twice", "fields 4 and 5"]),
    ("id-missing-word", D(lambda t: _generic_csv(t, _gen_rows(), "NA,10,1704067201,3")),
     ["log.csv", "line 3", "'uid'", "reads as a missing value"]),
    ("rule-not-true-false", D(lambda t: _generic_csv(t, _gen_rows(), negative_if="rating")),
     ["data.generic.negative_if", "log.csv", "data row 1", "true/false"]),
    ("gz-not-gzip", D(lambda t: _gz(t, ("uid,iid,when,stars\n" + "\n".join(_gen_rows()) + "\n").encode())),
     ["log.csv.gz", "cannot decompress"]),
    ("gz-truncated", D(_gz_truncated), ["log.csv.gz", "cannot decompress", "truncated"]),
    ("sep-empty", D(lambda t: _generic_csv(t, _gen_rows(), sep="")), ["data.generic.sep", "empty"]),
    ("features-without-items", D(lambda t: _generic_csv(t, _gen_rows(), feature_columns=["genre"])),
     ["data.generic.feature_columns", "items_path"]),
    ("item-column-typo", D(_items_typo), ["items.csv", "line 1", "'movie_name'", "data.generic.item_columns"]),
    ("item-duplicate-string-id", D(_items_duplicate_string_id), ["items.csv", "line 14", "'iid'", "duplicate item id m3"]),
    ("ts-relative-to-a-start", D(lambda t: _generic_csv(t, _gen_rows(when=lambda u, i: 3600 * i + u)),
                                 ), ["log.csv", "line 2", "'when'", "before 1995", "relative times"]),
    ("ts-int64-overflow", D(lambda t: _generic_csv(t, _gen_rows(), "1,10,9223372036854775808,1"),
                            ), ["log.csv", "line 3", "'when'", "int64 overflow"]),
    ("ts-before-1995", D(lambda t: _ml100k(t, _ml_rows(), f"1\t1\t3\t{-883612800}")),
     ["u.data", "line 3", "'ts'", "before 1995-01-01"]),
    ("ts-far-future", D(lambda t: _generic_csv(t, _gen_rows(), "1,10,7258118400,1", at=5)),
     ["log.csv", "line 5", "'when'", "after"]),
    ("ts-ms-among-seconds", D(lambda t: _ml100k(t, _ml_rows(), f"1\t1\t3\t{T0 * 1000}", at=40)),
     ["u.data", "line 40", "'ts'", "milliseconds among seconds"]),
    ("ts-seconds-among-ms", D(lambda t: _kuai(t, f"1\t100\t{TS24}\t5000\t20000\t1", at=7)),
     ["k.tsv", "line 7", "'time_ms'", "seconds among milliseconds"]),
    ("ts-auto-ms-among-s", D(lambda t: _generic_csv(t, _gen_rows(), f"1,10,{TS24 * 1000},1", at=30, ts_unit="auto")),
     ["log.csv", "line 30", "'when'", "mixed units"]),
    ("ts-auto-blames-line-502", D(lambda t: _generic_csv(
        t, _gen_rows(n_users=10, n_items=60), "1,10,yesterday,1", at=502, ts_unit="auto")),
     ["log.csv", "line 502", "'when'", "cannot parse timestamp 'yesterday'"]),
    ("ts-parquet-hive-unparsable", D(lambda t: _generic_parquet(
        t, _with(_gen_frame(when=(TS24 + np.arange(72) * 3600).astype(str)), "when", 50, "someday"), hive=True)),
     ["part=1", "data.parquet", "row 15", "'when'",
                                                                     "cannot parse"]),
    ("ts-recbole-out-of-range", D(lambda t: _recbole(t, ["1\t1\t3\t12"] + _ml_rows()[1:])),
     ["toy.inter", "line 2", "'timestamp'", "before 1995"]),
    ("id-fractional", D(lambda t: _ml100k(t, _ml_rows(), f"196.5\t1\t3\t{T0}", at=4)),
     ["u.data", "line 4", "'user_id'", "fractional"]),
    ("id-empty", D(lambda t: _generic_csv(t, _gen_rows(), f",10,{TS24},1", at=6)), ["log.csv", "line 6", "'uid'", "empty"]),
    ("id-parquet-nan", D(lambda t: _generic_parquet(t, _with(_gen_frame(), "iid", 7, np.nan))),
     ["log.parquet", "row 8", "'iid'", "empty"]),
    ("id-float-beyond-2^53", D(lambda t: _generic_parquet(t, _with(_gen_frame(), "uid", 3, 1e17)))
     , ["log.parquet", "row 4", "'uid'", "beyond 2^53"]),
    ("rating-out-of-range", D(lambda t: _ml100k(t, _ml_rows(), f"2\t3\t99\t{T0}", at=9)),
     ["u.data", "line 9", "'rating'", "out of range"]),
    ("rating-negative-generic", D(lambda t: _generic_csv(t, _gen_rows(), f"1,10,{TS24},-1", at=4)),
     ["log.csv", "line 4", "'stars'", "out of range"]),
    ("label-out-of-range", D(lambda t: _kuai(t, f"1\t100\t{TS24 * 1000}\t5000\t20000\t2", at=5)),
     ["k.tsv", "line 5", "'label'", "out of range"]),
    ("conflicting-duplicate", D(lambda t: _ml100k(t, _ml_rows(rating=lambda u, i: 4 if (u, i) == (1, 2) else 1 + (u * i) % 5),
                                                  f"1\t2\t1\t{T0 + DAY * 2 + 1}", at=20)),
     ["u.data", "line 2", "'feedback'", "conflicting duplicate", "data.conflicts: negative"]),
    ("no-negatives", D(lambda t: _ml100k(t, _ml_rows(rating=lambda u, i: 4 + (u + i) % 2))),
     ["ml", "'feedback'", "no negative feedback", "negative_max"]),
    ("one-user", D(lambda t: _ml100k(t, _ml_rows(users=1))), ["ml", "'user_id'", "1 user(s)", "at least 2"]),
    ("no-test-cut", D(lambda t: {**_ml100k(t, _ml_rows(items=3)), "split": {"cut_unit": "event", "min_context": 8}}),
     ["ml", "'user_id'", "no user of 6 has a test cut", "min_context = 8", "under cut_unit: event, at earlier seconds"]),
    ("no-test-cut-days", D(lambda t: {**_ml100k(t, _ml_rows(items=3)), "split": {"cut_unit": "day", "min_context": 8}}),
     ["ml", "'user_id'", "no user of 6 has a test cut", "under cut_unit: day", "set data.split.cut_unit: event"]),
    ("unknown-string-item", D(lambda t: _recbole(t, _ml_rows() + [f"2\tX99\t1\t{T0}"])),
     ["toy.inter", "line 74", "'item_id'", "X99 is not in the items table"]),
    ("blank-line-then-bad", D(lambda t: _ml100k(t, _ml_rows()[:3] + [""] + _ml_rows()[3:], f"2\t3\t7\t{T0}", at=6)),
     ["u.data", "line 6", "'rating'", "out of range"]),
    ("flag-out-of-range", D(lambda t: _write_kuai_raw(t)), ["log_standard_x.csv", "line 4", "'is_hate'", "out of range"]),
    ("parquet-dir-empty", D(lambda t: ((t / "empty").mkdir(), {"format": "generic", "generic": {
        "path": str(t / "empty"), "columns": dict(GEN_COLUMNS)}})[1]), ["empty", "no Parquet files"]),
]


def _write_kuai_raw(tmp):
    header = "user_id,video_id,time_ms,play_time_ms,duration_ms,is_hate,is_like"
    rows = [f"{u},{100 + i},{(TS24 + DAY * (i % 9) + u) * 1000},5000,20000,{int(i % 3 == 0)},{int(i % 3 == 1)}"
            for u in range(1, 7) for i in range(12)]
    rows.insert(2, f"1,100,{TS24 * 1000},5000,20000,3,0")
    _write(tmp / "kr" / "log_standard_x.csv", header + "\n" + "\n".join(rows) + "\n")
    return {"format": "kuairand", "path": str(tmp / "kr"), "split": {"cut_unit": "event"}}


def _cfg_case(sets: list[str], env: dict | None = None, extra: list[str] = ()):
    return lambda t: (["data", "prepare", "--config", _config(t, _ml100k(t, _ml_rows())), "--run-dir", str(t / "run"),
                       *[a for s in sets for a in ("--set", s)], *extra], env or {})


CONFIG_CASES = [
    ("set-section-to-scalar", _cfg_case(["data=5"]), ["c.yaml", "data", "expected a mapping", "5"]),
    ("unknown-section", _cfg_case(["tokenise.method=rqkmeans"]), ["c.yaml", "'tokenise'", "did you mean 'tokenize'"]),
    ("unknown-section-typo", _cfg_case(["dtaa.horizons=[1]"]), ["c.yaml", "'dtaa'", "did you mean 'data'"]),
    ("unknown-key", _cfg_case(["data.split.min_contxt=3"]), ["c.yaml", "data.split", "min_contxt",
                                                            "did you mean 'min_context'"]),
    ("horizon-zero", _cfg_case(["data.horizons=[0,7]"]), ["c.yaml", "data.horizons", "[0, 7]", "positive"]),
    ("horizon-negative", _cfg_case(["data.horizons=[-1,3,7]"]), ["c.yaml", "data.horizons", "-1", "positive"]),
    ("horizon-unsorted", _cfg_case(["data.horizons=[7,3,3]"]), ["c.yaml", "data.horizons", "sorted without repeats"]),
    ("test-frac", _cfg_case(["data.split.test_frac=1.5"]), ["c.yaml", "data.split.test_frac", "1.5", "(0, 1)"]),
    ("min-context", _cfg_case(["data.split.min_context=-3"]), ["c.yaml", "data.split.min_context", "-3", ">= 0"]),
    ("main-horizon", _cfg_case(["data.main_horizon=5"]), ["c.yaml", "data.main_horizon", "5", "data.horizons"]),
    ("rewards-horizon", _cfg_case(["rewards.horizon=5"]), ["c.yaml", "rewards.horizon", "5", "data.horizons"]),
    ("eval-horizons", _cfg_case(["eval.metrics.horizons=[1,14]"]), ["c.yaml", "eval.metrics.horizons", "[1, 14]",
                                                                    "subset of data.horizons"]),
    ("item-columns-typo", _cfg_case(["data.generic.item_columns={item_id: id, txt: description}"]),
     ["c.yaml", "data.generic.item_columns", "'txt'", "did you mean 'text'"]),
    ("path-under-embedded", _cfg_case(["data.format=embedded", "data.path=/data/ml-1m"]),
     ["c.yaml", "data.path", "embedded", "set data.format"]),
    ("threads-negative", _cfg_case([], extra=["--threads", "-1"]), ["--threads", "'-1'", "positive integer"]),
    ("threads-env", _cfg_case([], env={"NEGREC_THREADS": "abc"}), ["NEGREC_THREADS", "'abc'", "positive integer"]),
    ("run-dir-is-file", lambda t: (_write(t / "afile", "x"), (["data", "--run-dir", str(t / "afile")], {}))[1],
     ["afile", "run folder", "is a file"]),
    ("run-dir-under-file", lambda t: (_write(t / "afile", "x"), (["data", "--run-dir", str(t / "afile" / "r")], {}))[1],
     ["afile", "cannot write the run folder"]),
    ("bad-yaml", lambda t: (_write(t / "b.yaml", "data: [1,\n"), (["data", "--config", str(t / "b.yaml")], {}))[1],
     ["b.yaml", "not valid YAML"]),
]


def _eval_files(tmp):
    log = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [5, 6, 7, 5, 8], "ts": [0, 2 * DAY, 3 * DAY, 0, 2 * DAY],
                        "feedback": [-1, -1, -1, 1, -1]})
    targets = pd.DataFrame({"user_id": [1, 1, 2], "cut_ts": [DAY, DAY, DAY], "item_id": [6, 7, 8],
                            "ts": [2 * DAY, 3 * DAY, 2 * DAY]})
    log.to_parquet(tmp / "log.parquet")
    targets.to_parquet(tmp / "targets.parquet")
    _write(tmp / "e.yaml", yaml.safe_dump({"eval": {"metrics": {"ks": [1, 10]}}}))


GOOD_PRED = {"user_id": [1, 1, 2, 2], "cut_ts": [DAY] * 4, "rank": [0, 1, 0, 1], "item_id": [6, 9, 9, 8]}


def E(**change):
    """An `negrec evaluate --predictions` case: the good predictions with `change` applied."""
    def make(t):
        _eval_files(t)
        cols = dict(GOOD_PRED)
        drop = change.pop("_drop", None) if "_drop" in change else None
        cols.update(change)
        df = pd.DataFrame(cols)
        if drop:
            df = df.drop(columns=drop)
        df.to_parquet(t / "mine.parquet")
        return (["evaluate", "--config", str(t / "e.yaml"), "--run-dir", str(t / "run"), "--predictions",
                 str(t / "mine.parquet"), "--targets", str(t / "targets.parquet"), "--log", str(t / "log.parquet")], {})
    return make


EVAL_CASES = [
    ("pred-no-matching-users", E(user_id=[8, 8, 9, 9]), ["mine.parquet", "'user_id'", "none of its 2", "not among"]),
    ("pred-cut-off-by-one", E(cut_ts=[DAY + 1] * 4), ["mine.parquet", "'cut_ts'", f"cut user 1 at {DAY}"]),
    ("pred-missing-cut-ts", E(_drop=["cut_ts"]), ["mine.parquet", "missing column", "'cut_ts'"]),
    ("pred-nan-item", E(item_id=[6.0, np.nan, 9.0, 8.0]), ["mine.parquet", "row 2", "'item_id'", "empty (NaN)"]),
    ("pred-duplicate-rank", E(rank=[0, 0, 0, 1]), ["mine.parquet", "row 2", "'rank'", "duplicate rank"]),
    ("pred-duplicate-item", E(item_id=[6, 6, 9, 8]), ["mine.parquet", "row 2", "'item_id'", "duplicate item"]),
    ("pred-unknown-items", E(item_id=[60, 61, 62, 63]), ["mine.parquet", "'item_id'", "none of its 4 predicted items"]),
    ("pred-empty", E(user_id=[], cut_ts=[], rank=[], item_id=[]), ["mine.parquet", "no rows"]),
    ("pred-negative-rank", E(rank=[0, -1, 0, 1]), ["mine.parquet", "row 2", "'rank'", "negative"]),
    ("pred-string-ids", E(user_id=["a", "a", "b", "b"]), ["mine.parquet", "row 1", "'user_id'", "not an integer"]),
]

CASES = DATA_CASES + CONFIG_CASES + EVAL_CASES


def _run(argv, env, monkeypatch, capsys):
    monkeypatch.delenv("NEGREC_THREADS", raising=False)
    monkeypatch.delenv("NEGREC_DEBUG", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, [line for line in out.err.splitlines() if line.strip()]


@pytest.mark.parametrize("case,make,expect", CASES, ids=[c[0] for c in CASES])
def test_broken_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, case, make, expect):
    monkeypatch.chdir(tmp_path)  # the default run folder (runs/...) lands in tmp
    argv, env = make(tmp_path)
    rc, lines = _run(argv, env, monkeypatch, capsys)
    assert rc == 2 and len(lines) == 1, (rc, lines)
    assert "Traceback" not in lines[0]
    for part in expect:
        assert part in lines[0], (part, lines[0])


def test_enough_kinds():
    assert len(DATA_CASES) >= 20 and len(CASES) >= 45


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv, _ = D(lambda t: _ml100k(t, _ml_rows(), f"196.5\t1\t3\t{T0}"))(tmp_path)
    with pytest.raises(Exception, match="fractional"):
        main([*argv, "--debug"])


def test_ctrl_c_is_one_line_exit_130(tmp_path, monkeypatch, capsys):
    import negrec.data

    def interrupted(raw, run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(negrec.data, "run_prepare", interrupted)
    rc, lines = _run(["data", "--run-dir", str(tmp_path / "r")], {}, monkeypatch, capsys)
    assert rc == 130 and lines == ["negrec data: interrupted; rerun to resume"]


def test_partial_match_warns_with_counts(tmp_path, monkeypatch, capsys):
    argv, env = E(user_id=[1, 1, 9, 9])(tmp_path)
    rc, lines = _run(argv, env, monkeypatch, capsys)
    assert rc == 0 and len(lines) == 2, lines
    assert "warning" in lines[0] and "1 of 2 (user_id, cut_ts) pairs match no target row" in lines[0]
    assert "1 of 2 target rows have no predictions" in lines[0]
    assert "warning: only 2 test user(s)" in lines[1]  # two users scored: CIs from two users say little


# ---------------------------------------------------------------- benign: accepted, counted
BENIGN = [
    ("crlf", lambda t: _ml100k(t, _ml_rows(), newline="\r\n"), 0),
    ("blank-lines", lambda t: _ml100k(t, _ml_rows()[:5] + [""] + _ml_rows()[5:] + [""]), 0),
    ("exact-duplicates", lambda t: _ml100k(t, _ml_rows() + _ml_rows()[:3]), 3),
    ("bom-csv", lambda t: (_write(t / "log.csv", "\ufeffuid,iid,when,stars\n" + "\n".join(_gen_rows()) + "\n"),
                           {"format": "generic", "generic": {"path": str(t / "log.csv"), "columns": dict(GEN_COLUMNS),
                                                             "ts_unit": "s"}, "split": {"cut_unit": "event"}})[1], 0),
    ("crlf-bom-kuairand", lambda t: (_write(t / "kr" / "k.tsv", "\ufeff" + open(_kuai_path(t)).read().replace(
        "\n", "\r\n"), newline=""), {"format": "kuairand", "path": str(t / "kr"), "split": {"cut_unit": "event"}})[1], 0),
    ("conflict-rule-negative", lambda t: {**_ml100k(t, _ml_rows(rating=lambda u, i: 4 if (u, i) == (1, 2) else
                                                       1 + (u * i) % 5), f"1\t2\t1\t{T0 + DAY * 2 + 1}", at=20),
                                          "conflicts": "negative"}, 0),
    ("string-and-sparse-ids", lambda t: _generic_csv(t, [f"u{r}" for r in _gen_rows(when=lambda u, i: TS24 + DAY * (
        i % 9) + u)]), 0),
]


def _kuai_path(t):
    _kuai(t)
    return t / "kr" / "k.tsv"


@pytest.mark.parametrize("case,make,n_dup", BENIGN, ids=[c[0] for c in BENIGN])
def test_benign_input_is_accepted_and_counted(tmp_path, monkeypatch, capsys, case, make, n_dup):
    argv = _data_argv(tmp_path, make(tmp_path))
    rc, lines = _run(argv, {}, monkeypatch, capsys)
    assert rc == 0, lines
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    resolved = stats.get("conflicts_resolved", 0)  # data.conflicts: negative keeps the dislike, counts the like
    assert stats["duplicates_dropped"] == n_dup and stats["users"] == 6 and stats["test_users"] > 0
    assert stats["rows_read"] == stats["interactions"] + n_dup + resolved and resolved == (case == "conflict-rule-negative")
