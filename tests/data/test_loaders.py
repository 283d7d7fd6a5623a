"""Every loader on real files, and on broken files of each kind: the error names file, line, field."""
import re

import pandas as pd
import pytest

from negrec.data import (DataConfig, DataError, GenericLogSpec, SkipRule, add_implicit_negatives, load_generic,
                         load_kuairand, load_movielens, load_recbole, prepare_data, recbole_ml100k_path)
from negrec.data.loaders import load_movielens_csv, load_movielens_dat


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


@pytest.mark.parametrize("u_data,expect", [
    ("", "u.data: empty file"),
    ("1,1,3,881250949\n", "u.data: line 1: expected 4 fields separated by '\\t', found 1 (wrong separator?)"),
    ("1\t1\t3\t881250949\n1\t1\t4\tyesterday\n", "u.data: line 2: field 'ts'"),
    ("1\t1\t3\t881250949\n1\t1\tfive\t881250950\n", "u.data: line 2: field 'rating'"),
])
def test_ml100k_broken(tmp_path, u_data, expect):
    _write(tmp_path / "u.data", u_data)
    _write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    with pytest.raises(DataError, match=re.escape(expect)):
        load_movielens(tmp_path)


def test_unknown_item_names_row(tmp_path):
    _write(tmp_path / "u.data", "1\t1\t3\t881250949\n1\t99\t1\t881250950\n")
    _write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    with pytest.raises(DataError, match=r"u.data|row 1: field 'item_id' = 99 is not in the items table"):
        prepare_data(DataConfig(format="movielens", path=str(tmp_path)))


@pytest.mark.parametrize("ratings,expect", [
    ("userId,movieId,rating\n1,1,4\n", r"ratings.csv: line 1: missing column\(s\) \['timestamp'\]"),
    ("userId;movieId;rating;timestamp\n1;1;4;5\n", r"ratings.csv: line 1: missing column.*wrong separator"),
    ("userId,movieId,rating,timestamp\n1,1,4,5\n1,1,4,soon\n", r"ratings.csv: line 3: field 'timestamp'"),
])
def test_movielens_csv_broken(tmp_path, ratings, expect):
    _write(tmp_path / "ratings.csv", ratings)
    _write(tmp_path / "movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n")
    with pytest.raises(DataError, match=expect):
        load_movielens_csv(tmp_path)


def test_movielens_dat_broken(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::x::978300761\n")
    _write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation|Comedy\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 2: field 'rating'"):
        load_movielens_dat(tmp_path)
    _write(tmp_path / "ratings.dat", "1\t1\t5\t978300760\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 1: expected 4 fields separated by '::'"):
        load_movielens_dat(tmp_path)


def test_recbole_broken(tmp_path):
    d = tmp_path / "toy"
    _write(d / "toy.item", "item_id:token\tmovie_title:token_seq\n1\tToy Story\n")
    _write(d / "toy.inter", "user_id:token\titem_id:token\trating:float\n1\t1\t4\n")
    with pytest.raises(DataError, match=r"toy.inter: line 1: missing field 'timestamp'"):
        load_recbole(d)
    _write(d / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t5\n1\t1\t4\t?\n")
    with pytest.raises(DataError, match=r"toy.inter: line 3: field 'timestamp'"):
        load_recbole(d)
    _write(d / "toy.inter", "")
    with pytest.raises(DataError, match=r"toy.inter: empty file"):
        load_recbole(d)


KUAI_HEADER = "user_id\tvideo_id\ttime_ms\tplay_time_ms\tduration_ms\tlabel\n"


def test_kuairand_broken(tmp_path):
    _write(tmp_path / "k.tsv", KUAI_HEADER + "1\t2\t1649581149287\t100\t2000\t1\n1\t3\tnoon\t100\t2000\t0\n")
    with pytest.raises(DataError, match=r"k.tsv: line 3: field 'time_ms'"):
        load_kuairand(tmp_path / "k.tsv")
    _write(tmp_path / "k.tsv", "user_id\tvideo_id\ttime_ms\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"k.tsv: line 1: missing column\(s\) \['play_time_ms', 'duration_ms'\]"):
        load_kuairand(tmp_path / "k.tsv")
    _write(tmp_path / "log_standard_x.csv", KUAI_HEADER.replace("\t", ",").replace(",label", ",is_like")
           + "1,2,1649581149287,100,2000,1\n")
    with pytest.raises(DataError, match=r"log_standard_x.csv: line 1: missing field 'is_hate'"):
        load_kuairand(tmp_path / "log_standard_x.csv")


def test_generic_broken(tmp_path):
    log = _write(tmp_path / "log.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,not a date,5\n")
    spec = GenericLogSpec(path=str(log), columns={"user_id": "uid", "item_id": "iid", "ts": "when", "rating": "stars"},
                          ts_unit="datetime")
    with pytest.raises(DataError, match=r"log.csv: line 3: field 'when': cannot parse timestamp"):
        load_generic(spec)
    spec.columns = {"user_id": "user", "item_id": "iid", "ts": "when"}
    with pytest.raises(DataError, match=r"log.csv: line 1: missing column\(s\) \['user'\]"):
        load_generic(spec)
    _write(tmp_path / "log.csv", "uid,iid,when,stars\n1,10,2024-01-01 10:00,1\n2,11,2024-01-02 10:00,5\n")
    spec.columns = {"user_id": "uid", "item_id": "iid", "ts": "when", "rating": "stars"}
    inter, items = load_generic(spec)
    assert inter.feedback.tolist() == [-1, 1] and inter.ts.iloc[0] == 1704103200
    spec.negative_if = "stars <=>"
    with pytest.raises(DataError, match=r"data.negative_if: cannot evaluate"):
        load_generic(spec)


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
    _write(tmp_path / "u.data", "1\t1\t3\t881250949\n1\t1\t3\t881250949\n")
    _write(tmp_path / "u.item", ML100K_ITEM, "latin-1")
    p = prepare_data(DataConfig(format="movielens", path=str(tmp_path)))
    assert p.report["duplicates_dropped"] == 1 and len(p.interactions) == 1
