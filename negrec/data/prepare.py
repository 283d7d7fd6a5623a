"""`prepare_data`: load a log, add implicit negatives, cut per user, build samples, write Parquet."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import section_config, to_dict
from ..io import atomic_path, inputs_fingerprint, read_json, write_json, write_parquet
from .arrays import narrow_int, release_memory, run_starts
from .generic import OPTIONAL_FLOATS, GenericLogSpec, load_generic
from .ids import IdMap, encode_ids
from .implicit import SkipRule, skip_mask
from .loaders import RatingRule, load_kuairand, load_movielens, load_recbole, recbole_ml100k_path
from .schema import (EXPLICIT, ITEM_COLUMNS, KIND_DTYPE, NEGATIVE, POSITIVE, DataError, ItemLookup, check_feedback,
                     clean_items, cut_label, implicit_mask, kind_codes, sort_log_owned, source_column, unknown_item_error)
from .splits import (DAY, SampleBuilder, SampleTable, SplitConfig, compute_cuts, cuts_for_test, day_cuts_drop_most,
                     resolve_cut_unit, train_cuts, users_with_test_cut)
from .validate import blank_values, check_ratings, check_splittable, check_timestamps, conflict_error

FORMATS = ("embedded", "movielens", "recbole", "kuairand", "generic")
CONFLICT_RULES = ("error", "negative")


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
    require_text: bool = False  # drop items with neither text nor title (generic logs: a title stands in for text)
    drop_duplicates: bool = True
    # rows with the same user, item and second but different feedback: "error" refuses the log,
    # "negative" keeps the most negative of them (a dislike wins) and counts the others dropped
    conflicts: str = "error"
    max_users: int = 0  # >0: keep a deterministic subset of users (quick experiments)
    seed: int = 0

    def __post_init__(self):
        check_data_config(self)


def cut_unit_of(raw: dict) -> str | None:
    """`data.split.cut_unit`, `auto` as the data stage chose it from the log (`raw["_cut_unit"]`,
    `negrec.config.fill_cut_unit`); None while that choice is not made yet."""
    from ..config import section_config

    unit = section_config(DataConfig, raw, "data").split.cut_unit
    return raw.get("_cut_unit") if unit == "auto" else unit


def cuts_at_day_start(raw: dict) -> bool:
    """Whether the config's cuts fall at the start (00:00 UTC) of a day (`data.split.cut_unit: day`, or
    `auto` where the data stage chose day):
    what is predicted is then the user's next days, seen from before they start, not the rest of a
    burst. The compact format's day breaks and the timeline SFT's day shuffle follow it unless set."""
    unit = cut_unit_of(raw)
    if unit is None:
        raise ValueError("data.split.cut_unit: auto is chosen from the log by the data stage: run `negrec data` "
                         "in this run folder first (from Python: negrec.config.fill_cut_unit(raw, run_dir) reads "
                         "its choice)")
    return unit == "day"


def check_data_config(cfg: "DataConfig") -> None:
    """Ranges of the data section (the horizon is defined here, once: every stage reads it)."""
    from ..config import ConfigError, nearest

    if cfg.format not in FORMATS:
        raise ConfigError(f"data.format: {cfg.format!r} is not one of {'|'.join(FORMATS)}")
    if cfg.format == "embedded" and cfg.path:  # the embedded log reads no path: this one would be ignored
        raise ConfigError(f"data.path: {cfg.path!r} is set but data.format is embedded (the ML-100K inside the "
                          f"recbole wheel); set data.format to what the path holds ({'|'.join(FORMATS[1:])})")
    unknown = [k for k in cfg.generic.item_columns if k not in ITEM_COLUMNS]  # a typo would drop its column silently
    if unknown:
        raise ConfigError(f"data.generic.item_columns: {unknown[0]!r} is not one of {'|'.join(ITEM_COLUMNS)}"
                          f"{nearest(unknown[0], ITEM_COLUMNS)} (categorical features: data.generic.feature_columns)")
    hs = list(cfg.horizons)
    if not hs or any(h <= 0 for h in hs):
        raise ConfigError(f"data.horizons: every horizon must be a positive number of days, got {hs}")
    if hs != sorted(set(hs)):
        raise ConfigError(f"data.horizons: must be sorted without repeats, e.g. {sorted(set(hs))}, got {hs}")
    if cfg.main_horizon not in hs:
        raise ConfigError(f"data.main_horizon: {cfg.main_horizon} is not one of data.horizons {hs}")
    if cfg.conflicts not in CONFLICT_RULES:
        raise ConfigError(f"data.conflicts: {cfg.conflicts!r} is not one of {'|'.join(CONFLICT_RULES)}"
                          f"{nearest(cfg.conflicts, CONFLICT_RULES)}")
    if cfg.max_users < 0:
        raise ConfigError(f"data.max_users: must be >= 0, got {cfg.max_users}")


def load_log(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Raw (interactions, items, source description) for the configured format."""
    if cfg.format not in FORMATS:
        raise DataError(f"data.format: {cfg.format!r} is not one of {FORMATS}")
    if cfg.format == "generic" and cfg.path and cfg.generic.path and cfg.path != cfg.generic.path:
        raise DataError(f"data.path {cfg.path!r} and data.generic.path {cfg.generic.path!r} differ: set one")
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


