"""`prepare_data`: load a log, add implicit negatives, cut per user, build samples, write Parquet."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import section_config, to_dict
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, config_hash, mark_done, read_json, stage_done, write_json, write_parquet
from .implicit import SkipRule, add_implicit_negatives
from .loaders import (GenericLogSpec, RatingRule, load_generic, load_kuairand, load_movielens, load_recbole,
                      recbole_ml100k_path)
from .schema import EXPLICIT, IMPLICIT, NEGATIVE, POSITIVE, DataError, check_interactions, check_items, kind_of
from .splits import DAY, SampleBuilder, SplitConfig, compute_cuts, train_cuts

FORMATS = ("embedded", "movielens", "recbole", "kuairand", "generic")


@dataclass
class DataConfig:
    """Where the log is and how to read it. `format: embedded` is MovieLens-100K from the recbole wheel."""
    format: str = "embedded"
    path: str = ""
    ratings: RatingRule = field(default_factory=RatingRule)
    skips: SkipRule = field(default_factory=SkipRule)
    generic: GenericLogSpec = field(default_factory=GenericLogSpec)
    split: SplitConfig = field(default_factory=SplitConfig)
    horizons: list[int] = field(default_factory=lambda: [1, 3, 7])
    main_horizon: int = 7
    require_text: bool = False
    drop_duplicates: bool = True
    max_users: int = 0  # >0: keep a deterministic subset of users (quick experiments)
    seed: int = 0


def load_log(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Raw (interactions, items, source description) for the configured format."""
    if cfg.format not in FORMATS:
        raise DataError(f"data.format: {cfg.format!r} is not one of {FORMATS}")
    if cfg.format == "embedded":
        path = recbole_ml100k_path()
        inter, items = load_recbole(path, "ml-100k", cfg.ratings)
        return inter, items, f"MovieLens-100K from the recbole wheel ({path})"
    if cfg.format == "generic":
        spec = cfg.generic
        if cfg.path and not spec.path:
            spec.path = cfg.path
        inter, items = load_generic(spec)
        return inter, items, str(spec.path)
    if not cfg.path:
        raise DataError(f"data.path: required for format {cfg.format!r}")
    loader = {"movielens": lambda p: load_movielens(p, cfg.ratings), "recbole": lambda p: load_recbole(p, rule=cfg.ratings),
              "kuairand": load_kuairand}[cfg.format]
    inter, items = loader(Path(cfg.path))
    return inter, items, str(cfg.path)


def canonicalize(inter: pd.DataFrame, items: pd.DataFrame, cfg: DataConfig, source: str):
    """Implicit negatives, feedback kinds, duplicate removal and checks. Returns (inter, items, report)."""
    report: dict[str, int] = {"rows_read": len(inter)}
    if cfg.drop_duplicates:
        before = len(inter)
        inter = inter.drop_duplicates(["user_id", "item_id", "ts", "feedback"])
        report["duplicates_dropped"] = before - len(inter)
    inter, n_implicit = add_implicit_negatives(inter, cfg.skips)
    report["implicit_negatives_added"] = n_implicit
    has_rating = inter["rating"].notna().to_numpy() if "rating" in inter.columns else np.zeros(len(inter), bool)
    implicit = (inter["source"] == IMPLICIT).to_numpy()
    inter = inter.assign(kind=kind_of(inter["feedback"].to_numpy(), implicit, has_rating))
    inter = check_interactions(inter, source)
    items, inter, dropped = check_items(items, inter, source, require_text=cfg.require_text)
    report.update(dropped)
    if cfg.max_users > 0:
        users = np.unique(inter["user_id"].to_numpy())
        keep = np.random.default_rng(cfg.seed).permutation(users)[: cfg.max_users]
        inter = inter[inter["user_id"].isin(keep)].reset_index(drop=True)
        report["users_subsampled_to"] = cfg.max_users
    return inter, items, report


