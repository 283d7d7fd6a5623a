"""Every loader on real files, and on broken files of each kind: the error names file, line, field."""
import re

import numpy as np
import pandas as pd
import pytest

from negrec.data import (DataConfig, DataError, GenericLogSpec, SkipRule, add_implicit_negatives, load_generic,
                         load_kuairand, load_movielens, load_recbole, prepare_data, recbole_ml100k_path, SplitConfig)
from negrec.data.loaders import load_movielens_csv, load_movielens_dat
from negrec.data.schema import clean_items


def test_ml100k_raw_and_recbole_agree(ml100k_dir):
    a, items_a = load_movielens(ml100k_dir)
    b, items_b = load_recbole(recbole_ml100k_path(), "ml-100k")
    assert len(a) == len(b) == 100_000
    assert (a.feedback == -1).sum() == 17_480
    pd.testing.assert_frame_equal(a[["user_id", "item_id", "ts", "feedback"]].reset_index(drop=True),
                                  b[["user_id", "item_id", "ts", "feedback"]].reset_index(drop=True))
    assert len(items_a) == len(items_b) == 1682
    toy = items_a[items_a.item_id == 1].iloc[0]
    assert toy.title == "Toy Story (1995)" and "Animation" in toy.genres and "Comedy" in toy.text


def test_kuairand_labels(kuairand_dir):
    inter, items = load_kuairand(kuairand_dir)
    assert len(inter) == 41_828 and (inter.feedback == -1).sum() == 8_083
    assert items.item_id.nunique() == 9_359 and "feat_duration_bucket" in items


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


ML100K_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
ML_CSV_MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n"
ML_DAT_MOVIES = "1::Toy Story (1995)::Animation|Comedy\n"
RB_ITEM = "item_id:token\tmovie_title:token_seq\n1\tToy Story\n"
RB_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
KUAI_HEADER = "user_id\tvideo_id\ttime_ms\tplay_time_ms\tduration_ms\tlabel\n"
GEN_ITEMS = "iid,title\n10,Ten\n11,Eleven\n"
GEN_COLUMNS = {"user_id": "uid", "item_id": "iid", "ts": "when", "rating": "stars"}


def _prepare(cfg):
    return prepare_data(cfg)


def _ml100k(tmp_path, u_data=None, u_item=ML100K_ITEM):
    _write(tmp_path / "u.data", u_data)
    _write(tmp_path / "u.item", u_item, "latin-1")
    return lambda: _prepare(DataConfig(format="movielens", path=str(tmp_path)))


def _ml_csv(tmp_path, ratings=None, movies=ML_CSV_MOVIES):
    _write(tmp_path / "ratings.csv", ratings)
    _write(tmp_path / "movies.csv", movies)
    return lambda: _prepare(DataConfig(format="movielens", path=str(tmp_path)))


def _ml_dat(tmp_path, ratings=None, movies=ML_DAT_MOVIES):
    _write(tmp_path / "ratings.dat", ratings, "latin-1")
    _write(tmp_path / "movies.dat", movies, "latin-1")
    return lambda: _prepare(DataConfig(format="movielens", path=str(tmp_path)))


def _recbole(tmp_path, inter=None, item=RB_ITEM):
    _write(tmp_path / "toy" / "toy.inter", inter)
    _write(tmp_path / "toy" / "toy.item", item)
    return lambda: _prepare(DataConfig(format="recbole", path=str(tmp_path / "toy")))


def _kuairand(tmp_path, log=None, name="k.tsv"):
    _write(tmp_path / "kr" / name, log)
    return lambda: _prepare(DataConfig(format="kuairand", path=str(tmp_path / "kr")))


