"""Timestamps as UTC seconds (int64): numbers in s, ms, us or ns, or date strings; the first value
that does not parse (or overflows int64) is named with its file, line and field. Plausible range and
mixed units: `validate.check_timestamps`."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .schema import DataError, line_of
from .validate import TS_UNIT_NAMES


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