class Samples(dict):
    """Samples per split, held as Arrow tables and turned into pandas on first access."""

    def __getitem__(self, split: str) -> pd.DataFrame:
        value = super().__getitem__(split)
        if not isinstance(value, pd.DataFrame):
            value = value.to_pandas()
            super().__setitem__(split, value)
        return value

    def table(self, split: str) -> pa.Table:
        value = super().__getitem__(split)
        return value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)

    def items(self):
        return [(k, self[k]) for k in self.keys()]


def build_samples(inter: pd.DataFrame, cuts: pd.DataFrame, cfg: DataConfig) -> Samples:
    builder = SampleBuilder(inter, cfg.horizons, cfg.split.max_history)
    out = Samples()
    c = cuts[cuts["test_cut"] >= 0]
    out["test"] = builder.build(c["user_id"].to_numpy(), c["test_cut"].to_numpy(), "test")
    c = cuts[cuts["valid_cut"] >= 0]
    out["valid"] = builder.build(c["user_id"].to_numpy(), c["valid_cut"].to_numpy(), "valid",
                                 limit_ts=c["test_cut"].to_numpy())
    u, t, lim = train_cuts(inter, cuts, cfg.split)
    out["train"] = builder.build(u, t, "train", limit_ts=lim)
    return out


class Prepared:
    """The prepared data of one run: canonical log, items, cuts and samples per split."""

    def __init__(self, interactions, items, cuts, samples, cfg: DataConfig, report: dict | None = None):
        self.interactions, self.items, self.cuts, self.samples = interactions, items, cuts, samples
        self.cfg = cfg
        self.report = report or {}
        self._titles = dict(zip(items["item_id"].to_numpy(), items["title"]))

    @property
    def horizons(self) -> list[int]:
        return list(self.cfg.horizons)

    @property
    def main_horizon(self) -> int:
        return self.cfg.main_horizon

    def item_text(self, item_id: int) -> str:
        return self._titles.get(int(item_id), f"item {item_id}")

    def fit_log(self, split: str = "train") -> pd.DataFrame:
        """What a model fitted for `split` may see: per user, events before that user's cut
        (valid cut for train/valid, test cut for test); users without a cut give all their events."""
        col = {"train": "train_limit", "valid": "train_limit", "test": "test_limit"}[split]
        lim = self.cuts.set_index("user_id")[col].reindex(self.interactions["user_id"]).to_numpy()
        return self.interactions[self.interactions["ts"].to_numpy() < lim].reset_index(drop=True)

    def save(self, out_dir) -> Path:
        out_dir = Path(out_dir)
        write_parquet(out_dir / "interactions.parquet", self.interactions)
        write_parquet(out_dir / "items.parquet", self.items)
        write_parquet(out_dir / "cuts.parquet", self.cuts)
        for split in self.samples.keys():
            with atomic_path(out_dir / f"samples_{split}.parquet") as tmp:
                pq.write_table(self.samples.table(split), tmp)
        write_json(out_dir / "data_config.json", to_dict(self.cfg))
        write_json(out_dir / "report.json", self.report)
        return out_dir

    @classmethod
    def load(cls, out_dir) -> "Prepared":
        from ..config import from_dict

        out_dir = Path(out_dir)
        if not (out_dir / "interactions.parquet").exists():
            raise FileNotFoundError(f"{out_dir}: no prepared data (run `negrec data prepare` first)")
        cfg = from_dict(DataConfig, read_json(out_dir / "data_config.json"), str(out_dir / "data_config.json"))
        samples = Samples({s: pq.read_table(out_dir / f"samples_{s}.parquet") for s in ("train", "valid", "test")})
        report = read_json(out_dir / "report.json") if (out_dir / "report.json").exists() else {}
        return cls(pd.read_parquet(out_dir / "interactions.parquet"), pd.read_parquet(out_dir / "items.parquet"),
                   pd.read_parquet(out_dir / "cuts.parquet"), samples, cfg, report)


