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

from .arrays import narrow_int
from .ids import canonical_ints
from .schema import FEATURE_PREFIX, NEGATIVE, NEUTRAL, POSITIVE, DataError, line_of, set_origin, source_column
from .validate import TS_UNIT_NAMES, check_values

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


# ---------------------------------------------------------------- reading helpers
def _require(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


_BLANK_SCAN_MAX = 256 << 20
_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
_UNSCANNED = {".zip", ".zst", ".tar", ".tgz"}  # compressions pandas reads that the line scans do not open


def _open_bytes(path: Path):
    """The file opened for reading bytes, decompressed as pandas would (gzip, bz2, xz by suffix);
    None for the other compressions pandas infers (zip, zstd, tar)."""
    if _UNSCANNED & {s.lower() for s in path.suffixes}:
        return None
    module = _OPENERS.get(path.suffix.lower())
    return open(path, "rb") if module is None else importlib.import_module(module).open(path, "rb")


def _undecompressable(path: Path, e: Exception) -> DataError:
    return DataError(f"{path}: cannot decompress ({e}); corrupt or truncated?")


def _scan_bytes(path: Path) -> bytes | None:
    """The file's (decompressed) bytes for the line scans; None over 256 MiB or when the file cannot
    be opened for a scan."""
    if path.stat().st_size > _BLANK_SCAN_MAX and path.suffix.lower() not in _OPENERS:
        return None
    f = _open_bytes(path)
    if f is None:
        return None
    try:
        with f:
            data = f.read(_BLANK_SCAN_MAX + 1)
    except (OSError, EOFError) as e:  # not gzip after all, truncated, ... (lzma's error is an OSError too)
        raise _undecompressable(path, e) from e
    return None if len(data) > _BLANK_SCAN_MAX else data


def blank_lines(data: bytes | None, sep: str = ",") -> list[int]:
    """1-based numbers of the lines pandas skips, empty or only spaces and tabs that are not the
    separator (skipping them would shift every later line number in an error); None: not scanned."""
    if data is None:
        return []
    space = "".join(c for c in " \t" if c not in sep).encode()
    gap = rb"\n(?=[" + re.escape(space) + rb"]*\r?\n)" if space else rb"\n(?=\r?\n)"
    out, line, pos = [], 1, 0
    for m in re.finditer(gap, data):  # a running count: one pass over the file, however many blanks
        line += data.count(b"\n", pos, m.start() + 1)
        pos = m.start() + 1
        out.append(line)
    return out


def continuation_lines(path: Path, sep: str, encoding: str) -> list[int]:
    """Lines inside quoted fields that span lines (each continues the row above it), read as a stream."""
    import csv
    import io

    out, line = [], 1
    with io.TextIOWrapper(_open_bytes(path), encoding, errors="replace", newline="") as text:
        reader = csv.reader(text, delimiter=sep)
        for _ in reader:
            out.extend(range(line + 1, reader.line_num + 1))
            line = reader.line_num + 1
    return out


def _undecodable(path: Path, encoding: str) -> str:
    """'line N: ...' of the first line that is not valid text in `encoding`."""
    what, f = f"not valid {encoding.removesuffix('-sig')} text", _open_bytes(path)
    if f is None:
        return what
    with f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as e:
                return f"line {n}: {what} (byte 0x{raw[e.start]:02x})"
    return what


def read_table(path, sep: str, names: list[str] | None, *, header_lines: int = 0, encoding="utf-8",
               numeric: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a delimited file; name the line and field of the first bad value.

    `names` given: the file has no header and must have at least len(names) fields per line.
    `numeric`: columns that must parse as numbers.
    """
    path = _require(path)
    encoding = "utf-8-sig" if encoding == "utf-8" else encoding  # a byte-order mark is not part of the header
    data = _scan_bytes(path)  # None over 256 MiB: line numbers then ignore blank lines
    blanks = blank_lines(data, sep)
    # a quoted field may span lines: looked for when the lines outnumber what rows and blanks explain
    quoted = data is not None and len(sep) == 1 and b'"' in data
    n_lines = data.count(b"\n") + (not data.endswith(b"\n")) if quoted else 0
    del data
    if names:
        with open(path, encoding=encoding, errors="replace") as f:
            first = f.readline().rstrip("\r\n")
        found = len(first.split(sep))
        if found < len(names):
            hint = " (wrong separator?)" if found == 1 else f"; field {names[found]!r} is missing"
            raise DataError(f"{path}: line {header_lines + 1}: expected {len(names)} fields {names} separated by "
                            f"{sep!r}, found {found}{hint}")
    try:
        df = pd.read_csv(path, header=None if names else 0, names=names,
                         skiprows=header_lines if names else None, encoding=encoding, **_sep_args(sep),
                         dtype=str if names is None else None,
                         keep_default_na=False, index_col=False, on_bad_lines="error")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {_undecodable(path, encoding)}") from e
    except (OSError, EOFError) as e:  # a corrupt or truncated .gz / .bz2 / .xz
        raise _undecompressable(path, e) from e
    except (pd.errors.ParserError, ValueError) as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(f"{path}: line {m.group(2)}: expected {m.group(1)} fields separated by {sep!r}, "
                            f"saw {m.group(3)} (a stray separator?)") from e
        raise DataError(f"{path}: cannot parse ({e}); is the separator {sep!r} right?") from e
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (empty file?)")
    if names is None:
        _refuse_repeated_header(path, sep, encoding)
    first_data_line = header_lines + 1 if names else 2
    if quoted and n_lines > first_data_line - 1 + len(df) + len(blanks):
        blanks = sorted(set(blanks) | set(continuation_lines(path, sep, encoding)))  # a blank line in quotes: once
    if blanks:
        df.attrs["skipped_lines"] = blanks
    # "user, item, rating": a hand-written header's spaces after the separators are not in the names
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing}; found {list(df.columns)}"
                        f"{separator_hint(list(df.columns), sep)}")
    for col in numeric:
        if df[col].dtype.kind in "iuf":
            if df[col].isna().any():
                i = int(np.flatnonzero(df[col].isna().to_numpy())[0])
                raise DataError(f"{path}: line {line_of(first_data_line, i, blanks)}: field {col!r} is empty")
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = df[col].iloc[i]
            line = line_of(first_data_line, i, blanks)
            if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
                raise DataError(f"{path}: line {line}: field {col!r} is empty (a line with fewer fields?)")
            raise DataError(f"{path}: line {line}: field {col!r}: cannot parse {value!r} as a number")
        df[col] = num
    return df


TS_UNITS = (*TS_UNIT_NAMES, "datetime", "auto")
PER_SECOND = {unit: 1000 ** i for i, unit in enumerate(TS_UNIT_NAMES)}  # s 1, ms 1000, us 1e6, ns 1e9


def auto_unit(median: float) -> str:
    """The unit of numeric timestamps from their median (2001-2286 in seconds is 1e9-1e10; 1995 in
    microseconds is 7.9e14, in nanoseconds 7.9e17)."""
    return "ns" if median > 1e17 else "us" if median > 1e14 else "ms" if median > 1e11 else "s"


def parse_ts(values: pd.Series, unit: str, path, field: str, first_line: int, label: str = "line",
             skipped=(), fmt: str = "", fmt_guessed: bool = False) -> np.ndarray:
    """UTC seconds (int64) from numbers (s, ms, us, ns) or date strings (in strftime format `fmt` when
    given; `fmt_guessed`: a format taken from the file's first dates, see `guess_date_format`);
    names the first value that does not parse or overflows int64 (`label` "row" for Parquet,
    whose rows are counted from 1).
    `auto`: numbers when most values are numbers (unit by their median, `auto_unit`),
    else dates. Plausible range and mixed units: `validate.check_timestamps`."""
    def where(i):
        return f"{path}: {label} {line_of(first_line, i, skipped)}: field {field!r}"

    if unit not in TS_UNITS:
        raise DataError(f"data.generic.ts_unit: {unit!r} is not one of {'|'.join(TS_UNITS)}")
    if unit == "datetime" and values.dtype.kind in "iuf":
        raise DataError(f"{where(0)}: data.generic.ts_unit is datetime but the timestamps are numbers; "
                        f"set it to auto (or {'|'.join(PER_SECOND)})")
    if values.dtype.kind == "M" or unit == "datetime":
        return _parse_dates(values, where, fmt, path, fmt_guessed)
    num = values
    if values.dtype.kind not in "iufb":
        num = pd.to_numeric(values, errors="coerce")
        if unit == "auto" and num.isna().sum() * 2 > len(values):
            return _parse_dates(values, where, fmt, path, fmt_guessed)  # mostly not numbers: dates
    bad = num.isna().to_numpy() if num.dtype.kind == "f" else np.zeros(len(num), bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = values.iloc[i]
        if pd.isna(raw) or str(raw).strip() == "":
            raise DataError(f"{where(i)}: empty timestamp")
        others = " (the other values are numbers)" if unit == "auto" else ""
        what = TS_UNIT_NAMES.get(unit, "a number")
        raise DataError(f"{where(i)}: cannot parse timestamp {raw!r} as {what}{others}")
    v = num.to_numpy()
    if unit == "auto":
        unit = auto_unit(float(np.median(v))) if len(v) else "s"
    return _seconds(v, PER_SECOND[unit], where)


def _seconds(v: np.ndarray, per_second: int, where) -> np.ndarray:
    """int64 seconds; a value beyond int64 is refused, not wrapped around."""
    if v.dtype.kind == "f":
        over = ~(np.abs(v) < 9.2e18)
    elif v.dtype.kind == "u":
        over = v > np.iinfo(np.int64).max
    else:
        over = None
    if over is not None and over.any():
        i = int(np.flatnonzero(over)[0])
        raise DataError(f"{where(i)}: timestamp {v[i].item()!r} does not fit a 64-bit integer (int64 overflow)")
    out = np.floor(v).astype(np.int64) if v.dtype.kind == "f" else v.astype(np.int64, copy=False)
    return out // per_second if per_second > 1 else out


def guess_date_format(values: pd.Series) -> str:
    """The strftime format of the first date, as pandas infers it ("ISO8601" for ISO 8601 forms,
    whose mixes it reads; "" when it cannot tell): a file read in parts (Parquet row groups, hive
    files) reads every part in it, as a CSV column is read whole."""
    from pandas.tseries.api import guess_datetime_format

    text = values.dropna().astype(str).str.strip()
    text = text[text != ""]
    guess = guess_datetime_format(text.iloc[0]) if len(text) else None
    return "" if guess is None else "ISO8601" if guess.startswith("%Y-%m-%d") else guess


def _parse_dates(values: pd.Series, where, fmt: str = "", path=None, fmt_guessed: bool = False) -> np.ndarray:
    import warnings

    if fmt and values.dtype.kind != "M":
        if fmt_guessed:
            _warn_day_month(values, path)
        try:
            dt = pd.to_datetime(values, errors="coerce", utc=True, format=fmt)
        except ValueError as e:  # a bad directive
            raise DataError(f"{path}: data.generic.ts_format {fmt!r}: {e}") from e
    else:
        _warn_day_month(values, path)
        with warnings.catch_warnings():  # "could not infer format": each value parsed on its own, as intended
            warnings.simplefilter("ignore", UserWarning)
            dt = pd.to_datetime(values, errors="coerce", utc=True)
            if dt.isna().any():  # the format is inferred from the first value: ISO 8601 forms may mix (date, date time)
                iso = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
                dt = iso if iso.isna().sum() < dt.isna().sum() else dt
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = f" with data.generic.ts_format {fmt!r}" if fmt and values.dtype.kind != "M" else ""
        if fmt_guessed:
            hint = f" as {fmt!r}, the format of the file's first dates"
        day_month = re.match(DAY_MONTH, str(values.iloc[i]))
        if (not fmt or fmt_guessed) and day_month:
            hint += f" (day/month? set data.generic.ts_format, e.g. {_day_month_format(day_month)!r})"
        elif re.fullmatch(r"\s*[+-]?\d+(\.\d*)?\s*", str(values.iloc[i])):
            hint += " (a number among dates: one form per column, all dates or all numbers)"
        raise DataError(f"{where(i)}: cannot parse timestamp {values.iloc[i]!r}{hint}")
    # pandas' datetime resolution varies (ns, us): go through a Timedelta, not raw int64
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")


DAY_MONTH = r"^\s*(\d{1,2})([/.-])(\d{1,2})[/.-]\d{2,4}\b"  # nn/nn/yyyy: month/day or day/month
_warned_day_month: set[str] = set()


def _warn_day_month(values: pd.Series, path) -> None:
    """Dates written nn/nn/yyyy whose first two numbers are all 12 or less read as month/day, and
    nothing in them says otherwise: say so (once per file), with the setting that reads them as
    day/month. Other date forms cost one match of the first value."""
    if values.dtype.kind == "M" or not len(values) or str(path) in _warned_day_month \
            or not re.match(DAY_MONTH, str(values.iloc[0])):
        return
    parts = values.astype(str).str.extract(DAY_MONTH)
    if parts[0].isna().any():
        return
    first, second = parts[0].astype(int), parts[2].astype(int)
    if first.max() <= 12 and second.max() <= 12 and (first != second).any():
        _warned_day_month.add(str(path))
        example = str(values.iloc[int(np.flatnonzero((first != second).to_numpy())[0])])
        print(f"[data] warning: {path}: dates such as {example!r} read both as month/day and day/month; read "
              f"as month/day. If they are day/month, set data.generic.ts_format (e.g. "
              f"{_day_month_format(re.match(DAY_MONTH, example))!r})")


def _day_month_format(match: re.Match) -> str:
    """The day/month strftime format of a date that DAY_MONTH matched, with its separator."""
    sep = match.group(2)
    rest = match.string[match.end():].strip()
    clock = {2: " %H", 5: " %H:%M", 8: " %H:%M:%S"}.get(len(rest), " %H:%M:%S" if rest else "")
    year = "%Y" if len(re.split(r"[/.-]", match.group(0).strip())[-1]) == 4 else "%y"
    return f"%d{sep}%m{sep}{year}{clock}"


def _from_ratings(user, item, ts, rating, rule: RatingRule) -> pd.DataFrame:
    """Ids as read (ids.encode_ids maps them), ts already in int64 seconds."""
    rating = np.asarray(rating, dtype="float64")
    fb = np.where(rating <= rule.negative_max, NEGATIVE, np.where(rating >= rule.positive_min, POSITIVE, NEUTRAL))
    return pd.DataFrame({"user_id": np.asarray(user), "item_id": np.asarray(item),
                         "ts": np.asarray(ts, "int64"), "feedback": fb.astype("int8"),
                         "source": source_column(np.zeros(len(fb), bool)), "rating": rating})


def _sep_args(sep: str) -> dict:
    """read_csv's separator and engine: the python engine reads a longer separator as a regular
    expression, and "||" is meant literally."""
    return {"sep": re.escape(sep) if len(sep) > 1 else sep, "engine": "c" if len(sep) == 1 else "python"}


def header_names(path: Path, sep: str, encoding: str = "utf-8-sig") -> list[str]:
    """A delimited file's header line as written (read_csv's own header renames a repeated name)."""
    return pd.read_csv(path, header=None, nrows=1, dtype=str, encoding=encoding, keep_default_na=False,
                       **_sep_args(sep)).iloc[0].tolist()


def _refuse_repeated_header(path: Path, sep: str, encoding: str) -> None:
    """A header naming a column twice is ambiguous: pandas would rename the second (`rating.1`) and
    the config's name would pick the first silently."""
    _refuse_repeated_names(path, header_names(path, sep, encoding), "line 1: ")


def _refuse_repeated_names(path, names, where: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        name = str(name).strip()  # read_table strips the names: " a" and "a" are one name
        if name == "":  # trailing separators (spreadsheet exports): unnamed, unused columns
            continue
        if name in seen:
            raise DataError(f"{path}: {where}column {name!r} is named twice (fields {seen[name] + 1} and {i + 1}); "
                            "rename one")
        seen[name] = i


def _with_origin(df: pd.DataFrame, path, first_line: int, fields: dict | None = None, blanks=()) -> pd.DataFrame:
    """Tag a frame read from one text file: row i is line first_line + i (blank lines skipped)."""
    return set_origin(df, [(path, first_line, len(df), "line", blanks)], fields)


def _blanks(df: pd.DataFrame) -> list:
    """Lines of the file that start no row (blank, or inside a quoted field): line numbers skip them."""
    return df.attrs.get("skipped_lines", [])


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
    ts = parse_ts(inter.ts, "s", path / "u.data", "ts", 1, skipped=_blanks(inter))
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, ts, inter.rating, rule), path / "u.data", 1,
                        blanks=_blanks(inter)), \
        _with_origin(_movie_items(items.item_id, items.title, genres), path / "u.item", 1, blanks=_blanks(items))


def load_movielens_csv(path, rule: RatingRule = RatingRule()):
    """ml-latest(-small), ml-20m, ml-25m, ml-32m: ratings.csv and movies.csv with headers."""
    path = Path(path)
    inter = read_table(path / "ratings.csv", ",", None, required=("userId", "movieId", "rating", "timestamp"),
                       numeric=("userId", "movieId", "rating", "timestamp"))
    movies = read_table(path / "movies.csv", ",", None, required=("movieId", "title", "genres"), numeric=("movieId",))
    genres = [g if g != "(no genres listed)" else "" for g in movies.genres]
    ts = parse_ts(inter.timestamp, "s", path / "ratings.csv", "timestamp", 2, skipped=_blanks(inter))
    return _with_origin(_from_ratings(inter.userId, inter.movieId, ts, inter.rating, rule),
                        path / "ratings.csv", 2, {"user_id": "userId", "item_id": "movieId", "ts": "timestamp"},
                        _blanks(inter)), \
        _with_origin(_movie_items(movies.movieId, movies.title, genres), path / "movies.csv", 2, {"item_id": "movieId"},
                     _blanks(movies))


def utf8_or_latin1(path: Path) -> str:
    """GroupLens wrote its older files in latin-1 and later ones in UTF-8: UTF-8 when the whole file
    decodes as UTF-8 (a latin-1 accent never does), else latin-1, so no title turns into mojibake."""
    f = _open_bytes(_require(path))
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
    ts = parse_ts(inter.ts, "s", path / "ratings.dat", "ts", 1, skipped=_blanks(inter))
    return _with_origin(_from_ratings(inter.user_id, inter.item_id, ts, inter.rating, rule), path / "ratings.dat", 1,
                        blanks=_blanks(inter)), \
        _with_origin(_movie_items(movies.item_id, movies.title, list(movies.genres)), path / "movies.dat", 1,
                     blanks=_blanks(movies))


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
            raise DataError(f"{inter_path}: line {line_of(2, i, _blanks(inter))}: field 'rating': "
                            f"cannot parse {inter['rating'].iloc[i]!r} as a number")
        inter["rating"] = num
    ts = parse_ts(inter["timestamp"], "s", inter_path, "timestamp", 2, skipped=_blanks(inter))
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
                        inter_path, 2, {"ts": "timestamp"}, _blanks(inter)), \
        _with_origin(_movie_items(_ids_as_read(items["item_id"]), title, genres), item_path, 2, blanks=_blanks(items))


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
        blanks = _blanks(df)
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


