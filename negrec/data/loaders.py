"""Loaders for real log formats. Each returns (interactions, items) in the canonical schema.

Interactions come back with user_id, item_id, ts, feedback, source and the optional rating /
play_time_s / duration_s; `prepare_data` then adds implicit negatives and the feedback kind.
Every parse error names the file, the line (1-based, as an editor shows it) and the field.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .arrays import chunks, narrow_int
from .schema import NEGATIVE, NEUTRAL, POSITIVE, DataError, set_origin, source_column

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
            hint = " (wrong separator?)" if found == 1 else f"; field {names[found]!r} is missing"
            raise DataError(f"{path}: line {header_lines + 1}: expected {len(names)} fields {names} separated by "
                            f"{sep!r}, found {found}{hint}")
    try:
        df = pd.read_csv(path, sep=sep, header=None if names else 0, names=names, skiprows=header_lines if names else None,
                         encoding=encoding, engine="c" if len(sep) == 1 else "python", dtype=str if names is None else None,
                         keep_default_na=False, index_col=False, on_bad_lines="error")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty file") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(f"{path}: line {m.group(2)}: expected {m.group(1)} fields separated by {sep!r}, "
                            f"saw {m.group(3)} (a stray separator?)") from e
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
            value = df[col].iloc[i]
            if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
                raise DataError(f"{path}: line {first_data_line + i}: field {col!r} is empty (a line with fewer fields?)")
            raise DataError(f"{path}: line {first_data_line + i}: field {col!r}: cannot parse {value!r} as a number")
        df[col] = num
    return df


def parse_ts(values: pd.Series, unit: str, path, field: str, first_line: int, label: str = "line") -> np.ndarray:
    """UTC seconds from numbers (s or ms) or date strings; names the first unparsable line
    (`label` "row" for Parquet, whose rows are counted from 1)."""
    if unit in ("s", "ms", "auto") and values.dtype.kind in "iuf":
        v = values.to_numpy()
        if values.dtype.kind == "f" and np.isnan(v).any():
            i = int(np.flatnonzero(np.isnan(v))[0])
            raise DataError(f"{path}: {label} {first_line + i}: field {field!r}: empty timestamp")
        if unit == "ms" or (unit == "auto" and len(v) and np.nanmedian(v) > 1e11):
            v = v // 1000
        return v.astype("int64")
    if unit in ("s", "ms") and values.dtype.kind != "M":
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: {label} {first_line + i}: field {field!r}: cannot parse timestamp {values.iloc[i]!r}")
        return parse_ts(num, unit, path, field, first_line, label)
    dt = pd.to_datetime(values, errors="coerce", utc=True)
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: {label} {first_line + i}: field {field!r}: cannot parse timestamp {values.iloc[i]!r}")
    # pandas' datetime resolution varies (ns, us): go through a Timedelta, not raw int64
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")


def _from_ratings(user, item, ts, rating, rule: RatingRule) -> pd.DataFrame:
    rating = np.asarray(rating, dtype="float64")
    fb = np.where(rating <= rule.negative_max, NEGATIVE, np.where(rating >= rule.positive_min, POSITIVE, NEUTRAL))
    return pd.DataFrame({"user_id": np.asarray(user, "int64"), "item_id": np.asarray(item, "int64"),
                         "ts": np.asarray(ts, "int64"), "feedback": fb.astype("int8"),
                         "source": source_column(np.zeros(len(fb), bool)), "rating": rating})


def _with_origin(df: pd.DataFrame, path, first_line: int, fields: dict | None = None) -> pd.DataFrame:
    """Tag a frame read from one text file: row i is line first_line + i."""
    return set_origin(df, [(path, first_line, len(df), "line")], fields)


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
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, inter.ts, inter.rating, rule), path / "u.data", 1), \
        _with_origin(_movie_items(items.item_id, items.title, genres), path / "u.item", 1)


def load_movielens_csv(path, rule: RatingRule = RatingRule()):
    """ml-latest(-small), ml-20m, ml-25m, ml-32m: ratings.csv and movies.csv with headers."""
    path = Path(path)
    inter = read_table(path / "ratings.csv", ",", None, required=("userId", "movieId", "rating", "timestamp"),
                       numeric=("userId", "movieId", "rating", "timestamp"))
    movies = read_table(path / "movies.csv", ",", None, required=("movieId", "title", "genres"), numeric=("movieId",))
    genres = [g if g != "(no genres listed)" else "" for g in movies.genres]
    return _with_origin(_from_ratings(inter.userId, inter.movieId, inter.timestamp, inter.rating, rule),
                        path / "ratings.csv", 2, {"user_id": "userId", "item_id": "movieId", "ts": "timestamp"}), \
        _with_origin(_movie_items(movies.movieId, movies.title, genres), path / "movies.csv", 2, {"item_id": "movieId"})


def load_movielens_dat(path, rule: RatingRule = RatingRule()):
    """ml-1m, ml-10m: ratings.dat and movies.dat, '::'-separated."""
    path = Path(path)
    inter = read_table(path / "ratings.dat", "::", ["user_id", "item_id", "rating", "ts"],
                       numeric=("user_id", "item_id", "rating", "ts"), encoding="latin-1")
    movies = read_table(path / "movies.dat", "::", ["item_id", "title", "genres"], numeric=("item_id",), encoding="latin-1")
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, inter.ts, inter.rating, rule), path / "ratings.dat", 1), \
        _with_origin(_movie_items(movies.item_id, movies.title, list(movies.genres)), path / "movies.dat", 1)


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
        hint = " (wrong separator? atomic files are tab-separated)" if len(items.columns) == 1 else ""
        raise DataError(f"{item_path}: line 1: missing field 'item_id'; found {list(items.columns)}{hint}")
    num = pd.to_numeric(items["item_id"], errors="coerce")
    if num.isna().any():
        i = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise DataError(f"{item_path}: line {i + 2}: field 'item_id': cannot parse {items['item_id'].iloc[i]!r}")
    title = items.get("movie_title", items.get("title", items["item_id"].astype(str)))
    if "release_year" in items.columns:
        title = [f"{t} ({y})" if y else t for t, y in zip(title, items["release_year"])]
    genres = ["|".join(str(g).split()) for g in items.get("class", items.get("genre", pd.Series([""] * len(items))))]
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, inter.timestamp, rating, rule), inter_path, 2,
                        {"ts": "timestamp"}), _with_origin(_movie_items(num, title, genres), item_path, 2)


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
    set_origin(inter, [(f, 2, len(fr), "line") for f, fr in zip(files, frames)],
               {"item_id": "video_id", "ts": "time_ms"})
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


def _read_any(path: Path, sep: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
    path = _require(path)
    if path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        if len(df) == 0:
            raise DataError(f"{path}: no data rows (empty file?)")
        return df
    df = read_table(path, sep, None, required=required)
    for col in df.columns:  # columns read as text: make the fully numeric ones numbers
        num = pd.to_numeric(df[col], errors="coerce")
        if not num.isna().any():
            df[col] = num
    return df


def _expr_names(expr: str, available) -> set[str]:
    """Column names an `eval` expression refers to (all of `available` when it cannot be parsed)."""
    import io
    import re
    import tokenize

    available = set(available)
    names = set(re.findall(r"`([^`]*)`", expr))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(re.sub(r"`[^`]*`", " 0 ", expr)).readline):
            if tok.type == tokenize.NAME:
                names.add(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return available
    return names & available


def _numbers(values: pd.Series, path, col: str, first_line: int, label: str, integer: bool = False,
             allow_empty: bool = False) -> np.ndarray:
    """Parse a column as numbers; an unparsable (or, unless allowed, empty) cell is an error naming
    the file, the line (or Parquet row) and the field."""
    if values.dtype.kind in "iub":
        return values.to_numpy()
    if values.dtype.kind == "f":
        v = values.to_numpy()
        bad = np.isnan(v) if not allow_empty else np.zeros(len(v), bool)
        if integer:
            bad |= ~np.isnan(v) & (v != np.round(v))
    else:
        v = pd.to_numeric(values, errors="coerce").to_numpy("float64" if not integer else None)
        blank = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        vf = np.asarray(v, dtype="float64")
        bad = np.isnan(vf) & ~(blank if allow_empty else np.zeros(len(v), bool))
        if integer:
            bad |= ~np.isnan(vf) & (vf != np.round(vf))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = values.iloc[i]
        if pd.isna(value) or str(value).strip() == "":
            raise DataError(f"{path}: {label} {first_line + i}: field {col!r} is empty")
        what = "an integer" if integer else "a number"
        raise DataError(f"{path}: {label} {first_line + i}: field {col!r}: cannot parse {value!r} as {what}")
    if integer:
        return np.asarray(v).astype(np.int64)
    return np.asarray(v, dtype="float64")


def _feedback(df: pd.DataFrame, spec: "GenericLogSpec", path) -> np.ndarray:
    masks = {}
    for name, expr in (("negative_if", spec.negative_if), ("positive_if", spec.positive_if)):
        try:
            masks[name] = np.asarray(df.eval(expr), dtype=bool) if expr else np.zeros(len(df), bool)
        except Exception as e:  # noqa: BLE001 - pandas raises many kinds here
            raise DataError(f"data.{name}: cannot evaluate {expr!r} on {path} (columns {list(df.columns)}): {e}") from e
        if masks[name].shape != (len(df),):
            raise DataError(f"data.{name}: {expr!r} on {path} does not give one true/false value per row")
    return np.where(masks["negative_if"], NEGATIVE, np.where(masks["positive_if"], POSITIVE, NEUTRAL)).astype("int8")


OPTIONAL_FLOATS = ("rating", "play_time_s", "duration_s")


def load_generic(spec: GenericLogSpec):
    """Any CSV or Parquet log, through the YAML column mapping of `spec`."""
    path = Path(spec.path)
    cols = dict(spec.columns)
    for need in ("user_id", "item_id", "ts"):
        if need not in cols:
            raise DataError(f"data.columns: mapping for {need!r} is missing")
    if _require(path).suffix in (".parquet", ".pq"):
        out = _load_generic_parquet(spec, path, cols)
    else:
        out = _load_generic_csv(spec, path, cols)
    fields = {k: v for k, v in cols.items()}
    set_origin(out, [(path, 2 if path.suffix not in (".parquet", ".pq") else 1, len(out),
                      "line" if path.suffix not in (".parquet", ".pq") else "row")], fields)
    if spec.items_path:
        ipath = Path(spec.items_path)
        it = _read_any(ipath, spec.sep).rename(columns={v: k for k, v in spec.item_columns.items()})
        if "item_id" not in it.columns:
            raise DataError(f"{ipath}: line 1: missing item id column {spec.item_columns.get('item_id')!r}; "
                            f"found {list(it.columns)}")
        csv = ipath.suffix not in (".parquet", ".pq")
        it["item_id"] = _numbers(it["item_id"], ipath, spec.item_columns.get("item_id", "item_id"), 2 if csv else 1,
                                 "line" if csv else "row", integer=True)
        set_origin(it, [(ipath, 2 if csv else 1, len(it), "line" if csv else "row")],
                   {"item_id": spec.item_columns.get("item_id", "item_id")})
    else:
        it = pd.DataFrame({"item_id": _unique_sorted(out["item_id"].to_numpy())})
    it = it.rename(columns={c: f"feat_{c}" for c in spec.feature_columns if c in it.columns})
    if "title" not in it.columns:
        it["title"] = [f"item {i}" for i in it.item_id]
    return out, it


def _unique_sorted(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a presence table when their range is small (no 10M-row sort)."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= max(4 * len(values), 1 << 22):
        seen = np.zeros(hi - lo + 1, bool)
        for a, b in chunks(len(values)):
            seen[values[a:b].astype(np.int64) - lo] = True
        return np.flatnonzero(seen).astype(np.int64) + lo
    return np.sort(pd.unique(values)).astype(np.int64)


def _load_generic_csv(spec: GenericLogSpec, path: Path, cols: dict) -> pd.DataFrame:
    raw = _read_any(path, spec.sep)
    first_line = 2
    missing = [src for src in cols.values() if src not in raw.columns]
    if missing:
        hint = f" (wrong separator {spec.sep!r}?)" if len(raw.columns) == 1 else ""
        raise DataError(f"{path}: line 1: missing column(s) {missing} named in data.columns; "
                        f"found {list(raw.columns)}{hint}")
    df = raw.rename(columns={v: k for k, v in cols.items()})
    ids = {c: _numbers(df[c], path, cols[c], first_line, "line", integer=True) for c in ("user_id", "item_id")}
    ts = parse_ts(df["ts"], spec.ts_unit, path, cols["ts"], first_line)
    opts = {}
    for opt in OPTIONAL_FLOATS:  # parsed before the rules, which may read them (e.g. `rating <= 2`)
        if opt in df.columns:
            opts[opt] = df[opt] = _numbers(df[opt], path, cols.get(opt, opt), first_line, "line", allow_empty=True)
    fb = _feedback(df, spec, path)
    out = {"user_id": narrow_int(ids["user_id"]), "item_id": narrow_int(ids["item_id"]), "ts": ts, "feedback": fb,
           "source": source_column(np.zeros(len(fb), bool)), **opts}
    return pd.DataFrame(out, copy=False)


def _load_generic_parquet(spec: GenericLogSpec, path: Path, cols: dict) -> pd.DataFrame:
    """Parquet, read one row group at a time into narrow preallocated columns (int32 ids where they
    fit, float32 play / duration / rating): only the columns the mapping and the rules name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, pre_buffer=False)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds on a broken file
        raise DataError(f"{path}: cannot read as Parquet ({e})") from e
    names = pf.schema_arrow.names
    missing = [src for src in cols.values() if src not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} named in data.columns; found {names}")
    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: no data rows (empty file?)")
    to_canon = {v: k for k, v in cols.items()}
    mapped = [to_canon.get(c, c) for c in names]
    used = _expr_names(spec.negative_if or "", mapped) | _expr_names(spec.positive_if or "", mapped)
    canon_of = {to_canon.get(c, c): c for c in names}
    read = [c for c in names if c in cols.values() or to_canon.get(c, c) in used]
    opts = [o for o in OPTIONAL_FLOATS if o in cols or (o in names and o not in to_canon)]
    id_dtype = {c: _parquet_id_dtype(pf, canon_of[c]) for c in ("user_id", "item_id")}
    # seconds that fit int32 are held as int32 (no millisecond guess can apply to them)
    ts_dtype = _parquet_id_dtype(pf, canon_of["ts"]) if spec.ts_unit in ("s", "auto") else np.int64
    out = {"user_id": np.empty(n, id_dtype["user_id"]), "item_id": np.empty(n, id_dtype["item_id"]),
           "ts": np.empty(n, ts_dtype), "feedback": np.empty(n, np.int8)}
    for o in opts:
        out[o] = np.empty(n, np.float32)
    numeric_ts = True
    pool = pa.default_memory_pool()
    row = 0
    for g in range(pf.metadata.num_row_groups):
        m = pf.metadata.row_group(g).num_rows
        if m == 0:
            continue
        first = row + 1

        def column(name):  # one column of this row group at a time: small transient buffers
            return pf.read_row_group(g, columns=[name], use_threads=False).column(0).to_pandas()

        for c in ("user_id", "item_id"):
            out[c][row:row + m] = _numbers(column(canon_of[c]), path, canon_of[c], first, "row", integer=True)
        tcol = column(canon_of["ts"])
        if spec.ts_unit == "auto" and tcol.dtype.kind in "iuf":
            out["ts"][row:row + m] = parse_ts(tcol, "s", path, canon_of["ts"], first, "row")  # unit settled below
        else:
            numeric_ts = False
            out["ts"][row:row + m] = parse_ts(tcol, spec.ts_unit, path, canon_of["ts"], first, "row")
        del tcol
        parsed = {}
        for o in opts:  # parsed before the rules, which may read them (e.g. `rating <= 2`)
            v = _numbers(column(canon_of[o]), path, canon_of[o], first, "row", allow_empty=True)
            out[o][row:row + m] = v
            if o in used:
                parsed[o] = v
            del v
        rule_cols = [c for c in read if to_canon.get(c, c) in used and to_canon.get(c, c) not in parsed]
        frame = (pf.read_row_group(g, columns=rule_cols, use_threads=False).to_pandas()
                 .rename(columns=to_canon) if rule_cols else pd.DataFrame(index=pd.RangeIndex(m)))
        for o, v in parsed.items():
            frame[o] = v
        out["feedback"][row:row + m] = _feedback(frame, spec, path)
        del frame, parsed
        pool.release_unused()  # the Arrow allocator would otherwise keep every freed row group mapped
        row += m
    if spec.ts_unit == "auto" and numeric_ts and n:
        sample = out["ts"][:: max(1, n // 100_000)]
        if np.median(sample) > 1e11:  # milliseconds
            np.floor_divide(out["ts"], 1000, out=out["ts"])
    for c in ("user_id", "item_id", "ts"):
        out[c] = narrow_int(out[c])
    out["source"] = source_column(np.zeros(n, bool))
    order = ["user_id", "item_id", "ts", "feedback", "source", *opts]
    return pd.DataFrame({c: out[c] for c in order}, copy=False)


def _parquet_id_dtype(pf, column: str):
    """int32 when the Parquet statistics show every value fits, else int64."""
    import pyarrow as pa

    j = pf.schema_arrow.get_field_index(column)
    if not pa.types.is_integer(pf.schema_arrow.field(j).type):
        return np.int64
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    for g in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(g).column(j).statistics
        if st is None or not st.has_min_max or st.min < lo or st.max > hi:
            return np.int64
    return np.int32
