"""Reading delimited files: every error names the file, the line (1-based, as an editor shows it,
blank lines and quoted line breaks counted) and the field. The loaders of `loaders` and `generic` read
through these."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import DataError, line_of


def require_file(path: Path) -> Path:
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


def open_bytes(path: Path):
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
    f = open_bytes(path)
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
    with io.TextIOWrapper(open_bytes(path), encoding, errors="replace", newline="") as text:
        reader = csv.reader(text, delimiter=sep)
        for _ in reader:
            out.extend(range(line + 1, reader.line_num + 1))
            line = reader.line_num + 1
    return out


def _undecodable(path: Path, encoding: str) -> str:
    """'line N: ...' of the first line that is not valid text in `encoding`."""
    what, f = f"not valid {encoding.removesuffix('-sig')} text", open_bytes(path)
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
    path = require_file(path)
    encoding = "utf-8-sig" if encoding == "utf-8" else encoding  # a byte-order mark is not part of the header
    data = _scan_bytes(path)  # None over 256 MiB: line numbers then ignore blank lines
    blanks = blank_lines(data, sep)
    # a quoted field may span lines: looked for when the lines outnumber what rows and blanks explain
    quoted = data is not None and len(sep) == 1 and b'"' in data
    n_lines = data.count(b"\n") + (not data.endswith(b"\n")) if quoted else 0
    del data
    if names:
        _check_field_count(path, sep, names, header_lines, encoding)
    df = _parse_delimited(path, sep, names, header_lines, encoding)
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
        _parse_numeric(df, col, path, first_data_line, blanks)
    return df


def _check_field_count(path: Path, sep: str, names: list[str], header_lines: int, encoding: str) -> None:
    """A headerless file's first line holds at least the named fields (else: which one is missing)."""
    with open(path, encoding=encoding, errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    found = len(first.split(sep))
    if found < len(names):
        hint = " (wrong separator?)" if found == 1 else f"; field {names[found]!r} is missing"
        raise DataError(f"{path}: line {header_lines + 1}: expected {len(names)} fields {names} separated by "
                        f"{sep!r}, found {found}{hint}")


def _parse_delimited(path: Path, sep: str, names: list[str] | None, header_lines: int, encoding: str) -> pd.DataFrame:
    """pandas' reader, its failures turned into one line naming the file (and the line where pandas says)."""
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
    return df


def _parse_numeric(df: pd.DataFrame, col: str, path: Path, first_data_line: int, blanks: list[int]) -> None:
    """Make `col` numeric in place, or name the line of its first empty or unparsable value."""
    if df[col].dtype.kind in "iuf":
        if df[col].isna().any():
            i = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise DataError(f"{path}: line {line_of(first_data_line, i, blanks)}: field {col!r} is empty")
        return
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
    refuse_repeated_names(path, header_names(path, sep, encoding), "line 1: ")


def refuse_repeated_names(path, names, where: str) -> None:
    """Refuse a table (a CSV header, a Parquet schema) naming a column twice: `where` prefixes the place."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        name = str(name).strip()  # read_table strips the names: " a" and "a" are one name
        if name == "":  # trailing separators (spreadsheet exports): unnamed, unused columns
            continue
        if name in seen:
            raise DataError(f"{path}: {where}column {name!r} is named twice (fields {seen[name] + 1} and {i + 1}); "
                            "rename one")
        seen[name] = i


def skipped_lines(df: pd.DataFrame) -> list:
    """Lines of the file that start no row (blank, or inside a quoted field): line numbers skip them."""
    return df.attrs.get("skipped_lines", [])


def separator_hint(found: list, sep: str, key: str = "") -> str:
    """' (wrong separator ...?)' when a header read as one column, naming the separator it holds
    (a tab-separated file read with ',') and the setting that takes it."""
    if len(found) != 1:
        return ""
    held = next((s for s in ("\t", ";", "|", ",") if s != sep and s in str(found[0])), None)
    if held is None:
        return f" (wrong separator {sep!r}?)"
    return f" (wrong separator {sep!r}? the header holds {held!r}" + (f": set {key}={held!r}" if key else "") + ")"