def _generic_csv(tmp_path, log=None, columns=GEN_COLUMNS, sep=",", items=GEN_ITEMS, ts_unit="datetime"):
    _write(tmp_path / "log.csv", log)
    items_path = str(_write(tmp_path / "items.csv", items)) if items else ""
    spec = GenericLogSpec(path=str(tmp_path / "log.csv"), items_path=items_path, sep=sep, columns=dict(columns),
                          item_columns={"item_id": "iid", "title": "title"}, ts_unit=ts_unit)
    return lambda: _prepare(DataConfig(format="generic", generic=spec))


def _generic_csv_latin1(tmp_path, log):
    run = _generic_csv(tmp_path, "x\n")
    _write(tmp_path / "log.csv", log, "latin-1")
    return run


def _generic_parquet(tmp_path, frame=None, columns=GEN_COLUMNS, items=GEN_ITEMS, ts_unit="datetime", raw=None):
    path = tmp_path / "log.parquet"
    if raw is not None:
        path.write_bytes(raw)
    else:
        frame.to_parquet(path, index=False)
    items_path = str(_write(tmp_path / "items.csv", items)) if items else ""
    spec = GenericLogSpec(path=str(path), items_path=items_path, columns=dict(columns),
                          item_columns={"item_id": "iid", "title": "title"}, ts_unit=ts_unit)
    return lambda: _prepare(DataConfig(format="generic", generic=spec))


def _gen_frame(**over):
    cols = {"uid": [1, 2, 2], "iid": [10, 11, 10], "when": ["2024-01-01 10:00", "2024-01-02 10:00", "2024-01-03 10:00"],
            "stars": [1.0, 5.0, 3.0]}
    cols.update(over)
    return pd.DataFrame(cols)