# ---------------------------------------------------------------- any CSV / Parquet log
TAB = "\t"


@dataclass
class GenericLogSpec:
    """A YAML column mapping and the rules for negative / positive (pandas `eval` expressions
    over the *mapped* column names, e.g. `rating <= 2`, `is_hate == 1`)."""
    path: str = ""
    items_path: str = ""
    sep: str = ","
    items_sep: str = ""  # the items table's separator when it differs from the log's ("": the same)
    columns: dict = field(default_factory=lambda: {"user_id": "user_id", "item_id": "item_id", "ts": "ts"})
    item_columns: dict = field(default_factory=lambda: {"item_id": "item_id", "title": "title", "text": "text"})
    ts_unit: str = "auto"  # s | ms | us | ns | datetime | auto
    ts_format: str = ""    # strftime format of date strings, e.g. "%d/%m/%Y %H:%M" (default: inferred)
    negative_if: str = "rating <= 2"
    positive_if: str = "rating >= 4"
    feature_columns: list = field(default_factory=list)

    def __post_init__(self):
        # `--set data.generic.sep='\t'` and YAML's plain or single-quoted \t give a backslash and a t, not
        # a tab; no log is separated by those two characters, so they are read as the tab they mean
        self.sep, self.items_sep = (TAB if s == "\\t" else s for s in (self.sep, self.items_sep))