_WIDE_FIELDS = ("user_id", "item_id", "ts")  # int64 in the documented schema; narrower in memory
_FLOAT_FIELDS = ("rating", "play_time_s", "duration_s")


def _canonicalize(box: list, items: pd.DataFrame, cfg: DataConfig, source: str, id_maps: dict | None = None):
    """Implicit negatives, feedback kinds, duplicate removal and checks; returns (inter, items, report).
    Takes the log frame out of `box` so that its columns are freed as soon as the
    sorted ones exist (a 10M-row log never lives twice in memory). `id_maps` (from `encode_ids`)
    show ids in messages as the file wrote them."""
    cols, flags, names, origin = _take_columns(box, source)
    report: dict[str, int] = {"rows_read": len(flags["feedback"])}
    original_item_id = id_maps["items"].to_original if id_maps else None  # item ids in messages, as the files write them
    items, n_no_text = clean_items(items, source, cfg.require_text, original_item_id)
    if cfg.require_text:
        report["items_without_text"] = n_no_text
    kept_rows = _keep_known_items(cols, flags, items, cfg, origin, source, original_item_id, report)
    out, implicit, conflicts = _sorted_columns(cols, flags, cfg, report)
    if "rows" in conflicts:
        _refuse_conflicts(conflicts, kept_rows, origin, source, id_maps)
    fb = out["feedback"]
    report["implicit_negatives_added"] = _add_skip_negatives(fb, implicit, out, cfg)
    has_rating = ~np.isnan(out["rating"]) if "rating" in out and out["rating"].dtype.kind == "f" else None
    kind = kind_codes(fb, implicit, has_rating)
    del has_rating
    out["source"] = source_column(implicit)
    out["kind"] = pd.Categorical.from_codes(kind, dtype=KIND_DTYPE)
    inter = pd.DataFrame({c: out[c] for c in [*names, "kind"]}, copy=False)
    del out, fb, implicit, kind
    if cfg.max_users > 0:
        inter = _subsample_users(inter, cfg, report)
    return inter, items, report