# (loader, kind, make(tmp_path) -> callable, file, line (None: no line, e.g. an empty file), field, extra)
BROKEN = [
    # MovieLens-100K: u.data (tab, no header) and u.item ('|')
    ("ml-100k", "missing column", lambda t: _ml100k(t, "1\t1\t3\n"), "u.data", 1, "ts", "found 3"),
    ("ml-100k", "missing column", lambda t: _ml100k(t, "1\t1\t3\t881250949\n2\t1\t3\n"), "u.data", 2, "ts", "empty"),
    ("ml-100k", "missing column", lambda t: _ml100k(t, "1\t1\t3\t881250949\n", "1|Toy Story\n"), "u.item", 1,
     "release", "found 2"),
    ("ml-100k", "unparsable timestamp", lambda t: _ml100k(t, "1\t1\t3\t881250949\n1\t1\t4\tyesterday\n"), "u.data", 2,
     "ts", "yesterday"),
    ("ml-100k", "unparsable value", lambda t: _ml100k(t, "1\t1\t3\t881250949\n1\t1\tfive\t881250950\n"), "u.data", 2,
     "rating", "five"),
    ("ml-100k", "unknown item", lambda t: _ml100k(t, "1\t1\t3\t881250949\n1\t99\t1\t881250950\n"), "u.data", 2,
     "item_id", "= 99 is not in the items table"),
    ("ml-100k", "empty file", lambda t: _ml100k(t, ""), "u.data", None, None, "empty file"),
    ("ml-100k", "empty file", lambda t: _ml100k(t, "1\t1\t3\t881250949\n", ""), "u.item", None, None, "empty file"),
    ("ml-100k", "wrong separator", lambda t: _ml100k(t, "1,1,3,881250949\n"), "u.data", 1, "user_id",
     "wrong separator"),
    ("ml-100k", "stray separator", lambda t: _ml100k(t, "1\t1\t3\t881250949\n1\t1\t3\t881250949\t7\n"), "u.data", 2,
     None, "saw 5"),
    # MovieLens CSV releases: ratings.csv / movies.csv with headers
    ("ml-csv", "missing column", lambda t: _ml_csv(t, "userId,movieId,rating\n1,1,4\n"), "ratings.csv", 1,
     "timestamp", "missing column"),
    ("ml-csv", "missing column", lambda t: _ml_csv(t, "userId,movieId,rating,timestamp\n1,1,4,5\n",
                                                  "movieId,title\n1,Toy\n"), "movies.csv", 1, "genres", "missing"),
    ("ml-csv", "unparsable timestamp", lambda t: _ml_csv(t, "userId,movieId,rating,timestamp\n1,1,4,5\n1,1,4,soon\n"),
     "ratings.csv", 3, "timestamp", "soon"),
    ("ml-csv", "unknown item", lambda t: _ml_csv(t, "userId,movieId,rating,timestamp\n1,1,4,881250949\n1,99,4,881250950\n"),
     "ratings.csv", 3, "movieId", "item_id) = 99 is not in the items table"),
    ("ml-csv", "empty file", lambda t: _ml_csv(t, ""), "ratings.csv", None, None, "empty file"),
    ("ml-csv", "empty file", lambda t: _ml_csv(t, "userId,movieId,rating,timestamp\n"), "ratings.csv", None, None,
     "no data rows"),
    ("ml-csv", "wrong separator", lambda t: _ml_csv(t, "userId;movieId;rating;timestamp\n1;1;4;5\n"), "ratings.csv", 1,
     "timestamp", "wrong separator ','"),
    # MovieLens .dat releases: '::'-separated, no header
    ("ml-dat", "missing column", lambda t: _ml_dat(t, "1::1::5\n"), "ratings.dat", 1, "ts", "found 3"),
    ("ml-dat", "unparsable timestamp", lambda t: _ml_dat(t, "1::1::5::978300760\n1::2::3::noon\n"), "ratings.dat", 2,
     "ts", "noon"),
    ("ml-dat", "unknown item", lambda t: _ml_dat(t, "1::1::5::978300760\n1::7::3::978300761\n"), "ratings.dat", 2,
     "item_id", "= 7 is not in the items table"),
    ("ml-dat", "empty file", lambda t: _ml_dat(t, ""), "ratings.dat", None, None, "empty file"),
    ("ml-dat", "wrong separator", lambda t: _ml_dat(t, "1\t1\t5\t978300760\n"), "ratings.dat", 1, "user_id",
     "wrong separator"),
    # RecBole atomic files: `.inter` / `.item`, tab-separated, typed headers
    ("recbole", "missing column", lambda t: _recbole(t, "user_id:token\titem_id:token\trating:float\n1\t1\t4\n"),
     "toy.inter", 1, "timestamp", "missing field"),
    ("recbole", "missing column", lambda t: _recbole(t, RB_HEADER + "1\t1\t4\t5\n", "title:token\nToy\n"),
     "toy.item", 1, "item_id", "missing field"),
    ("recbole", "unparsable timestamp", lambda t: _recbole(t, RB_HEADER + "1\t1\t4\t5\n1\t1\t4\t?\n"), "toy.inter", 3,
     "timestamp", "'?'"),
    ("recbole", "unknown item", lambda t: _recbole(t, RB_HEADER + "1\t1\t4\t881250949\n1\t42\t4\t881250950\n"), "toy.inter", 3,
     "item_id", "= 42 is not in the items table"),
    ("recbole", "empty file", lambda t: _recbole(t, ""), "toy.inter", None, None, "empty file"),
    ("recbole", "wrong separator", lambda t: _recbole(t, RB_HEADER.replace("\t", ",") + "1,1,4,5\n"), "toy.inter", 1,
     "item_id", "wrong separator"),
    # KuaiRand: the like/hate subset (.tsv) and raw log_*.csv (items come from the log: no unknown item)
    ("kuairand", "missing column", lambda t: _kuairand(t, "user_id\tvideo_id\ttime_ms\n1\t2\t3\n"), "k.tsv", 1,
     "play_time_ms", "missing column"),
    ("kuairand", "missing column", lambda t: _kuairand(
        t, KUAI_HEADER.replace("\t", ",").replace(",label", ",is_like") + "1,2,1649581149287,100,2000,1\n",
        "log_standard_x.csv"), "log_standard_x.csv", 1, "is_hate", "missing field"),
    ("kuairand", "unparsable timestamp", lambda t: _kuairand(
        t, KUAI_HEADER + "1\t2\t1649581149287\t100\t2000\t1\n1\t3\tnoon\t100\t2000\t0\n"), "k.tsv", 3, "time_ms", "noon"),
    ("kuairand", "unparsable value", lambda t: _kuairand(t, KUAI_HEADER + "1\t2\t1649581149287\t100\t2000\tyes\n"),
     "k.tsv", 2, "label", "yes"),
    ("kuairand", "empty file", lambda t: _kuairand(t, ""), "k.tsv", None, None, "empty file"),
    ("kuairand", "wrong separator", lambda t: _kuairand(t, KUAI_HEADER.replace("\t", ",") + "1,2,3,4,5,1\n"), "k.tsv", 1,
     "time_ms", "wrong separator"),
    # any CSV log through a column mapping
    ("generic-csv", "missing column", lambda t: _generic_csv(
        t, "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n", {**GEN_COLUMNS, "user_id": "user"}), "log.csv", 1, "user",
     "missing column"),
    ("generic-csv", "wrong separator", lambda t: _generic_csv(  # a tab-separated log read with ',': names the tab
        t, "uid\tiid\twhen\tstars\n1\t10\t2024-01-01 10:00\t1\n"), "log.csv", 1, "uid",
     "the header holds '\\t': set data.generic.sep='\\t'"),
    ("generic-csv", "unparsable timestamp", lambda t: _generic_csv(
        t, "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,not a date,5\n"), "log.csv", 3, "when", "timestamp"),
    ("generic-csv", "unparsable timestamp", lambda t: _generic_csv(
        t, "uid,iid,when,stars\n1,10,1704103200,1\n2,11,17041O3200,5\n", ts_unit="s"), "log.csv", 3, "when", "17041O3200"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv(
        t, "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,2024-01-02 10:00,five\n"), "log.csv", 3, "stars", "five"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv(  # string ids are fine, a fractional one is not
        t, "uid,iid,when,stars\n1.5,10,2024-01-01 10:00,1\n"), "log.csv", 2, "uid", "1.5"),
    ("generic-csv", "unknown item", lambda t: _generic_csv(
        t, "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,12,2024-01-02 10:00,5\n"), "log.csv", 3, "iid",
     "item_id) = 12 is not in the items table"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv(  # pandas skips a line of spaces: counted
        t, "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n   \n2,11,2024-01-02 10:00,five\n"), "log.csv", 4, "stars", "five"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv(  # a quoted field over two lines: counted
        t, 'uid,iid,when,stars,note\n1,10,2024-01-01 10:00,1,"two\nlines"\n2,11,2024-01-02 10:00,five,x\n'),
     "log.csv", 4, "stars", "five"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv(  # a blank line inside quotes: counted once
        t, 'uid,iid,when,stars,note\n1,10,2024-01-01 10:00,1,"x\n\ny"\n2,11,2024-01-02 10:00,five,z\n'),
     "log.csv", 5, "stars", "five"),
    ("generic-csv", "unparsable value", lambda t: _generic_csv_latin1(
        t, "uid,iid,when,stars,note\n1,10,2024-01-01 10:00,1,ok\n2,11,2024-01-02 10:00,5,café\n"), "log.csv", 3, None,
     "not valid utf-8 text (byte 0xe9)"),
    ("generic-csv", "missing column", lambda t: _generic_csv(  # a mapped column and one named as its target
        t, "uid,iid,when,stars,user_id\n1,10,2024-01-01 10:00,1,9\n"), "log.csv", 1, "uid", "also has a column 'user_id'"),
    ("generic-csv", "empty file", lambda t: _generic_csv(t, ""), "log.csv", None, None, "empty file"),
    ("generic-csv", "wrong separator", lambda t: _generic_csv(t, "uid;iid;when;stars\n1;10;2024-01-01 10:00;1\n"),
     "log.csv", 1, "uid", "wrong separator ','"),
    # any Parquet log: rows instead of lines, no separator to get wrong
    ("generic-parquet", "missing column", lambda t: _generic_parquet(t, _gen_frame(), {**GEN_COLUMNS, "user_id": "user"}),
     "log.parquet", None, "user", "missing column"),
    ("generic-parquet", "unparsable timestamp", lambda t: _generic_parquet(
        t, _gen_frame(when=["2024-01-01 10:00", "someday", "2024-01-03 10:00"])), "log.parquet", 2, "when", "someday"),
    ("generic-parquet", "unparsable timestamp", lambda t: _generic_parquet(
        t, _gen_frame(when=[1704103200.0, None, 1704103300.0]), ts_unit="s"), "log.parquet", 2, "when", "empty"),
    ("generic-parquet", "unparsable value", lambda t: _generic_parquet(t, _gen_frame(stars=["1", "5", "x"])),
     "log.parquet", 3, "stars", "'x'"),
    ("generic-parquet", "unparsable value", lambda t: _generic_parquet(  # a null in an integer column is no id
        t, _gen_frame(iid=pd.array([10, None, 11], dtype="Int64"))), "log.parquet", 2, "iid", "is empty"),
    ("generic-parquet", "unparsable value", lambda t: _generic_parquet(t, _gen_frame(uid=[1.0, None, 2.0])),
     "log.parquet", 2, "uid", "is empty"),
    ("generic-parquet", "unknown item", lambda t: _generic_parquet(t, _gen_frame(iid=[10, 11, 77])), "log.parquet", 3,
     "iid", "item_id) = 77 is not in the items table"),
    ("generic-parquet", "empty file", lambda t: _generic_parquet(t, _gen_frame().iloc[:0]), "log.parquet", None, None,
     "no data rows"),
    ("generic-parquet", "empty file", lambda t: _generic_parquet(t, raw=b""), "log.parquet", None, None, "empty file"),
    ("generic-parquet", "not a Parquet file", lambda t: _generic_parquet(t, raw=b"uid,iid\n1,2\n"), "log.parquet", None,
     None, "cannot read as Parquet"),
]


