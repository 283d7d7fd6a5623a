"""Loaders for real log formats. Each returns (interactions, items) in the canonical schema.

Interactions come back with user_id, item_id, ts, feedback, source and the optional rating /
play_time_s / duration_s; `prepare_data` then adds implicit negatives and the feedback kind.
Every parse error names the file, the line (1-based, as an editor shows it) and the field.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import NEGATIVE, NEUTRAL, POSITIVE, DataError, source_column

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


@dataclass
class RatingRule:
    """Explicit ratings: negative at or below `negative_max`, positive at or above `positive_min`."""
    negative_max: float = 2.0
    positive_min: float = 4.0


# ---------------------------------------------------------------- reading helpers
def _require(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


def read_table(path, sep: str, names: list[str] | None, *, header_lines: int = 0, encoding="utf-8",
               numeric: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a delimited file; name the line and field of the first bad value.

    `names` given: the file has no header and must have at least len(names) fields per line.
    `numeric`: columns that must parse as numbers.
    """
    path = _require(path)
    if names:
        with open(path, encoding=encoding, errors="replace") as f:
            first = f.readline().rstrip("\r\n")
        found = len(first.split(sep))
        if found < len(names):
            hint = " (wrong separator?)" if found == 1 else ""
            raise DataError(f"{path}: line {header_lines + 1}: expected {len(names)} fields separated by {sep!r}, "
                            f"found {found}{hint}")
    try:
        df = pd.read_csv(path, sep=sep, header=None if names else 0, names=names, skiprows=header_lines if names else None,
                         encoding=encoding, engine="c" if len(sep) == 1 else "python", dtype=str if names is None else None,
                         keep_default_na=False, index_col=False, on_bad_lines="error")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty file") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot parse ({e}); is the separator {sep!r} right?") from e
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (empty file?)")
    first_data_line = header_lines + 1 if names else 2
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing}; found {list(df.columns)} "
                        f"(wrong separator {sep!r}?)" if len(df.columns) == 1 else
                        f"{path}: line 1: missing column(s) {missing}; found {list(df.columns)}")
    for col in numeric:
        if df[col].dtype.kind in "iuf":
            if df[col].isna().any():
                i = int(np.flatnonzero(df[col].isna().to_numpy())[0])
                raise DataError(f"{path}: line {first_data_line + i}: field {col!r} is empty")
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: line {first_data_line + i}: field {col!r}: cannot parse {df[col].iloc[i]!r} as a number")
        df[col] = num
    return df


def parse_ts(values: pd.Series, unit: str, path, field: str, first_line: int) -> np.ndarray:
    """UTC seconds from numbers (s or ms) or date strings; names the first unparsable line."""
    if unit in ("s", "ms", "auto") and values.dtype.kind in "iuf":
        v = values.to_numpy()
        if unit == "ms" or (unit == "auto" and len(v) and np.nanmedian(v) > 1e11):
            v = v // 1000
        return v.astype("int64")
    if unit in ("s", "ms"):
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: line {first_line + i}: field {field!r}: cannot parse timestamp {values.iloc[i]!r}")
        return parse_ts(num, unit, path, field, first_line)
    dt = pd.to_datetime(values, errors="coerce", utc=True)
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {first_line + i}: field {field!r}: cannot parse timestamp {values.iloc[i]!r}")
    # pandas' datetime resolution varies (ns, us): go through a Timedelta, not raw int64
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")


def _from_ratings(user, item, ts, rating, rule: RatingRule) -> pd.DataFrame:
    rating = np.asarray(rating, dtype="float64")
    fb = np.where(rating <= rule.negative_max, NEGATIVE, np.where(rating >= rule.positive_min, POSITIVE, NEUTRAL))
    return pd.DataFrame({"user_id": np.asarray(user, "int64"), "item_id": np.asarray(item, "int64"),
                         "ts": np.asarray(ts, "int64"), "feedback": fb.astype("int8"),
                         "source": source_column(np.zeros(len(fb), bool)), "rating": rating})