def _take_columns(box: list, source: str) -> tuple[dict, dict, list[str], object]:
    """The log frame in `box` as arrays, the frame itself freed: (columns, {"feedback": checked
    feedback, "implicit": implicit-source flags}, the frame's column names, its origin)."""
    frame = box.pop()
    origin = frame.attrs.get("origin")
    missing = [c for c in ("user_id", "item_id", "ts", "feedback", "source") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: interactions lack field(s) {missing}")
    if len(frame) == 0:
        raise DataError(f"{source}: no interactions (empty file?)")
    cols = {c: frame[c].to_numpy() for c in frame.columns if c not in ("source", "kind")}
    flags = {"implicit": implicit_mask(frame["source"])}
    names = [c for c in frame.columns if c != "kind"]
    del frame
    for c in ("user_id", "item_id", "ts"):
        if cols[c].dtype.kind not in "iu":
            raise DataError(f"{source}: field {c!r} must be integers, got {cols[c].dtype}")
    flags["feedback"] = check_feedback(cols.pop("feedback"), origin, source)
    return cols, flags, names, origin


def _keep_known_items(cols: dict, flags: dict, items: pd.DataFrame, cfg: DataConfig, origin, source: str,
                      original_item_id, report: dict) -> np.ndarray | None:
    """Refuse an item id the items table lacks, or (`require_text`, which drops items without text)
    drop its interactions from `cols` and `flags` in place; returns the kept rows' positions (None: all)."""
    known = ItemLookup(items["item_id"].to_numpy()).known(cols["item_id"])
    if known.all():
        return None
    if not cfg.require_text:
        raise unknown_item_error(origin, cols["item_id"], known, source, original_item_id)
    report["interactions_of_dropped_items"] = int((~known).sum())
    for arrays in (cols, flags):
        for c in list(arrays):
            arrays[c] = arrays[c][known]
    return np.flatnonzero(known)


def _sorted_columns(cols: dict, flags: dict, cfg: DataConfig, report: dict) -> tuple[dict, np.ndarray, dict]:
    """Every column in (user, ts) order, one at a time so that the log is never held twice (emptying
    `cols` and `flags`), exact duplicates dropped (`drop_duplicates`) and conflicting ones found or
    resolved (`conflicts`); returns (columns, implicit flags, conflicts: "rows" holds any to refuse)."""
    carry = {"item_id": narrow_int(cols.pop("item_id")), "feedback": flags.pop("feedback"),
             "implicit": flags.pop("implicit")}
    names_rest = [c for c in cols if c not in ("user_id", "ts")]
    for c in names_rest:
        carry[c] = cols.pop(c)
    dtypes = {c: np.float32 for c in names_rest if c in _FLOAT_FIELDS and carry[c].dtype.kind == "f"}
    box = {"user": narrow_int(cols.pop("user_id")), "ts": cols.pop("ts")}
    conflicts = {"key": "item_id", "value": "feedback", "rule": cfg.conflicts}
    user, ts, n_dup, moved = sort_log_owned(box, carry, ["item_id", "feedback"] if cfg.drop_duplicates else None,
                                            dtypes, conflicts)
    if cfg.conflicts == "negative":
        report["conflicts_resolved"] = conflicts.get("resolved", 0)
    if cfg.drop_duplicates:
        report["duplicates_dropped"] = n_dup
    if not moved:  # already in order: copy what is modified later rather than write into the caller's arrays
        carry["feedback"] = carry["feedback"].copy()
        carry["implicit"] = carry["implicit"].copy()
    implicit = carry.pop("implicit")
    out = {"user_id": user, "item_id": carry.pop("item_id"), "ts": ts, "feedback": carry.pop("feedback")}
    out.update(carry)
    return out, implicit, conflicts


def _add_skip_negatives(fb: np.ndarray, implicit: np.ndarray, cols: dict, cfg: DataConfig) -> int:
    """Mark fast skips (watch time, `data.skips`) as implicit negatives in place; returns how many."""
    if not (cfg.skips.enabled and "play_time_s" in cols and "duration_s" in cols):
        return 0
    skip = skip_mask(fb, cols["play_time_s"], cols["duration_s"], cfg.skips)
    fb[skip] = NEGATIVE
    implicit |= skip
    return int(skip.sum())


def _subsample_users(inter: pd.DataFrame, cfg: DataConfig, report: dict) -> pd.DataFrame:
    """A seeded sample of `cfg.max_users` users with all their rows."""
    users = inter["user_id"].to_numpy()
    uniq = users[run_starts(users)]
    keep = np.random.default_rng(cfg.seed).permutation(uniq)[: cfg.max_users]
    sel = np.isin(users, keep)
    report["rows_dropped_subsampling"] = int((~sel).sum())
    report["users_subsampled_to"] = cfg.max_users
    return inter[sel].reset_index(drop=True)


def _refuse_conflicts(conflicts: dict, kept_rows, origin, source: str, id_maps: dict | None):
    rows = conflicts["rows"] if kept_rows is None else kept_rows[conflicts["rows"]]
    u, i, t = conflicts["first"]
    if id_maps:
        u, i = id_maps["users"].to_original([u])[0], id_maps["items"].to_original([i])[0]
    raise conflict_error(origin, rows, u, i, t, source)


class Samples(dict):
    """Samples per split: compact `SampleTable`s (or Arrow tables when loaded), turned into the
    on-disk Arrow schema on `table(split)` and into pandas on first item access."""

    def __getitem__(self, split: str) -> pd.DataFrame:
        value = super().__getitem__(split)
        if not isinstance(value, pd.DataFrame):
            value = self.table(split).to_pandas()
            super().__setitem__(split, value)
        return value

    def table(self, split: str) -> pa.Table:
        value = super().__getitem__(split)
        if isinstance(value, SampleTable):
            return value.to_arrow()
        return value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)

    def num_rows(self, split: str) -> int:
        return len(super().__getitem__(split))

    def _arrow_column(self, split: str, column: str):
        col = super().__getitem__(split).column(column)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    def column(self, split: str, column: str) -> np.ndarray:
        """One scalar column of a split, without converting the whole split."""
        value = super().__getitem__(split)
        if isinstance(value, pd.DataFrame):
            return value[column].to_numpy()
        return self._arrow_column(split, column).to_numpy(zero_copy_only=False)

    def list_sizes(self, split: str, column: str) -> np.ndarray:
        """Length of each row's list in `column`, without converting the whole split."""
        value = super().__getitem__(split)
        if isinstance(value, pd.DataFrame):
            return value[column].map(len).to_numpy()
        return np.diff(self._arrow_column(split, column).offsets.to_numpy())

    def list_values(self, split: str, column: str) -> np.ndarray:
        """Every row's list in `column`, concatenated (row sizes: `list_sizes`)."""
        value = super().__getitem__(split)
        if isinstance(value, pd.DataFrame):
            return np.concatenate([np.asarray(v, np.int64) for v in value[column]] or [np.zeros(0, np.int64)])
        return self._arrow_column(split, column).flatten().to_numpy(zero_copy_only=False)

    def items(self):
        return [(k, self[k]) for k in self.keys()]