@pytest.mark.parametrize("loader,kind,make,file,line,field,extra", BROKEN,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(BROKEN)])
def test_broken_file_names_file_line_field(tmp_path, loader, kind, make, file, line, field, extra):
    run = make(tmp_path)
    with pytest.raises(DataError) as err:
        run()
    msg = str(err.value)
    # the file by its path, then the line (Parquet: the 1-based row) right after it
    where = "row" if file.endswith(".parquet") else "line"
    assert re.search(rf"[/\\]{re.escape(file)}: ", msg), msg
    if line is not None:
        assert f"{file}: {where} {line}: " in msg, msg
    if field is not None:
        assert f"'{field}'" in msg, msg
    assert extra in msg, msg


def test_every_loader_and_kind_is_covered():
    kinds = {"missing column", "unparsable timestamp", "unknown item", "empty file", "wrong separator"}
    not_applicable = {("kuairand", "unknown item"),  # KuaiRand items come from the log itself
                      ("generic-parquet", "wrong separator")}  # Parquet has no separator
    have = {(c[0], c[1]) for c in BROKEN}
    for loader in {c[0] for c in BROKEN}:
        for kind in kinds:
            assert (loader, kind) in have or (loader, kind) in not_applicable, (loader, kind)


def test_unknown_item_names_file_line_and_field(tmp_path):
    _write(tmp_path / "u.data", "1\t1\t3\t881250949\n1\t99\t1\t881250950\n")
    _write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    with pytest.raises(DataError, match=r"[/\\]u\.data: line 2: field 'item_id' = 99 is not in the items table"):
        prepare_data(DataConfig(format="movielens", path=str(tmp_path)))


