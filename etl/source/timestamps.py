"""Source timestamps read as unix milliseconds: naive ones in the source's zone, those with an offset by it."""

from __future__ import annotations

import re
import warnings
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

_OFFSET = re.compile(r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$")
"""A time of day followed by a UTC offset or `Z`: the text says its own zone."""


def to_utc_ms(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Source timestamps as unix milliseconds (NA where unreadable, or outside what pandas holds: 1677..2262).

    Naive ones (text or datetime objects) are wall time in the source zone; those that carry an offset (text
    ending in `+05:00` or `Z`, aware datetimes) are read with it, so one column may mix both. ISO 8601 text only,
    with a space or a `T`, with or without fractions: a day-first or month-first date is not guessed.
    A wall time that does not exist (the hour skipped by DST) is moved forward; one that exists twice is read as
    the first of the two: the source cannot say which it meant, and either keeps the message's place in order.
    """
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is not None else _localize(values, zone)
        return ((parsed.dt.tz_convert("UTC") - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    fast = _read_uniform(values, zone)
    if fast is not None:
        return ((fast - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    values = values.astype(object)
    result = pd.Series(pd.NA, index=values.index, dtype="Int64")
    is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    aware = np.fromiter((getattr(v, "tzinfo", None) is not None for v in values), dtype=bool, count=len(values))
    if is_text.any():
        text = values[is_text].str.strip()
        aware[is_text] = text.str.contains(_OFFSET).fillna(False).to_numpy(dtype=bool)
        values = values.copy()
        values[is_text] = text
    other = ~is_text & ~aware & values.notna().to_numpy()
    if other.any():  # datetime, date and pandas objects are read as they are; anything else is text to parse
        odd = values[other]
        readable = np.fromiter((isinstance(v, datetime | date | pd.Timestamp) for v in odd), dtype=bool,
                               count=len(odd))
        values = values.copy()
        values[odd.index[~readable]] = odd[~readable].map(str)
    for mask, read in ((aware, lambda v: _parse_timestamps(v, utc=True)),
                       (~aware & values.notna().to_numpy(), lambda v: _read_naive(v, zone))):
        if mask.any():
            parsed = read(values[mask])
            result[mask] = ((parsed - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    return result


def _read_uniform(values: pd.Series, zone: ZoneInfo) -> pd.Series | None:
    """The common case in one vectorised read: all text or all datetimes, naive alike or with one offset, every
    value read. None when the column mixes kinds or offsets, or a value needs a closer look (spaces, odd ones)."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "datetime", "date"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
        if not pd.api.types.is_datetime64_any_dtype(parsed) or parsed.isna().sum() != values.isna().sum():
            return None
        return (parsed if parsed.dt.tz is not None else _localize(parsed, zone)).dt.tz_convert("UTC")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return None


def _parse_timestamps(values: pd.Series, utc: bool) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(values, errors="coerce", format="ISO8601", utc=utc)
        except (ValueError, TypeError, OverflowError):  # one odd value spoils the vectorised read: go one by one
            return pd.Series([_parse_one(v, utc) for v in values], index=values.index,
                             dtype="datetime64[ns, UTC]" if utc else "datetime64[ns]")


def _parse_one(value: Any, utc: bool) -> pd.Timestamp:
    try:
        parsed = pd.to_datetime(value, errors="coerce", format="ISO8601", utc=utc)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if parsed is pd.NaT or utc or parsed.tzinfo is None:
        return parsed
    return pd.NaT  # an offset where none was expected: not this group's


def _read_naive(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    parsed = _parse_timestamps(values, utc=False)
    try:
        return _localize(parsed, zone).dt.tz_convert("UTC")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.Series([_localize_one(v, zone) for v in parsed], index=parsed.index, dtype="datetime64[ns, UTC]")


def _localize(parsed: pd.Series, zone: ZoneInfo) -> pd.Series:
    return parsed.dt.tz_localize(zone, ambiguous=np.ones(len(parsed), dtype=bool), nonexistent="shift_forward")


def _localize_one(value: pd.Timestamp, zone: ZoneInfo) -> pd.Timestamp:
    try:
        return value.tz_localize(zone, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.NaT
