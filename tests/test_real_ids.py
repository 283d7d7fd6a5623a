"""A platform-shaped log end to end: string user ids, 64-bit sparse item ids, a hive-partitioned
Parquet folder -> data -> encode -> tokenize -> build-model -> predict on a tiny model, with
predictions (and the codebook export) in the log's own ids."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from negrec.cli import main

DAY = 86_400
T0 = 1_704_067_200  # 2024-01-01
USERS = [f"user-{c}{c}" for c in "ABCDEFGHIJKL"]
ITEMS = [10**12 + 7919 * k for k in range(30)]  # 64-bit, sparse: a dense table would need 10^12 slots


def _hive_log(root):
    rng = np.random.default_rng(0)
    rows = []
    for u_i, u in enumerate(USERS):
        for e in range(16):
            rows.append({"user": u, "item": ITEMS[int(rng.integers(0, len(ITEMS)))], "day": e // 2,
                         "ts": T0 + (e // 2) * DAY + u_i * 60 + e, "rating": float(1 + (u_i + e) % 5)})
    df = pd.DataFrame(rows).drop_duplicates(["user", "item", "ts"])
    for day, part in df.groupby("day"):
        d = root / f"day={day}"
        d.mkdir(parents=True)
        part.drop(columns="day").to_parquet(d / "part-0.parquet", index=False)
    return df


@pytest.mark.timeout(600)
def test_string_and_sparse_ids_through_predict(tmp_path, one_thread, capsys):
    log = _hive_log(tmp_path / "log")
    cfg = {
        "data": {"format": "generic", "generic": {
            "path": str(tmp_path / "log"), "columns": {"user_id": "user", "item_id": "item", "ts": "ts", "rating": "rating"},
            "ts_unit": "s", "negative_if": "rating <= 2", "positive_if": "rating >= 4"},
            "split": {"cut_unit": "event", "min_context": 3}},
        "encode": {"text_weight": 0.0, "collab_weight": 1.0, "svd_dim": 8},
        "tokenize": {"method": "rqkmeans", "codebook_size": 8},
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
        "eval": {"policies": ["model"], "num_beams": 5, "k": 5, "max_users": 6, "metrics": {"ks": [5]}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    for stage in (["data"], ["encode"], ["tokenize"], ["build-model"], ["predict"], ["export-codebook"]):
        assert main([*stage, "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--threads", "1"]) == 0, \
            capsys.readouterr().err

    users = pd.read_parquet(run / "data" / "id_map_users.parquet")
    items = pd.read_parquet(run / "data" / "id_map_items.parquet")
    assert sorted(users["original"]) == sorted(set(log["user"])) and users["id"].tolist() == list(range(len(users)))
    assert set(items["original"]) == set(log["item"]) and items["id"].max() < 64  # dense internal ids
    pred = pd.read_parquet(run / "eval" / "predictions.parquet")
    assert len(pred) > 0
    assert set(pred["original_user_id"]) <= set(USERS) and set(pred["original_item_id"]) <= set(ITEMS)
    umap = dict(zip(users["id"], users["original"]))
    assert [umap[u] for u in pred["user_id"]] == pred["original_user_id"].tolist()
    exported = pd.read_parquet(run / "export" / "item_id_map.parquet")
    assert set(exported["original"]) == set(ITEMS)

    # an outside tool's file in the log's own ids is scored through the same map
    mine = pred[["original_user_id", "cut_ts", "rank", "original_item_id"]].rename(
        columns={"original_user_id": "user_id", "original_item_id": "item_id"})
    mine.to_parquet(tmp_path / "mine.parquet")
    assert main(["evaluate", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run),
                 "--predictions", str(tmp_path / "mine.parquet")]) == 0, capsys.readouterr().err
    ours = json.loads((tmp_path / "mine.metrics.json").read_text())["mine"]
    assert 0.0 <= ours["recall@5_h7"] <= 1.0
