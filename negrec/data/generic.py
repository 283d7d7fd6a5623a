"""Any CSV or Parquet log (a file, a folder of Parquet files with hive partitions, or a glob) through
the YAML column mapping of `data.generic`, with rules for what counts as negative and positive.
Every parse error names the file, the line (or Parquet row) and the field."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .arrays import narrow_int
from .ids import canonical_ints
from .reading import read_table, refuse_repeated_names, require_file, separator_hint, skipped_lines
from .schema import FEATURE_PREFIX, NEGATIVE, NEUTRAL, POSITIVE, DataError, line_of, set_origin, source_column
from .timestamps import PER_SECOND, auto_unit, guess_date_format, parse_ts


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
    path = require_file(path)
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError):
            names = []  # not a readable Parquet file: read_parquet below says so
        refuse_repeated_names(path, names, "")
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
        return [(require_file(Path(p)), {})]
    if not files:
        raise DataError(f"{path}: no Parquet files (*.parquet) found")
    other = [f for f in files if f.suffix not in PARQUET_SUFFIXES]
    if other:
        raise DataError(f"{other[0]}: not a Parquet file; a folder or glob input must hold only *.parquet files")
    out = []
    for f in files:
        parts = f.relative_to(root).parts[:-1] if root else f.parts[:-1]
        out.append((require_file(f), dict(unquote(x).split("=", 1) for x in parts if "=" in x)))
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
        out, blanks = _load_generic_csv(spec, require_file(Path(spec.path)), cols)
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
        csv, blanks = True, skipped_lines(it)
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
    first_line, blanks = 2, skipped_lines(raw)
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
    refuse_repeated_names(path, pf.schema_arrow.names, "")
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
