"""Loaders for the named log formats (MovieLens, RecBole atomic files, KuaiRand); any other CSV or
Parquet log: `generic`. Each returns (interactions, items) in the canonical schema.

Interactions come back with user_id, item_id, ts, feedback, source and the optional rating /
play_time_s / duration_s; `prepare_data` then adds implicit negatives and the feedback kind.
Every parse error names the file, the line (1-based, as an editor shows it) and the field.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .ids import canonical_ints
from .reading import header_names, open_bytes, read_table, require_file, skipped_lines
from .schema import NEGATIVE, NEUTRAL, POSITIVE, DataError, line_of, set_origin, source_column
from .timestamps import parse_ts
from .validate import check_values


ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


@dataclass
class RatingRule:
    """Explicit ratings: negative at or below `negative_max`, positive at or above `positive_min`;
    a rating outside [min_rating, max_rating] is refused (any format's `rating` column)."""
    negative_max: float = 2.0
    positive_min: float = 4.0
    min_rating: float = 0.0
    max_rating: float = 5.0

    def __post_init__(self):
        if not self.min_rating <= self.max_rating:
            raise ValueError(f"data.ratings: min_rating {self.min_rating} > max_rating {self.max_rating}")


def _from_ratings(user, item, ts, rating, rule: RatingRule) -> pd.DataFrame:
    """Ids as read (ids.encode_ids maps them), ts already in int64 seconds."""
    rating = np.asarray(rating, dtype="float64")
    fb = np.where(rating <= rule.negative_max, NEGATIVE, np.where(rating >= rule.positive_min, POSITIVE, NEUTRAL))
    return pd.DataFrame({"user_id": np.asarray(user), "item_id": np.asarray(item),
                         "ts": np.asarray(ts, "int64"), "feedback": fb.astype("int8"),
                         "source": source_column(np.zeros(len(fb), bool)), "rating": rating})


def _with_origin(df: pd.DataFrame, path, first_line: int, fields: dict | None = None, blanks=()) -> pd.DataFrame:
    """Tag a frame read from one text file: row i is line first_line + i (blank lines skipped)."""
    return set_origin(df, [(path, first_line, len(df), "line", blanks)], fields)


def _movie_items(item_id, title, genres: list[str]) -> pd.DataFrame:
    genres = [g if isinstance(g, str) else "" for g in genres]
    text = [f"{t}. Genres: {g.replace('|', ', ')}" if g else str(t) for t, g in zip(title, genres)]
    return pd.DataFrame({"item_id": np.asarray(item_id), "title": [str(t) for t in title],
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
    ts = parse_ts(inter.ts, "s", path / "u.data", "ts", 1, skipped=skipped_lines(inter))
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, ts, inter.rating, rule), path / "u.data", 1,
                        blanks=skipped_lines(inter)), \
        _with_origin(_movie_items(items.item_id, items.title, genres), path / "u.item", 1, blanks=skipped_lines(items))


def load_movielens_csv(path, rule: RatingRule = RatingRule()):
    """ml-latest(-small), ml-20m, ml-25m, ml-32m: ratings.csv and movies.csv with headers."""
    path = Path(path)
    inter = read_table(path / "ratings.csv", ",", None, required=("userId", "movieId", "rating", "timestamp"),
                       numeric=("userId", "movieId", "rating", "timestamp"))
    movies = read_table(path / "movies.csv", ",", None, required=("movieId", "title", "genres"), numeric=("movieId",))
    genres = [g if g != "(no genres listed)" else "" for g in movies.genres]
    ts = parse_ts(inter.timestamp, "s", path / "ratings.csv", "timestamp", 2, skipped=skipped_lines(inter))
    return _with_origin(_from_ratings(inter.userId, inter.movieId, ts, inter.rating, rule),
                        path / "ratings.csv", 2, {"user_id": "userId", "item_id": "movieId", "ts": "timestamp"},
                        skipped_lines(inter)), \
        _with_origin(_movie_items(movies.movieId, movies.title, genres), path / "movies.csv", 2, {"item_id": "movieId"},
                     skipped_lines(movies))


def utf8_or_latin1(path: Path) -> str:
    """GroupLens wrote its older files in latin-1 and later ones in UTF-8: UTF-8 when the whole file
    decodes as UTF-8 (a latin-1 accent never does), else latin-1, so no title turns into mojibake."""
    f = open_bytes(require_file(path))
    if f is None:
        return "latin-1"
    with f:
        try:
            f.read().decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            return "latin-1"


def load_movielens_dat(path, rule: RatingRule = RatingRule()):
    """ml-1m, ml-10m: ratings.dat and movies.dat, '::'-separated."""
    path = Path(path)
    inter = read_table(path / "ratings.dat", "::", ["user_id", "item_id", "rating", "ts"],
                       numeric=("user_id", "item_id", "rating", "ts"), encoding="latin-1")
    movies = read_table(path / "movies.dat", "::", ["item_id", "title", "genres"], numeric=("item_id",),
                        encoding=utf8_or_latin1(path / "movies.dat"))
    ts = parse_ts(inter.ts, "s", path / "ratings.dat", "ts", 1, skipped=skipped_lines(inter))
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, ts, inter.rating, rule), path / "ratings.dat", 1,
                        blanks=skipped_lines(inter)), \
        _with_origin(_movie_items(movies.item_id, movies.title, list(movies.genres)), path / "movies.dat", 1,
                     blanks=skipped_lines(movies))


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
            hint = " (wrong separator? atomic files are tab-separated)" if len(inter.columns) == 1 else ""
            raise DataError(f"{inter_path}: line 1: missing field {col!r}; found {list(inter.columns)}{hint}")
    # ids are `:token` fields: strings, mapped to internal ids by ids.encode_ids
    if "rating" in inter.columns:
        num = pd.to_numeric(inter["rating"], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise DataError(f"{inter_path}: line {line_of(2, i, skipped_lines(inter))}: field 'rating': "
                            f"cannot parse {inter['rating'].iloc[i]!r} as a number")
        inter["rating"] = num
    ts = parse_ts(inter["timestamp"], "s", inter_path, "timestamp", 2, skipped=skipped_lines(inter))
    rating = inter["rating"] if "rating" in inter.columns else np.full(len(inter), rule.positive_min)
    items = read_table(item_path, "\t", None)
    items.columns = [c.split(":")[0] for c in items.columns]
    if "item_id" not in items.columns:
        hint = " (wrong separator? atomic files are tab-separated)" if len(items.columns) == 1 else ""
        raise DataError(f"{item_path}: line 1: missing field 'item_id'; found {list(items.columns)}{hint}")
    title = items.get("movie_title", items.get("title", items["item_id"].astype(str)))
    if "release_year" in items.columns:
        title = [f"{t} ({y})" if y else t for t, y in zip(title, items["release_year"])]
    genres = ["|".join(str(g).split()) for g in items.get("class", items.get("genre", pd.Series([""] * len(items))))]
    return _with_origin(_from_ratings(_ids_as_read(inter.user_id), _ids_as_read(inter.item_id), ts, rating, rule),
                        inter_path, 2, {"ts": "timestamp"}, skipped_lines(inter)), \
        _with_origin(_movie_items(_ids_as_read(items["item_id"]), title, genres), item_path, 2, blanks=skipped_lines(items))


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


def _ids_as_read(values: pd.Series) -> np.ndarray:
    """An id column read as text: integers when every id is written as one prints, else the strings
    (ids.encode_ids maps either, and names an empty or fractional id)."""
    return canonical_ints(values).to_numpy()


# ---------------------------------------------------------------- KuaiRand
KUAIRAND_LOG_FIELDS = ("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms")
KUAIRAND_FLAGS = ("is_hate", "is_like", "is_follow", "is_forward", "long_view", "label")
KUAIRAND_FILES = ("log_*.csv", "*.tsv")  # raw logs, then the like/hate subset; compressed or not
COMPRESSED = ("", ".gz", ".bz2", ".xz", ".zip")


def _kuairand_sep(f: Path) -> str:
    return "\t" if ".tsv" in f.suffixes else ","


def _same_flags(files: list[Path]) -> None:
    """Refuse raw logs (no `label`) that carry different feedback flags: in a file without
    `is_like` every like would count as a neutral exposure."""
    have = {}
    for f in files:
        try:
            header = header_names(f, _kuairand_sep(f))
        except (ValueError, OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError):
            continue  # read_table names what is wrong with it
        flags = {c.strip() for c in header} & set(KUAIRAND_FLAGS)
        if "label" not in flags:  # the like/hate subset: its label alone says like or hate
            have[f] = flags
    for f, flags in have.items():
        for g, other in have.items():
            if other - flags:
                raise DataError(f"{f}: line 1: no field {sorted(other - flags)[0]!r}, which {g.name} has: "
                                "every KuaiRand file must carry the same feedback flags")


def load_kuairand(path, duration_buckets: int = 8):
    """KuaiRand: raw `log_standard_*` / `log_random_*` CSVs, or the like/hate subset (.tsv).

    Explicit: is_hate -> negative; is_like / is_follow / is_forward -> positive (or `label` in the
    like/hate subset: 1 like, 0 hate). Other rows are exposures (feedback 0) that the implicit
    skip rule may turn into negatives; `long_view` marks an implicit positive.
    """
    path = Path(path)
    files = [f for stem in KUAIRAND_FILES for f in sorted(g for ext in COMPRESSED for g in path.glob(stem + ext))] \
        if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no KuaiRand log (log_standard_*.csv, log_random_*.csv or *.tsv, each maybe .gz) found")
    _same_flags(files)
    frames, blank_of = [], []
    for f in files:
        sep = _kuairand_sep(f)
        df = read_table(f, sep, None, required=KUAIRAND_LOG_FIELDS, numeric=("play_time_ms", "duration_ms"))
        df.columns = [c.strip() for c in df.columns]  # " is_like" is the flag (`_same_flags` reads it so)
        blanks = skipped_lines(df)
        blank_of.append(blanks)
        has_label = "label" in df.columns
        flags = {}
        for col in KUAIRAND_FLAGS:
            if col in df.columns:
                v = pd.to_numeric(df[col], errors="coerce")
                if v.isna().any():
                    i = int(np.flatnonzero(v.isna().to_numpy())[0])
                    raise DataError(f"{f}: line {line_of(2, i, blanks)}: field {col!r}: cannot parse {df[col].iloc[i]!r}")
                check_values(v.to_numpy(), lambda i: f"{f}: line {line_of(2, i, blanks)}", repr(col), allowed=(0, 1),
                             rule="KuaiRand flags and labels are 0 or 1")
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
            "user_id": _ids_as_read(df.user_id), "item_id": _ids_as_read(df.video_id),
            "ts": parse_ts(df.time_ms, "ms", f, "time_ms", 2, skipped=blanks), "feedback": fb, "source": source,
            "play_time_s": df.play_time_ms.to_numpy("float64") / 1000.0,
            "duration_s": df.duration_ms.to_numpy("float64") / 1000.0,
        }))
    inter = pd.concat(frames, ignore_index=True)
    set_origin(inter, [(f, 2, len(fr), "line", b) for f, fr, b in zip(files, frames, blank_of)],
               {"item_id": "video_id", "ts": "time_ms"})
    # items: ids only, plus a coarse duration bucket as a categorical feature (no text in KuaiRand)
    dur = inter.groupby("item_id")["duration_s"].median()
    valid = dur[dur > 0]
    edges = np.unique(np.quantile(valid, np.linspace(0, 1, duration_buckets + 1)[1:-1])) if len(valid) else np.array([])
    bucket = np.where(dur.to_numpy() > 0, np.searchsorted(edges, dur.to_numpy()), -1)
    items = pd.DataFrame({"item_id": dur.index.to_numpy(), "title": [f"video {i}" for i in dur.index],
                          "text": "", "genres": "", "feat_duration_bucket": bucket.astype("int64")})
    return inter, items