def _read_any(path: Path, sep: str, required: tuple[str, ...] = (), ids: tuple[str, ...] = (),
              texts: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; columns whose every non-blank cell is a number become numbers, except
    the `texts` columns (a title "1984" stays text) and the `ids` columns, which become integers only
    when every id is written as one prints (007 is not 7, a 20-digit id is no float): ids.encode_ids
    maps the rest as text."""
    path = _require(path)
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError):
            names = []  # not a readable Parquet file: read_parquet below says so
        _refuse_repeated_names(path, names, "")
        df = pd.read_parquet(path)
        if len(df) == 0:
            raise DataError(f"{path}: no data rows (empty file?)")
        return df
    df = read_table(path, sep, None, required=required)
    for col in df.columns:
        if col in ids:
            df[col] = canonical_ints(df[col])
        elif col not in texts:  # a number in every cell that is not blank (a blank becomes NaN: no value, as in Parquet)
            num = pd.to_numeric(df[col], errors="coerce")
            blank = df[col].str.strip() == ""
            if (num.notna() | blank).all() and num.notna().any():
                df[col] = num
    return df


def separator_hint(found: list, sep: str, key: str = "") -> str:
    """' (wrong separator ...?)' when a header read as one column, naming the separator it holds
    (a tab-separated file read with ',') and the setting that takes it."""
    if len(found) != 1:
        return ""
    held = next((s for s in ("\t", ";", "|", ",") if s != sep and s in str(found[0])), None)
    if held is None:
        return f" (wrong separator {sep!r}?)"
    return f" (wrong separator {sep!r}? the header holds {held!r}" + (f": set {key}={held!r}" if key else "") + ")"


def check_mapping(path: Path, found, mapping: dict, key: str, where: str = "line 1: ") -> None:
    """Refuse a file column mapped to a canonical name that another of the file's columns already has."""
    for canon, src in mapping.items():
        if src != canon and src in found and canon in found and canon not in mapping.values():
            raise DataError(f"{path}: {where}column {src!r} is mapped to {canon!r} ({key}), and the file also has "
                            f"a column {canon!r}; map {canon!r} to one of them in {key}")


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
             allow_empty: bool = False, skipped=()) -> np.ndarray:
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
        line = line_of(first_line, i, skipped)
        if pd.isna(value) or str(value).strip() == "":
            raise DataError(f"{path}: {label} {line}: field {col!r} is empty")
        what = "an integer" if integer else "a number"
        raise DataError(f"{path}: {label} {line}: field {col!r}: cannot parse {value!r} as {what}")
    if integer:
        return np.asarray(v).astype(np.int64)
    return np.asarray(v, dtype="float64")