def build_samples(inter: pd.DataFrame, cuts: pd.DataFrame, cfg: DataConfig) -> Samples:
    builder = SampleBuilder(inter, cfg.horizons, cfg.split.max_history)
    release_memory()
    out = Samples()
    u, t = cuts_for_test(inter, cuts, cfg.split)  # one row per user, more with rolling cuts
    out["test"] = builder.build(u, t, "test")
    release_memory()
    c = cuts[cuts["valid_cut"] >= 0]
    out["valid"] = builder.build(c["user_id"].to_numpy(), c["valid_cut"].to_numpy(), "valid",
                                 limit_ts=c["test_cut"].to_numpy())
    release_memory()
    u, t, lim = train_cuts(inter, cuts, cfg.split)
    out["train"] = builder.build(u, t, "train", limit_ts=lim)
    return out


def _widen(df: pd.DataFrame) -> pd.DataFrame:
    """The log with int64 ids and ts (the documented schema); other columns are shared, not copied."""
    if all(df[c].dtype == np.int64 for c in _WIDE_FIELDS if c in df.columns):
        return df
    return pd.DataFrame({c: (df[c].to_numpy().astype(np.int64) if c in _WIDE_FIELDS else df[c]) for c in df.columns},
                        copy=False)


def fit_limit_column(split: str) -> str:
    """The cuts column bounding what a model fitted for `split` may see (see `Prepared.fit_log`)."""
    return {"train": "train_limit", "valid": "train_limit", "test": "test_limit"}[split]