def test_duplicate_item_names_items_file_line(tmp_path):
    _write(tmp_path / "u.data", "1\t1\t3\t881250949\n")
    _write(tmp_path / "u.item", ML100K_ITEM + ML100K_ITEM, "latin-1")
    with pytest.raises(DataError, match=r"u\.item: line 2: field 'item_id': duplicate item id 1"):
        prepare_data(DataConfig(format="movielens", path=str(tmp_path)))


def test_generic_good_file_and_bad_rule(tmp_path):
    log = _write(tmp_path / "log.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,2024-01-02 10:00,5\n")
    spec = GenericLogSpec(path=str(log), columns=dict(GEN_COLUMNS), ts_unit="datetime")
    inter, items = load_generic(spec)
    assert inter.feedback.tolist() == [-1, 1] and inter.ts.iloc[0] == 1704103200
    spec.negative_if = "stars <=>"
    with pytest.raises(DataError, match=r"data.generic.negative_if: cannot evaluate"):
        load_generic(spec)


def test_a_tab_separator_written_as_backslash_t_is_a_tab(tmp_path):
    """`--set data.generic.sep='\\t'` (and YAML's unquoted \\t) give backslash-t: read as the tab it means."""
    log = _write(tmp_path / "log.tsv", "uid\tiid\twhen\tstars\n1\t10\t2024-01-01 10:00\t1\n2\t11\t2024-01-02 10:00\t5\n")
    spec = GenericLogSpec(path=str(log), sep="\\t", items_sep="\\t", columns=dict(GEN_COLUMNS), ts_unit="datetime")
    assert (spec.sep, spec.items_sep) == ("\t", "\t")
    inter, _ = load_generic(spec)
    assert inter.feedback.tolist() == [-1, 1] and inter.user_id.tolist() == [1, 2]
    assert GenericLogSpec(sep="||").sep == "||"  # other separators stay as written