def _feedback(df: pd.DataFrame, spec: "GenericLogSpec", path) -> np.ndarray:
    masks = {}
    for name, expr in (("negative_if", spec.negative_if), ("positive_if", spec.positive_if)):
        try:
            result = df.eval(expr) if expr else pd.Series(np.zeros(len(df), bool))
        except Exception as e:  # noqa: BLE001 - pandas raises many kinds here
            raise DataError(f"data.generic.{name}: cannot evaluate {expr!r} on {path} (columns {list(df.columns)}): {e}") from e
        masks[name] = _rule_mask(result, len(df), f"data.generic.{name}: {expr!r} on {path}")
    return np.where(masks["negative_if"], NEGATIVE, np.where(masks["positive_if"], POSITIVE, NEUTRAL)).astype("int8")


def _rule_mask(result, n: int, what: str) -> np.ndarray:
    """A rule's value per row as true/false: booleans (a missing one false), or flags written 0/1 (a
    missing one false); anything else (a rating, a text label) is refused, not cast: a bare `rating`
    would make every rated row negative."""
    r = pd.Series(result) if np.ndim(result) else None
    if r is None or len(r) != n:
        raise DataError(f"{what} does not give one true/false value per row")
    if r.dtype == bool:
        return r.to_numpy()
    v = pd.to_numeric(r.astype(object).where(r.notna(), np.nan), errors="coerce").to_numpy("float64")
    bad = ~(np.isnan(v) | (v == 0) | (v == 1)) | (np.isnan(v) & r.notna().to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = r.iloc[i].item() if isinstance(r.iloc[i], np.generic) else r.iloc[i]
        raise DataError(f"{what} does not give true/false per row: data row {i + 1} gives {value!r} "
                        f"(write a comparison, e.g. `is_hate == 1` or `rating <= 2`)")
    return v == 1


OPTIONAL_FLOATS = ("rating", "play_time_s", "duration_s")


PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet_input(path) -> bool:
    """A Parquet file, a folder (of Parquet files, hive partitions included) or a glob."""
    p = str(path)
    if Path(p).is_file():  # a file named log[2024].csv is that file, not a pattern
        return Path(p).suffix in PARQUET_SUFFIXES
    return Path(p).suffix in PARQUET_SUFFIXES or Path(p).is_dir() or any(ch in p for ch in "*?[")


def parquet_inputs(path) -> list[tuple[Path, dict]]:
    """(file, hive partition values) for a Parquet file, a folder of them (`key=value/` folders give
    columns; files and folders starting with `_` or `.` are skipped, as Spark writes them) or a glob."""
    import glob
    from urllib.parse import unquote

    p = str(path)
    if any(ch in p for ch in "*?[") and not Path(p).exists():
        files, root = sorted(Path(f) for f in glob.glob(p, recursive=True) if Path(f).is_file()), None
    elif Path(p).is_dir():
        root = Path(p)
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in PARQUET_SUFFIXES
                       and not any(x.startswith(("_", ".")) for x in f.relative_to(root).parts))
    else:
        return [(_require(Path(p)), {})]
    if not files:
        raise DataError(f"{path}: no Parquet files (*.parquet) found")
    other = [f for f in files if f.suffix not in PARQUET_SUFFIXES]
    if other:
        raise DataError(f"{other[0]}: not a Parquet file; a folder or glob input must hold only *.parquet files")
    out = []
    for f in files:
        parts = f.relative_to(root).parts[:-1] if root else f.parts[:-1]
        out.append((_require(f), dict(unquote(x).split("=", 1) for x in parts if "=" in x)))
    return out