class Prepared:
    """The prepared data of one run: canonical log, items, cuts and samples per split."""

    def __init__(self, interactions, items, cuts, samples, cfg: DataConfig, report: dict | None = None,
                 id_maps: dict | None = None):
        # the log is held with the narrowest dtypes that fit (int32 ids and ts for a 10M-row log);
        # `interactions` shows it with the documented int64 columns, built on first access
        self._log, self._wide = interactions, None
        self.items, self.cuts, self.samples = items, cuts, samples
        self.cfg = cfg
        self.report = report or {}
        self._titles = None
        # internal id -> the id of the original log ({"users": IdMap, "items": IdMap}; identity by default)
        self.id_maps = id_maps or {"users": IdMap(), "items": IdMap()}

    @property
    def interactions(self) -> pd.DataFrame:
        """The canonical log (docs/ARCHITECTURE.md): int64 ids and ts, sorted by (user_id, ts)."""
        if self._wide is None:
            self._wide = _widen(self._log)
        return self._wide

    @interactions.setter
    def interactions(self, df: pd.DataFrame) -> None:
        self._log, self._wide = df, None

    @property
    def horizons(self) -> list[int]:
        return list(self.cfg.horizons)

    @property
    def main_horizon(self) -> int:
        return self.cfg.main_horizon

    def item_text(self, item_id: int) -> str:
        if self._titles is None:
            self._titles = dict(zip(self.items["item_id"].to_numpy().tolist(), self.items["title"]))
        title = self._titles.get(int(item_id))
        return (cut_label(title) if isinstance(title, str) else "") or f"item {item_id}"  # no title: its id

    def fit_log(self, split: str = "train") -> pd.DataFrame:
        """What a model fitted for `split` may see: per user, events before that user's cut
        (valid cut for train/valid, test cut for test); users without a cut give all their events."""
        return _widen(self._log[self._fit_mask(split)].reset_index(drop=True))

    def _fit_mask(self, split: str) -> np.ndarray:
        """Which rows of the log `fit_log(split)` keeps."""
        users = self._log["user_id"].to_numpy()
        starts = run_starts(users)
        lim = np.repeat(self.cuts.set_index("user_id")[fit_limit_column(split)].reindex(users[starts]).to_numpy(),
                        np.diff(np.r_[starts, len(users)]))
        return self._log["ts"].to_numpy() < lim

    def unlogged_targets(self, split: str, k: int = 10) -> tuple[float, float]:
        """(share of the split's F_H targets, main horizon, that never occur in `fit_log(split)`;
        mean over rows with a non-empty F_H of min(logged targets, k) / min(|F_H|, k)). The second is
        the capped Recall@k a method reaches at best when it ranks only items of the log it was fitted
        on (the baselines do): on a log whose disliked items are mostly new, exact-item recall is capped."""
        col = f"future_neg_h{self.main_horizon}"
        sizes, targets = self.samples.list_sizes(split, col), self.samples.list_values(split, col)
        if not len(targets):
            return float("nan"), float("nan")
        items = self._log["item_id"].to_numpy()[self._fit_mask(split)]
        logged = np.zeros(max(int(targets.max()), int(items.max(initial=0))) + 1, bool)
        logged[items] = True
        hit = logged[targets]
        n_logged = np.bincount(np.repeat(np.arange(len(sizes)), sizes), weights=hit, minlength=len(sizes))[sizes > 0]
        ceiling = np.minimum(n_logged, k) / np.minimum(sizes[sizes > 0], k)
        return float(1 - hit.mean()), float(ceiling.mean())

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
        save_id_maps(out_dir, self.id_maps)
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
                   pd.read_parquet(out_dir / "cuts.parquet"), samples, cfg, report, load_id_maps(out_dir))


ID_MAP_FILES = {"users": "id_map_users.parquet", "items": "id_map_items.parquet"}