def _movie_items(item_id, title, genres: list[str]) -> pd.DataFrame:
    genres = [g if isinstance(g, str) else "" for g in genres]
    text = [f"{t}. Genres: {g.replace('|', ', ')}" if g else str(t) for t, g in zip(title, genres)]
    return pd.DataFrame({"item_id": np.asarray(item_id, "int64"), "title": [str(t) for t in title],
                         "text": text, "genres": genres})


# ---------------------------------------------------------------- MovieLens
def load_ml100k(path, rule: RatingRule = RatingRule()):
    """Raw GroupLens ml-100k folder: u.data (tab) and u.item (latin-1, '|')."""
    path = Path(path)
    inter = read_table(path / "u.data", "\t", ["user_id", "item_id", "rating", "ts"],
                       numeric=("user_id", "item_id", "rating", "ts"))
    items = read_table(path / "u.item", "|", ["item_id", "title", "release", "video_release", "url", *ML_GENRES],
                       encoding="latin-1", numeric=("item_id",))
    flags = items[ML_GENRES].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy(bool)
    genres = ["|".join(g for g, f in zip(ML_GENRES, row) if f and g != "unknown") for row in flags]
    return _from_ratings(inter.user_id, inter.item_id, inter.ts, inter.rating, rule), \
        _movie_items(items.item_id, items.title, genres)


def load_movielens_csv(path, rule: RatingRule = RatingRule()):
    """ml-latest(-small), ml-20m, ml-25m, ml-32m: ratings.csv and movies.csv with headers."""
    path = Path(path)
    inter = read_table(path / "ratings.csv", ",", None, required=("userId", "movieId", "rating", "timestamp"),
                       numeric=("userId", "movieId", "rating", "timestamp"))
    movies = read_table(path / "movies.csv", ",", None, required=("movieId", "title", "genres"), numeric=("movieId",))
    genres = [g if g != "(no genres listed)" else "" for g in movies.genres]
    return _from_ratings(inter.userId, inter.movieId, inter.timestamp, inter.rating, rule), \
        _movie_items(movies.movieId, movies.title, genres)


def load_movielens_dat(path, rule: RatingRule = RatingRule()):
    """ml-1m, ml-10m: ratings.dat and movies.dat, '::'-separated."""
    path = Path(path)
    inter = read_table(path / "ratings.dat", "::", ["user_id", "item_id", "rating", "ts"],
                       numeric=("user_id", "item_id", "rating", "ts"), encoding="latin-1")
    movies = read_table(path / "movies.dat", "::", ["item_id", "title", "genres"], numeric=("item_id",), encoding="latin-1")
    return _from_ratings(inter.user_id, inter.item_id, inter.ts, inter.rating, rule), \
        _movie_items(movies.item_id, movies.title, list(movies.genres))


def load_movielens(path, rule: RatingRule = RatingRule()):
    """Any MovieLens release, recognised by its files."""
    path = Path(path)
    if (path / "u.data").exists():
        return load_ml100k(path, rule)
    if (path / "ratings.csv").exists():
        return load_movielens_csv(path, rule)
    if (path / "ratings.dat").exists():
        return load_movielens_dat(path, rule)
    raise DataError(f"{path}: no MovieLens files (u.data, ratings.csv or ratings.dat) found")