def load_generic(spec: GenericLogSpec):
    """Any CSV or Parquet log (a file, a folder of Parquet files with hive partitions, or a glob),
    through the YAML column mapping of `spec`."""
    cols = dict(spec.columns)
    for need in ("user_id", "item_id", "ts"):
        if need not in cols:
            raise DataError(f"data.generic.columns: mapping for {need!r} is missing")
    if not spec.path:
        raise DataError("data.generic.path: required for format 'generic' (or set data.path)")
    if not spec.sep:
        raise DataError("data.generic.sep: empty (in YAML and --set, quote a '|' separator: sep: \"|\")")
    if spec.feature_columns and not spec.items_path:
        raise DataError(f"data.generic.feature_columns {list(spec.feature_columns)}: item features come from the items "
                        "table; set data.generic.items_path")
    if is_parquet_input(spec.path):
        inputs = parquet_inputs(spec.path)
        dates = {"fmt": spec.ts_format, "guessed": False}  # one date format for every file
        frames = [_load_generic_parquet(spec, f, cols, keys, dates) for f, keys in inputs]
        out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        parts = [(f, 1, len(fr), "row") for (f, _), fr in zip(inputs, frames)]
    else:
        out, blanks = _load_generic_csv(spec, _require(Path(spec.path)), cols)
        parts = [(Path(spec.path), 2, len(out), "line", blanks)]
    set_origin(out, parts, dict(cols))
    it = _generic_items(spec, out) if spec.items_path else pd.DataFrame({"item_id": pd.unique(out["item_id"])})
    it = it.rename(columns={c: FEATURE_PREFIX + c for c in spec.feature_columns if c in it.columns})
    # no title column: titles stay empty (clean_items), so alignment teaches the items' text, or, with
    # no text either, nothing (an "item <id>" name is no text to align); reports name such items by id
    return out, it