def save_id_maps(out_dir, maps: dict) -> None:
    """data/id_map_users.parquet and data/id_map_items.parquet (id, original) where ids were mapped;
    a stale map of an earlier run is removed where the ids are now the originals."""
    for kind, name in ID_MAP_FILES.items():
        m = maps.get(kind) or IdMap()
        if m.identity:
            (Path(out_dir) / name).unlink(missing_ok=True)
        else:
            m.save(Path(out_dir) / name)


def load_id_maps(out_dir) -> dict:
    """{"users": IdMap, "items": IdMap} of a prepared run folder's data/ (identity where no file)."""
    return {kind: IdMap.load(Path(out_dir) / name) for kind, name in ID_MAP_FILES.items()}


def prepare_data(cfg: DataConfig, out_dir=None) -> Prepared:
    """Load, canonicalise, cut and sample; save to `out_dir` when given."""
    t0 = time.perf_counter()
    raw_inter, raw_items, source = load_log(cfg)
    id_maps = validate_loaded(raw_inter, raw_items, cfg, source)
    blanks = blank_values(raw_inter, source, OPTIONAL_FLOATS) if cfg.format == "generic" else {}
    box = [raw_inter]
    del raw_inter  # _canonicalize frees the raw columns as it goes
    release_memory()
    inter, items, report = _canonicalize(box, raw_items, cfg, source, id_maps)
    release_memory()
    split, chosen = resolve_cut_unit(inter, cfg.split)
    if chosen:
        cfg = replace(cfg, split=split)  # data_config.json records the unit chosen; later stages read it
        report["cut_unit_auto"] = chosen
    cuts = compute_cuts(inter, cfg.split)
    if not chosen and cfg.split.cut_unit == "day" and not cfg.split.global_test_date:
        # day cuts written for a bursty log: the stats warn (`_split_warnings`)
        report["test_users_by_unit"] = {"day": int((cuts["test_cut"] >= 0).sum()),
                                        **users_with_test_cut(inter, cfg.split, ("event",))}
    check_splittable(inter["feedback"].to_numpy(), inter["user_id"].to_numpy(), int((cuts["test_cut"] >= 0).sum()),
                     source, _negative_rule(cfg), cfg.split.min_context, "auto" if chosen else cfg.split.cut_unit)
    samples = build_samples(inter, cuts, cfg)
    release_memory()
    report["source"] = source
    if blanks:
        report["blank_values"] = blanks
    report["id_map"] = {k: ("original ids" if m.identity else f"mapped {len(m.original)} ids (data/{ID_MAP_FILES[k]})")
                        for k, m in id_maps.items()}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    prepared = Prepared(inter, items, cuts, samples, cfg, report, id_maps)
    if out_dir is not None:
        prepared.save(out_dir)
    return prepared


def validate_loaded(inter: pd.DataFrame, items: pd.DataFrame, cfg: DataConfig, source: str) -> dict:
    """The checks of a freshly loaded log (negrec.data.validate, negrec.data.ids): ids mapped to
    internal ids in place, timestamps and ratings in range. Returns the id maps."""
    id_maps = encode_ids(inter, items, source)
    ts = inter["ts"].to_numpy()
    if ts.dtype.kind not in "iu":
        raise DataError(f"{source}: field 'ts' must be integer seconds, got {ts.dtype}")
    check_timestamps(ts, inter.attrs.get("origin"), source)
    check_ratings(inter, source, cfg.ratings.min_rating, cfg.ratings.max_rating)
    return id_maps