def test_generic_parquet_matches_csv(tmp_path):
    frame = pd.DataFrame({"uid": [3, 1, 1, 2], "iid": [10, 11, 10, 12], "when": [1704103200000, 1704103201000,
                                                                                1704103100000, 1704103300000],
                          "stars": [1.0, 5.0, 3.0, 2.0], "secs": [1.5, 20.0, 3.0, 0.5], "len": [30.0, 30.0, 30.0, 0.0]})
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    frame.to_csv(tmp_path / "log.csv", index=False)
    columns = {**GEN_COLUMNS, "play_time_s": "secs", "duration_s": "len"}
    got = [load_generic(GenericLogSpec(path=str(tmp_path / f), columns=dict(columns), ts_unit="auto"))
           for f in ("log.parquet", "log.csv")]
    for (inter, items) in got:
        assert inter.ts.tolist() == [1704103200, 1704103201, 1704103100, 1704103300]  # ms recognised
        assert inter.feedback.tolist() == [-1, 1, 0, -1] and items.item_id.tolist() == [10, 11, 12]
    pd.testing.assert_frame_equal(got[0][0].astype({"play_time_s": "float64", "duration_s": "float64", "rating": "float64"}),
                                  got[1][0].astype({"play_time_s": "float64", "duration_s": "float64", "rating": "float64"}),
                                  check_dtype=False, rtol=1e-6)