def _generic_items(spec: GenericLogSpec, out: pd.DataFrame) -> pd.DataFrame:
    ipath = Path(spec.items_path)
    if is_parquet_input(ipath):
        it = pd.concat([pd.read_parquet(f) for f, _ in parquet_inputs(ipath)], ignore_index=True)
        csv, blanks = False, []
    else:
        it = _read_any(ipath, spec.items_sep or spec.sep, ids=(spec.item_columns.get("item_id", "item_id"),),
                       texts=(spec.item_columns.get("title", "title"), spec.item_columns.get("text", "text")))
        csv, blanks = True, _blanks(it)
    check_mapping(ipath, it.columns, spec.item_columns, "data.generic.item_columns", "line 1: " if csv else "")
    named = [src for canon, src in spec.item_columns.items() if src != canon] + list(spec.feature_columns)
    absent = [c for c in named if c not in it.columns]  # a typo would leave titles or features out silently
    if absent:
        hint = separator_hint(list(it.columns), spec.items_sep or spec.sep, "data.generic.items_sep") if csv else ""
        raise DataError(f"{ipath}: {'line 1: ' if csv else ''}missing column(s) {absent} named in "
                        f"data.generic.item_columns / data.generic.feature_columns; found {list(it.columns)}{hint}")
    it = it.rename(columns={v: k for k, v in spec.item_columns.items()})
    if "title" in it.columns:  # the text encoder reads `text`: an item without one is described by its title
        title = it["title"].fillna("").astype(str)
        text = it["text"].fillna("").astype(str) if "text" in it.columns else pd.Series("", index=it.index)
        it["text"] = text.where(text.str.strip() != "", title)
    if "item_id" not in it.columns:
        hint = separator_hint(list(it.columns), spec.items_sep or spec.sep, "data.generic.items_sep")
        raise DataError(f"{ipath}: line 1: missing item id column {spec.item_columns.get('item_id')!r}; "
                        f"found {list(it.columns)}{hint}")
    set_origin(it, [(ipath, 2 if csv else 1, len(it), "line" if csv else "row", blanks)],
               {"item_id": spec.item_columns.get("item_id", "item_id")})
    return it