def prepare_data(cfg: DataConfig, out_dir=None) -> Prepared:
    """Load, canonicalise, cut and sample; save to `out_dir` when given."""
    t0 = time.perf_counter()
    raw_inter, raw_items, source = load_log(cfg)
    inter, items, report = canonicalize(raw_inter, raw_items, cfg, source)
    cuts = compute_cuts(inter, cfg.split)
    samples = build_samples(inter, cuts, cfg)
    report["source"] = source
    report["seconds"] = round(time.perf_counter() - t0, 3)
    prepared = Prepared(inter, items, cuts, samples, cfg, report)
    if out_dir is not None:
        prepared.save(out_dir)
    return prepared


def data_stats(p: Prepared) -> dict:
    """The numbers `negrec data stats` prints."""
    inter = p.interactions
    fb, src = inter["feedback"].to_numpy(), inter["source"].to_numpy(dtype=object)
    day = inter["ts"].to_numpy() // DAY
    active_days = pd.Series(day).groupby(inter["user_id"].to_numpy()).nunique()
    stats = {
        "users": int(inter["user_id"].nunique()), "items": int(len(p.items)), "interactions": int(len(inter)),
        "negatives": int((fb == NEGATIVE).sum()),
        "negatives_explicit": int(((fb == NEGATIVE) & (src == EXPLICIT)).sum()),
        "negatives_implicit": int(((fb == NEGATIVE) & (src != EXPLICIT)).sum()),
        "positives": int((fb == POSITIVE).sum()),
        "days_spanned": int(day.max() - day.min() + 1) if len(day) else 0,
        "active_days_per_user_mean": round(float(active_days.mean()), 2),
        "active_days_per_user_median": float(active_days.median()),
        "min_context": p.cfg.split.min_context,
    }
    for split in ("train", "valid", "test"):
        s = p.samples[split]
        stats[f"{split}_samples"] = int(len(s))
        stats[f"{split}_users"] = int(s["user_id"].nunique())
        for h in p.horizons:
            sizes = s[f"future_neg_h{h}"].map(len).to_numpy()
            stats[f"{split}_users_nonempty_F{h}"] = int((sizes > 0).sum()) if split != "train" else int((sizes > 0).sum())
            stats[f"{split}_mean_F{h}"] = round(float(sizes[sizes > 0].mean()), 3) if (sizes > 0).any() else 0.0
    stats.update({k: v for k, v in p.report.items() if k != "seconds"})
    return stats


def format_stats(stats: dict, horizons: list[int]) -> str:
    lines = [
        f"source           {stats.get('source', '')}",
        f"users            {stats['users']:,}",
        f"items            {stats['items']:,}",
        f"interactions     {stats['interactions']:,}",
        f"negatives        {stats['negatives']:,} (explicit {stats['negatives_explicit']:,}, implicit {stats['negatives_implicit']:,})",
        f"positives        {stats['positives']:,}",
        f"days spanned     {stats['days_spanned']}",
        f"active days/user mean {stats['active_days_per_user_mean']}, median {stats['active_days_per_user_median']}",
        f"dropped          duplicates {stats.get('duplicates_dropped', 0)}, items without text {stats.get('items_without_text', 0)}",
        f"cuts             per-user day boundaries, >= {stats['min_context']} context events",
    ]
    for split in ("train", "valid", "test"):
        parts = ", ".join(f"H={h}: {stats[f'{split}_users_nonempty_F{h}']:,} (mean |F_H| {stats[f'{split}_mean_F{h}']})"
                          for h in horizons)
        lines.append(f"{split:<6} samples {stats[f'{split}_samples']:,}, users {stats[f'{split}_users']:,}; non-empty F_H: {parts}")
    return "\n".join(lines)


def run_prepare(raw: dict, run_dir) -> dict:
    """CLI/pipeline entry: prepare into run_dir/data unless it is up to date; print the statistics."""
    cfg = section_config(DataConfig, raw, "data")
    out = Path(run_dir) / "data"
    h = config_hash(to_dict(cfg))
    if stage_done(out, h):
        prepared = Prepared.load(out)
    else:
        prepared = prepare_data(cfg, out)
        mark_done(out, h)
    stats = data_stats(prepared)
    write_json(out / "stats.json", stats)
    print(format_stats(stats, prepared.horizons))
    return stats
