"""The lean in-memory layout (packed-key sort, narrow dtypes, compact samples) gives exactly the
documented schema and the same rows as the plain pandas way."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from negrec.data import Prepared
from negrec.data.schema import sort_log


def _reference(user, item, ts, fb):
    df = pd.DataFrame({"u": user, "i": item, "t": ts, "f": fb})
    df = df.drop_duplicates(["u", "i", "t", "f"])  # keeps the first in file order
    df = df.iloc[np.lexsort((df.t.to_numpy(), df.u.to_numpy()))]  # stable: ties keep file order
    return df.index.to_numpy()


@pytest.mark.parametrize("uscale,tscale", [(1, 1), (10**12, 10**9), (10**12, 10**14)],
                         ids=["packed", "packed-user-ranks", "lexsort-fallback"])
def test_sort_log_matches_lexsort_and_drop_duplicates(uscale, tscale):
    rng = np.random.default_rng(0)
    n = 50_000
    user = rng.integers(0, 300, n) * uscale  # wide ids: ranks, or a lexsort when even those do not fit
    ts = rng.integers(0, 50, n) * tscale  # few distinct seconds: many ties
    item = rng.integers(0, 20, n)
    fb = rng.integers(-1, 2, n).astype(np.int8)
    order, u, t, n_dup = sort_log(user, ts, (item, fb))
    ref = _reference(user, item, ts, fb)
    assert n_dup == n - len(ref) and n_dup > 0
    assert np.array_equal(order, ref)
    assert np.array_equal(u, user[ref]) and np.array_equal(t, ts[ref])


def test_sort_log_sorted_input_is_left_alone():
    user = np.repeat(np.arange(5), 4)
    ts = np.tile(np.arange(4), 5)
    order, u, t, n_dup = sort_log(user, ts, (np.arange(20), np.zeros(20, np.int8)))
    assert order is None and n_dup == 0 and np.array_equal(u, user) and np.array_equal(t, ts)


def test_prepared_schema_and_round_trip(ml100k_prepared, tmp_path):
    p = ml100k_prepared
    inter = p.interactions
    for c in ("user_id", "item_id", "ts"):
        assert inter[c].dtype == np.int64, c  # docs/ARCHITECTURE.md "Data layer"
    assert inter["feedback"].dtype == np.int8
    assert list(inter.columns[:6]) == ["user_id", "item_id", "ts", "feedback", "source", "rating"]
    assert set(inter["source"].astype(str)) <= {"explicit", "implicit"}
    table = p.samples.table("train")
    assert table.schema.field("neg_items").type == pa.large_list(pa.int64())
    assert table.schema.field("neg_kinds").type == pa.large_list(pa.string())
    assert table.schema.field("mixed_feedback").type == pa.large_list(pa.int8())
    assert table.schema.field("next_neg").type == pa.int64()
    p.save(tmp_path / "data")
    q = Prepared.load(tmp_path / "data")
    pd.testing.assert_frame_equal(q.interactions, inter)
    for split in ("train", "valid", "test"):
        assert q.samples.table(split).equals(p.samples.table(split)), split
        assert q.samples.num_rows(split) == p.samples.num_rows(split)
        assert np.array_equal(q.samples.list_sizes(split, "future_neg_h7"), p.samples.list_sizes(split, "future_neg_h7"))
    assert len(p.fit_log("train")) == len(q.fit_log("train")) and p.fit_log("test").user_id.dtype == np.int64