def _negative_rule(cfg: DataConfig) -> str:
    if cfg.format == "generic":
        return f"data.generic.negative_if = {cfg.generic.negative_if!r}"
    if cfg.format == "kuairand":
        return "is_hate == 1 / label == 0, or a fast skip (data.skips)"
    return f"rating <= data.ratings.negative_max = {cfg.ratings.negative_max}"


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
        "cut_unit": p.cfg.split.cut_unit,
        "rolling_every": p.cfg.split.rolling_every,
        "rolling_max": p.cfg.split.rolling_max,
        "main_horizon": p.main_horizon,
    }
    for split in ("train", "valid", "test"):
        sizes_of = {h: p.samples.list_sizes(split, f"future_neg_h{h}") for h in p.horizons}
        stats[f"{split}_samples"] = int(p.samples.num_rows(split))
        stats[f"{split}_users"] = int(pd.unique(p.samples.column(split, "user_id")).size)
        for h, sizes in sizes_of.items():
            stats[f"{split}_users_nonempty_F{h}"] = int((sizes > 0).sum())
            stats[f"{split}_mean_F{h}"] = round(float(sizes[sizes > 0].mean()), 3) if (sizes > 0).any() else 0.0
            # over every sample (for test: every test user), empty targets included
            stats[f"{split}_mean_F{h}_all"] = round(float(sizes.mean()), 3) if len(sizes) else 0.0
    for split in ("valid", "test"):  # train rows' futures lie in the training log by construction
        share, ceiling = p.unlogged_targets(split)
        if not np.isnan(share):  # nan: the split has no targets
            stats[f"{split}_targets_unlogged_share"] = round(share, 4)
            stats[f"{split}_logged_recall@10_ceiling"] = round(ceiling, 4)
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
        f"dropped rows     duplicates {stats.get('duplicates_dropped', 0):,}, "
        f"of items without text {stats.get('interactions_of_dropped_items', 0):,} "
        f"({stats.get('items_without_text', 0):,} items dropped), subsampling {stats.get('rows_dropped_subsampling', 0):,}"
        + (f", conflicting duplicates {stats['conflicts_resolved']:,} (data.conflicts: negative)"
           if "conflicts_resolved" in stats else ""),
        f"cuts             {_describe_cuts(stats)}",
    ]
    for name, blank in stats.get("blank_values", {}).items():
        lines.append(f"blank cells      {name}: {blank['cells']:,} (the first at {blank['first']}), no value: "
                     "a rule reading it is false there")
    for split in ("train", "valid", "test"):
        parts = ", ".join(f"H={h}: {stats[f'{split}_users_nonempty_F{h}']:,} (mean |F_H| {stats[f'{split}_mean_F{h}']})"
                          for h in horizons)
        lines.append(f"{split:<6} samples {stats[f'{split}_samples']:,}, users {stats[f'{split}_users']:,}; non-empty F_H: {parts}")
    lines += _split_warnings(stats, max(horizons))
    if all(f"test_mean_F{h}_all" in stats for h in horizons):
        lines.append("test   mean |F_H| over all test users (empty included): "
                     + ", ".join(f"H={h}: {stats[f'test_mean_F{h}_all']}" for h in horizons))
    if "test_targets_unlogged_share" in stats:
        lines.append(_describe_unlogged(stats))
    return "\n".join(lines)


def _describe_unlogged(stats: dict) -> str:
    """The share of targets no fitted model saw in its log, and what that caps exact-item recall at."""
    shares = ", ".join(f"{split} {stats[f'{split}_targets_unlogged_share']:.0%}" for split in ("valid", "test")
                       if f"{split}_targets_unlogged_share" in stats)
    line = (f"new targets      F_{stats['main_horizon']} items absent from the log a model is fitted on: {shares}; test Recall@10 "
            f"of a method ranking only logged items is at most {stats['test_logged_recall@10_ceiling']:.3f}")
    if stats["test_targets_unlogged_share"] > 0.5:
        line += ("\n                 (warning: most future negatives are items the log never shows before the cut: "
                 "exact-item recall is capped for every method; see SID-prefix recall)")
    return line