def test_require_text_drop_is_counted(tmp_path):
    # users 3-5 keep enough events on item 10 for a test split once items 11 and 12 are dropped
    kept = "".join(f"{u},10,2024-01-{d:02d} 10:00,{1 + (u + d) % 5}\n" for u in (3, 4, 5) for d in range(1, 9))
    log = _write(tmp_path / "log.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n1,11,2024-01-02 10:00,5\n"
                                       "2,11,2024-01-02 11:00,4\n2,12,2024-01-03 10:00,2\n" + kept)
    items = _write(tmp_path / "items.csv", "iid,title,text\n10,Ten,a film\n11,,\n12, ,  \n")  # neither title nor text
    spec = GenericLogSpec(path=str(log), items_path=str(items), columns=dict(GEN_COLUMNS), ts_unit="datetime",
                          item_columns={"item_id": "iid", "title": "title", "text": "text"})
    p = prepare_data(DataConfig(format="generic", generic=spec, require_text=True, split=SplitConfig(cut_unit="event")))
    assert p.report["items_without_text"] == 2 and p.report["interactions_of_dropped_items"] == 3
    assert p.items.item_id.tolist() == [10] and set(p.interactions.item_id) == {10}
    # without require_text the same gap is an error naming the log's file, line and field
    few = _write(tmp_path / "few.csv", "iid,title\n10,Ten\n12,Twelve\n")
    spec = GenericLogSpec(path=str(log), items_path=str(few), columns=dict(GEN_COLUMNS), ts_unit="datetime",
                          item_columns={"item_id": "iid", "title": "title"})
    with pytest.raises(DataError, match=r"log\.csv: line 3: field 'iid' \(item_id\) = 11 is not in the items table"):
        prepare_data(DataConfig(format="generic", generic=spec))


def test_implicit_skips_and_explicit_wins():
    df = pd.DataFrame({"user_id": [1] * 5, "item_id": [1, 2, 3, 4, 5], "ts": [1, 2, 3, 4, 5],
                       "feedback": [0, 0, 0, 1, 0], "source": ["explicit"] * 5,
                       "play_time_s": [1.0, 10.0, 2.5, 0.5, 1.0], "duration_s": [30.0, 30.0, 10.0, 30.0, 0.0]})
    out, n = add_implicit_negatives(df, SkipRule(max_watch_ratio=0.2, max_play_s=3.0))
    # item 1: fast skip; 2: watched 10 s; 3: ratio 0.25; 4: explicit like wins; 5: no duration
    assert out.feedback.tolist() == [-1, 0, 0, 1, 0] and n == 1
    assert out.source.tolist()[0] == "implicit"
    out, n = add_implicit_negatives(df, SkipRule(enabled=False))
    assert n == 0 and out.feedback.tolist() == [0, 0, 0, 1, 0]


def test_duplicates_are_counted(tmp_path):
    rows = "".join(f"{u}\t1\t{1 + (u + d) % 5}\t{881250949 + d * 86400}\n" for u in (1, 2, 3) for d in range(8))
    _write(tmp_path / "u.data", rows + rows.splitlines(keepends=True)[0])  # the first row twice
    _write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    p = prepare_data(DataConfig(format="movielens", path=str(tmp_path), split=SplitConfig(cut_unit="event")))
    assert p.report["duplicates_dropped"] == 1 and len(p.interactions) == 24


def test_movielens_csv_and_dat_good_files(tmp_path):
    _write(tmp_path / "csv" / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,1.5,5\n2,1,4.5,6\n")
    _write(tmp_path / "csv" / "movies.csv", ML_CSV_MOVIES)
    inter, items = load_movielens_csv(tmp_path / "csv")
    assert inter.feedback.tolist() == [-1, 1] and items.text.iloc[0] == "Toy Story (1995). Genres: Animation, Comedy"
    _write(tmp_path / "dat" / "ratings.dat", "1::1::2::978300760\n1::1::3::978300761\n")
    _write(tmp_path / "dat" / "movies.dat", ML_DAT_MOVIES)
    inter, items = load_movielens_dat(tmp_path / "dat")
    assert inter.feedback.tolist() == [-1, 0] and inter.ts.tolist() == [978300760, 978300761]


def test_ids_are_kept_as_written(tmp_path):
    """007 and 7 are two users, 000010 is not item 10, and a 21-digit id is an id, not a float."""
    big = "1" + "0" * 20
    log = _write(tmp_path / "log.csv", f"uid,iid,when,stars\n007,000010,2024-01-01 10:00,1\n7,{big},2024-01-02 10:00,5\n"
                                       f"7,000010,2024-01-03 10:00,2\n")
    inter, items = load_generic(GenericLogSpec(path=str(log), columns=dict(GEN_COLUMNS), ts_unit="datetime"))
    assert sorted(pd.unique(inter.user_id)) == ["007", "7"]
    assert sorted(pd.unique(inter.item_id)) == ["000010", big]
    from negrec.data.ids import id_keys

    assert id_keys(np.array(["0", "-0", "12"], object), None, "x", "user_id").tolist() == ["0", "-0", "12"]
    assert id_keys(np.array(["0", "-12", "12"], object), None, "x", "user_id").tolist() == [0, -12, 12]


def test_a_blank_line_in_a_gzipped_log_is_counted(tmp_path):
    import gzip

    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(b"uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n\n2,11,2024-01-02 10:00,five\n"))
    spec = GenericLogSpec(path=str(path), columns=dict(GEN_COLUMNS), ts_unit="datetime")
    with pytest.raises(DataError, match=r"log\.csv\.gz: line 4: field 'stars': cannot parse 'five'"):
        load_generic(spec)