def _load_generic_csv(spec: GenericLogSpec, path: Path, cols: dict) -> tuple[pd.DataFrame, list]:
    raw = _read_any(path, spec.sep, ids=(cols["user_id"], cols["item_id"]))
    first_line, blanks = 2, _blanks(raw)
    missing = [src for src in cols.values() if src not in raw.columns]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing} named in data.generic.columns; "
                        f"found {list(raw.columns)}{separator_hint(list(raw.columns), spec.sep, 'data.generic.sep')}")
    check_mapping(path, raw.columns, cols, "data.generic.columns")
    df = raw.rename(columns={v: k for k, v in cols.items()})
    ts = parse_ts(df["ts"], spec.ts_unit, path, cols["ts"], first_line, skipped=blanks, fmt=spec.ts_format)
    opts = {}
    for opt in OPTIONAL_FLOATS:  # parsed before the rules, which may read them (e.g. `rating <= 2`)
        if opt in df.columns:
            opts[opt] = df[opt] = _numbers(df[opt], path, cols.get(opt, opt), first_line, "line", allow_empty=True,
                                           skipped=blanks)
    fb = _feedback(df, spec, path)
    # ids as read: ids.encode_ids maps strings, 64-bit and sparse ids and refuses empty / fractional ones
    out = {"user_id": df["user_id"].to_numpy(), "item_id": df["item_id"].to_numpy(), "ts": ts, "feedback": fb,
           "source": source_column(np.zeros(len(fb), bool)), **opts}
    return pd.DataFrame(out, copy=False), blanks


def _parquet_column(pf, g: int, name: str, keys: dict, m: int) -> pd.Series:
    """One column of one row group (a hive partition key: its value, repeated)."""
    if name in keys:
        value = keys[name]
        num = pd.to_numeric(pd.Series([value]), errors="coerce")
        return pd.Series(np.repeat(num.to_numpy() if num.notna().all() else np.array([value], object), m))
    return pf.read_row_group(g, columns=[name], use_threads=False).column(0).to_pandas()


def _id_buffer(pf, name: str, keys: dict, n: int) -> np.ndarray:
    """Where a Parquet id column goes: narrow ints for integer columns, else floats or objects
    (strings), which ids.encode_ids maps."""
    import pyarrow as pa

    if name in keys:
        return np.empty(n, object)
    t = pf.schema_arrow.field(name).type
    if pa.types.is_unsigned_integer(t) and t.bit_width == 64:
        return np.empty(n, np.uint64)  # may exceed int64: encode_ids maps it, never wraps it
    if pa.types.is_integer(t):
        return np.empty(n, _parquet_id_dtype(pf, name))
    return np.empty(n, np.float64 if pa.types.is_floating(t) else object)