def _split_warnings(stats: dict, horizon: int) -> list[str]:
    """Warnings on splits that leave a stage without its rows, each with the setting that gives them."""
    fix = ("set data.split.cut_unit: event (a day cut needs min_context events on earlier days, which a log "
           "of few days lacks) or lower data.split.min_context" if stats.get("cut_unit", "day") == "day"
           else "lower data.split.min_context")
    out = []
    if not stats["valid_samples"]:
        out.append("warning          no validation sample: the SFT's epoch and GRPO's stage cannot be chosen on "
                   f"validation, and the SFT keeps its last epoch; {fix}")
    if not stats[f"train_users_nonempty_F{horizon}"]:
        out.append(f"warning          no train sample with a dislike in the {horizon} days after its cut "
                   f"(a cut needs data.split.min_context events before it): GRPO, which trains on them, will not run; {fix}")
    users = stats.get("test_users_by_unit")
    if users and day_cuts_drop_most(users):
        out.append(f"warning          day cuts give {users['day']:,} users a test cut, event cuts would give "
                   f"{users['event']:,}: most users are active on a day or two (a bursty log); "
                   "data.split.cut_unit: event (or auto, which chooses from the log) scores the others")
    main = stats.get("main_horizon", horizon)
    if stats["test_samples"] and not stats[f"test_users_nonempty_F{main}"]:
        out.append(f"warning          no test sample has a dislike in the {main} days after its cut: evaluation has "
                   f"nothing to score (every metric empty); raise data.main_horizon (with data.horizons) or lower "
                   f"data.split.test_frac, so that more of each user's log lies after the test cut")
    return out


def _describe_cuts(stats: dict) -> str:
    where = {"day": "per-user day boundaries",
             "event": "per-user event positions (mid-day; ties at the cut second go to the future)"}
    text = f"{where[stats.get('cut_unit', 'day')]}, >= {stats['min_context']} context events"
    if "cut_unit_auto" in stats:
        auto = stats["cut_unit_auto"]
        cut = auto.get("counted", "test")
        text += (f" (cut_unit auto: {auto['chosen']}; day cuts give {auto['test_users_day']:,} users a {cut} cut, "
                 f"event cuts {auto['test_users_event']:,})")
    if stats.get("rolling_every", 0) > 0:
        most = f", at most {stats['rolling_max']} per user" if stats.get("rolling_max", 0) > 0 else ""
        text += f"; rolling test cuts every {stats['rolling_every']} events after the test cut{most}"
    return text


def input_paths(cfg: DataConfig) -> list[str]:
    """The raw files, folders or globs the configured format reads."""
    if cfg.format == "embedded":
        try:
            return [str(recbole_ml100k_path())]
        except DataError:
            return []  # load_log names the missing package
    if cfg.format == "generic":
        return [p for p in (cfg.generic.path or cfg.path, cfg.generic.items_path) if p]
    return [cfg.path] if cfg.path else []


def inputs_of(cfg: DataConfig) -> dict:
    """Size and content hash of every raw input file (`negrec.io.inputs_fingerprint`)."""
    out: dict = {}
    for p in input_paths(cfg):
        out.update(inputs_fingerprint(p))
    return out


def raw_inputs_fingerprint(raw: dict) -> dict:
    """The data stage's raw inputs, for the pipeline's stage fingerprint (the registry names it)."""
    return inputs_of(section_config(DataConfig, raw, "data"))


def run_prepare(raw: dict, run_dir) -> dict:
    """CLI/pipeline entry: prepare into run_dir/data unless it is done by the stage contract
    (`negrec.contract`: the data config and the raw input files' sizes and content hashes
    unchanged); print the statistics. The folder is written beside and swapped in whole."""
    from ..contract import stage_folder, up_to_date

    out = Path(run_dir) / "data"
    if up_to_date(raw, run_dir, "data"):
        prepared = Prepared.load(out)
        stats = read_json(out / "stats.json") if (out / "stats.json").exists() else data_stats(prepared)
    else:
        with stage_folder(raw, run_dir, "data") as tmp:
            prepared = prepare_data(section_config(DataConfig, raw, "data"), tmp)
            stats = data_stats(prepared)
            write_json(tmp / "stats.json", stats)
    print(format_stats(stats, prepared.horizons))
    return stats