# ---------------------------------------------------------------- RecBole atomic files
def load_recbole(path, name: str | None = None, rule: RatingRule = RatingRule()):
    """RecBole atomic files `<name>.inter` and `<name>.item` (headers like `user_id:token`)."""
    path = Path(path)
    name = name or path.name
    inter_path, item_path = path / f"{name}.inter", path / f"{name}.item"
    inter = read_table(inter_path, "\t", None)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    for col in ("user_id", "item_id", "timestamp"):
        if col not in inter.columns:
            raise DataError(f"{inter_path}: line 1: missing field {col!r}; found {list(inter.columns)}")
    for col in ("user_id", "item_id", "timestamp", *(["rating"] if "rating" in inter.columns else [])):
        num = pd.to_numeric(inter[col], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise DataError(f"{inter_path}: line {i + 2}: field {col!r}: cannot parse {inter[col].iloc[i]!r} as a number")
        inter[col] = num
    rating = inter["rating"] if "rating" in inter.columns else np.full(len(inter), rule.positive_min)
    items = read_table(item_path, "\t", None)
    items.columns = [c.split(":")[0] for c in items.columns]
    if "item_id" not in items.columns:
        raise DataError(f"{item_path}: line 1: missing field 'item_id'; found {list(items.columns)}")
    num = pd.to_numeric(items["item_id"], errors="coerce")
    if num.isna().any():
        i = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise DataError(f"{item_path}: line {i + 2}: field 'item_id': cannot parse {items['item_id'].iloc[i]!r}")
    title = items.get("movie_title", items.get("title", items["item_id"].astype(str)))
    if "release_year" in items.columns:
        title = [f"{t} ({y})" if y else t for t, y in zip(title, items["release_year"])]
    genres = ["|".join(str(g).split()) for g in items.get("class", items.get("genre", pd.Series([""] * len(items))))]
    return _from_ratings(inter.user_id, inter.item_id, inter.timestamp, rating, rule), _movie_items(num, title, genres)


def recbole_ml100k_path() -> Path:
    """MovieLens-100K as shipped inside the `recbole==1.2.1` wheel: the embedded default."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded default needs the package recbole==1.2.1 "
                        "(pip install --no-deps recbole==1.2.1); it ships MovieLens-100K")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise DataError(f"{path}: ml-100k.inter not found inside the recbole package")
    return path


# ---------------------------------------------------------------- KuaiRand
KUAIRAND_LOG_FIELDS = ("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms")


def load_kuairand(path, duration_buckets: int = 8):
    """KuaiRand: raw `log_standard_*` / `log_random_*` CSVs, or the like/hate subset (.tsv).

    Explicit: is_hate -> negative; is_like / is_follow / is_forward -> positive (or `label` in the
    like/hate subset: 1 like, 0 hate). Other rows are exposures (feedback 0) that the implicit
    skip rule may turn into negatives; `long_view` marks an implicit positive.
    """
    path = Path(path)
    files = sorted(path.glob("log_*.csv")) + sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no KuaiRand log (log_standard_*.csv, log_random_*.csv or *.tsv) found")
    frames = []
    for f in files:
        sep = "\t" if f.suffix == ".tsv" else ","
        df = read_table(f, sep, None, required=KUAIRAND_LOG_FIELDS,
                        numeric=("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms"))
        has_label = "label" in df.columns
        flags = {}
        for col in ("is_hate", "is_like", "is_follow", "is_forward", "long_view", "label"):
            if col in df.columns:
                v = pd.to_numeric(df[col], errors="coerce")
                if v.isna().any():
                    i = int(np.flatnonzero(v.isna().to_numpy())[0])
                    raise DataError(f"{f}: line {i + 2}: field {col!r}: cannot parse {df[col].iloc[i]!r}")
                flags[col] = v.to_numpy() > 0
        n = len(df)
        zeros = np.zeros(n, bool)
        if has_label:
            neg, pos = ~flags["label"], flags["label"]
            implicit_pos = zeros
        else:
            if "is_hate" not in flags:
                raise DataError(f"{f}: line 1: missing field 'is_hate' (or 'label')")
            neg = flags["is_hate"]
            pos = ~neg & (flags.get("is_like", zeros) | flags.get("is_follow", zeros) | flags.get("is_forward", zeros))
            implicit_pos = ~neg & ~pos & flags.get("long_view", zeros)
        fb = np.where(neg, NEGATIVE, np.where(pos | implicit_pos, POSITIVE, NEUTRAL)).astype("int8")
        source = source_column(implicit_pos)
        frames.append(pd.DataFrame({
            "user_id": df.user_id.to_numpy("int64"), "item_id": df.video_id.to_numpy("int64"),
            "ts": (df.time_ms.to_numpy("int64") // 1000), "feedback": fb, "source": source,
            "play_time_s": df.play_time_ms.to_numpy("float64") / 1000.0,
            "duration_s": df.duration_ms.to_numpy("float64") / 1000.0,
        }))
    inter = pd.concat(frames, ignore_index=True)
    # items: ids only, plus a coarse duration bucket as a categorical feature (no text in KuaiRand)
    dur = inter.groupby("item_id")["duration_s"].median()
    valid = dur[dur > 0]
    edges = np.unique(np.quantile(valid, np.linspace(0, 1, duration_buckets + 1)[1:-1])) if len(valid) else np.array([])
    bucket = np.where(dur.to_numpy() > 0, np.searchsorted(edges, dur.to_numpy()), -1)
    items = pd.DataFrame({"item_id": dur.index.to_numpy("int64"), "title": [f"video {i}" for i in dur.index],
                          "text": "", "genres": "", "feat_duration_bucket": bucket.astype("int64")})
    return inter, items


# ---------------------------------------------------------------- any CSV / Parquet log
@dataclass
class GenericLogSpec:
    """A YAML column mapping and the rules for negative / positive (pandas `eval` expressions
    over the *mapped* column names, e.g. `rating <= 2`, `is_hate == 1`)."""
    path: str = ""
    items_path: str = ""
    sep: str = ","
    columns: dict = field(default_factory=lambda: {"user_id": "user_id", "item_id": "item_id", "ts": "ts"})
    item_columns: dict = field(default_factory=lambda: {"item_id": "item_id", "title": "title", "text": "text"})
    ts_unit: str = "auto"  # s | ms | datetime | auto
    negative_if: str = "rating <= 2"
    positive_if: str = "rating >= 4"
    feature_columns: list = field(default_factory=list)


def _read_any(path: Path, sep: str) -> pd.DataFrame:
    path = _require(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    df = read_table(path, sep, None)
    for col in df.columns:  # columns read as text: make the fully numeric ones numbers
        num = pd.to_numeric(df[col], errors="coerce")
        if not num.isna().any():
            df[col] = num
    return df


def load_generic(spec: GenericLogSpec):
    path = Path(spec.path)
    raw = _read_any(path, spec.sep)
    first_line = 2 if path.suffix not in (".parquet", ".pq") else 0
    cols = dict(spec.columns)
    for need in ("user_id", "item_id", "ts"):
        if need not in cols:
            raise DataError(f"data.columns: mapping for {need!r} is missing")
    missing = [src for src in cols.values() if src not in raw.columns]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing} named in data.columns; found {list(raw.columns)}")
    df = raw.rename(columns={v: k for k, v in cols.items()})
    for col in ("user_id", "item_id"):
        num = pd.to_numeric(df[col], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise DataError(f"{path}: line {first_line + i}: field {cols[col]!r}: id {df[col].iloc[i]!r} is not an integer")
        df[col] = num.astype("int64")
    ts = parse_ts(df["ts"], spec.ts_unit, path, cols["ts"], first_line)
    masks = {}
    for name, expr in (("negative_if", spec.negative_if), ("positive_if", spec.positive_if)):
        try:
            masks[name] = np.asarray(df.eval(expr), dtype=bool) if expr else np.zeros(len(df), bool)
        except Exception as e:  # noqa: BLE001 - pandas raises many kinds here
            raise DataError(f"data.{name}: cannot evaluate {expr!r} on {path} (columns {list(df.columns)}): {e}") from e
    fb = np.where(masks["negative_if"], NEGATIVE, np.where(masks["positive_if"], POSITIVE, NEUTRAL)).astype("int8")
    out = pd.DataFrame({"user_id": df.user_id.to_numpy(), "item_id": df.item_id.to_numpy(), "ts": ts,
                        "feedback": fb, "source": source_column(np.zeros(len(fb), bool))})
    for opt, conv in (("rating", 1.0), ("play_time_s", 1.0), ("duration_s", 1.0)):
        if opt in df.columns:
            out[opt] = pd.to_numeric(df[opt], errors="coerce").to_numpy("float64") * conv
    if spec.items_path:
        it = _read_any(Path(spec.items_path), spec.sep).rename(columns={v: k for k, v in spec.item_columns.items()})
        if "item_id" not in it.columns:
            raise DataError(f"{spec.items_path}: line 1: missing item id column {spec.item_columns.get('item_id')!r}")
        it["item_id"] = pd.to_numeric(it["item_id"], errors="raise").astype("int64")
    else:
        it = pd.DataFrame({"item_id": np.unique(out.item_id)})
    it = it.rename(columns={c: f"feat_{c}" for c in spec.feature_columns if c in it.columns})
    if "title" not in it.columns:
        it["title"] = [f"item {i}" for i in it.item_id]
    return out, it