def _load_generic_parquet(spec: GenericLogSpec, path: Path, cols: dict, keys: dict | None = None,
                          dates: dict | None = None) -> pd.DataFrame:
    """Parquet, read one row group at a time into narrow preallocated columns (int32 ids where they
    fit, float32 play / duration / rating): only the columns the mapping and the rules name.
    `keys`: hive partition values of this file (columns too). `dates`: {"fmt", "guessed"}, the date
    format every row group and file is read in (the setting's, else the first dates')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = keys or {}
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds on a broken file
        raise DataError(f"{path}: cannot read as Parquet ({e})") from e
    _refuse_repeated_names(path, pf.schema_arrow.names, "")
    names = pf.schema_arrow.names + [k for k in keys if k not in pf.schema_arrow.names]
    missing = [src for src in cols.values() if src not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} named in data.generic.columns; found {names}")
    check_mapping(path, names, cols, "data.generic.columns", "")
    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: no data rows (empty file?)")
    to_canon = {v: k for k, v in cols.items()}
    mapped = [to_canon.get(c, c) for c in names]
    used = _expr_names(spec.negative_if or "", mapped) | _expr_names(spec.positive_if or "", mapped)
    canon_of = {to_canon.get(c, c): c for c in names}
    opts = [o for o in OPTIONAL_FLOATS if o in cols or (o in names and o not in to_canon)]
    # seconds that fit int32 are held as int32 (no millisecond guess can apply to them)
    ts_int = canon_of["ts"] not in keys and pa.types.is_integer(pf.schema_arrow.field(canon_of["ts"]).type)
    ts_dtype = _parquet_id_dtype(pf, canon_of["ts"]) if spec.ts_unit in ("s", "auto") and ts_int else np.int64
    out = {"user_id": _id_buffer(pf, canon_of["user_id"], keys, n), "item_id": _id_buffer(pf, canon_of["item_id"], keys, n),
           "ts": np.empty(n, ts_dtype), "feedback": np.empty(n, np.int8)}
    for o in opts:
        out[o] = np.empty(n, np.float32)
    dates = dates if dates is not None else {"fmt": spec.ts_format, "guessed": False}
    numeric_ts = _read_row_groups(pf, path, spec, keys, out, opts, used, canon_of, to_canon, names, dates)
    if spec.ts_unit == "auto" and numeric_ts and n:
        sample = out["ts"][:: max(1, n // 100_000)]
        per_second = PER_SECOND[auto_unit(float(np.median(sample)))]
        if per_second > 1:
            np.floor_divide(out["ts"], per_second, out=out["ts"])
    for c in ("user_id", "item_id", "ts"):
        if out[c].dtype.kind == "i":
            out[c] = narrow_int(out[c])
    out["source"] = source_column(np.zeros(n, bool))
    order = ["user_id", "item_id", "ts", "feedback", "source", *opts]
    return pd.DataFrame({c: out[c] for c in order}, copy=False)


def _read_row_groups(pf, path, spec, keys, out, opts, used, canon_of, to_canon, names, dates) -> bool:
    """Fill `out` one row group at a time; True when every timestamp was numeric (unit settled later)."""
    import pyarrow as pa

    numeric_ts = True
    pool = pa.default_memory_pool()
    row = 0
    for g in range(pf.metadata.num_row_groups):
        m = pf.metadata.row_group(g).num_rows
        if m == 0:
            continue
        first = row + 1
        for c in ("user_id", "item_id"):
            col = _parquet_column(pf, g, canon_of[c], keys, m)
            if col.isna().any():  # a null would be cast into the int buffer as an id of its own
                i = int(np.flatnonzero(col.isna().to_numpy())[0])
                raise DataError(f"{path}: row {first + i}: field {canon_of[c]!r} is empty (every row needs an id)")
            out[c][row:row + m] = col.to_numpy()
            del col
        tcol = _parquet_column(pf, g, canon_of["ts"], keys, m)
        if spec.ts_unit == "auto" and tcol.dtype.kind in "iuf":
            out["ts"][row:row + m] = parse_ts(tcol, "s", path, canon_of["ts"], first, "row")  # unit settled below
        else:
            numeric_ts = False
            if not dates["fmt"] and tcol.dtype.kind in "OSU":
                dates.update(fmt=guess_date_format(tcol), guessed=True)
            out["ts"][row:row + m] = parse_ts(tcol, spec.ts_unit, path, canon_of["ts"], first, "row",
                                              fmt=dates["fmt"], fmt_guessed=dates["guessed"])
        del tcol
        parsed = {}
        for o in opts:  # parsed before the rules, which may read them (e.g. `rating <= 2`)
            v = _numbers(_parquet_column(pf, g, canon_of[o], keys, m), path, canon_of[o], first, "row", allow_empty=True)
            out[o][row:row + m] = v
            if o in used:
                parsed[o] = v
            del v
        rule_cols = [c for c in names if to_canon.get(c, c) in used and to_canon.get(c, c) not in parsed]
        frame = pd.DataFrame({to_canon.get(c, c): _parquet_column(pf, g, c, keys, m).to_numpy() for c in rule_cols},
                             index=pd.RangeIndex(m))
        for o, v in parsed.items():
            frame[o] = v
        out["feedback"][row:row + m] = _feedback(frame, spec, path)
        del frame, parsed
        pool.release_unused()  # the Arrow allocator would otherwise keep every freed row group mapped
        row += m
    return numeric_ts


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