def test_blank_lines_are_the_lines_pandas_skips():
    from negrec.data.reading import blank_lines

    assert blank_lines(b"a,b\n1,2\n \t\n3,4\n\n", ",") == [3, 5]
    assert blank_lines(b"a\tb\n1\t2\n\t\n3\t4\n", "\t") == []  # a tab line is a row of empty fields there
    assert blank_lines(None, ",") == []
    import io

    for sep in (",", "\t", ";"):  # what pandas skips: every line not a row is counted, no other
        text = f"a{sep}b\n1{sep}2\n\n  \n3{sep}4\n\t\n5{sep}6\n \t \n"
        rows = len(pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False))
        assert 1 + rows + len(blank_lines(text.encode(), sep)) == text.count("\n"), sep


def _generic_items_table(tmp_path, items_csv: str, item_columns: dict) -> pd.DataFrame:
    log = _write(tmp_path / "log.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,2024-01-02 10:00,5\n")
    items = _write(tmp_path / "items.csv", items_csv)
    spec = GenericLogSpec(path=str(log), items_path=str(items), columns=dict(GEN_COLUMNS), ts_unit="datetime",
                          item_columns=item_columns)
    return load_generic(spec)[1].set_index("item_id")


def test_generic_items_without_text_are_described_by_their_titles(tmp_path):
    it = _generic_items_table(tmp_path, "iid,title,text\n10,Ten,\n11,Eleven,eleven's own text\n",
                              {"item_id": "iid", "title": "title", "text": "text"})
    assert it["text"].to_dict() == {10: "Ten", 11: "eleven's own text"}


def test_items_without_a_title_column_keep_their_text_and_are_named_by_id(tmp_path):
    """An items table with text but no title, or no items table at all: no "item <id>" title is made
    up, so alignment reads the items' own text (`item_label`), or nothing; reports name them by id."""
    from negrec.llm.prompts import can_align, item_label

    it = _generic_items_table(tmp_path, "iid,text\n10,a film about ten\n11,eleven\n", {"item_id": "iid", "text": "text"})
    assert [item_label(r) for r in it.reset_index().to_dict("records")] == ["a film about ten", "eleven"]
    log = _write(tmp_path / "bare.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,2024-01-02 10:00,5\n")
    _, bare = load_generic(GenericLogSpec(path=str(log), columns=dict(GEN_COLUMNS), ts_unit="datetime"))
    bare = clean_items(bare, "bare.csv")[0]
    assert set(bare["title"]) == {""} and set(bare["text"]) == {""} and not can_align(bare)
    assert can_align(it.reset_index())


def test_swapped_item_columns_are_a_valid_mapping(tmp_path):
    it = _generic_items_table(tmp_path, "iid,title,text\n10,a long text,Ten\n11,more,Eleven\n",
                              {"item_id": "iid", "title": "text", "text": "title"})
    assert it[["title", "text"]].values.tolist() == [["Ten", "a long text"], ["Eleven", "more"]]
