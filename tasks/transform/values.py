"""Source values read column-wise: as text, as numbers, and JSON or array values as their JSON text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from etl.source import COMPOUND_TYPES, as_text, compound_text


def as_texts(values: pd.Series) -> pd.Series:
    """Any column as str values with None for missing, without touching columns that already are.

    Bytes (a BLOB where text belongs) are decoded as UTF-8, undecodable bytes kept as lone surrogates for the
    checks to reject; numbers become their text (`42`, not `42.0`, when a float holds an integer).
    """
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.where(values.notna(), None).astype(object)
    return values.map(as_text).astype(object)


def per_value(values: pd.Series, normalise: Callable[[Any], Any]) -> pd.Series:
    """Apply `normalise` once per distinct value: cheap on low-cardinality columns such as type or direction."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([normalise(u) for u in uniques] + [normalise(None)], dtype=object)
    return pd.Series(mapped[codes], index=values.index)


_SCALAR_KINDS = {"string", "empty", "integer", "floating", "mixed-integer-float", "decimal", "boolean", "datetime",
                 "datetime64", "date", "bytes", "integer-na", "timedelta", "time"}


def scalars(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with JSON and array values (lists, dicts) as their JSON text, so that every check sees scalars."""
    compound = [c for c in frame.columns
                if pd.api.types.infer_dtype(frame[c], skipna=True) not in _SCALAR_KINDS
                and any(isinstance(v, COMPOUND_TYPES) for v in frame[c])]
    if not compound:
        return frame
    frame = frame.copy()
    for column in compound:
        frame[column] = frame[column].map(lambda v: compound_text(v) if isinstance(v, COMPOUND_TYPES) else v)
    return frame


def as_numbers(values: pd.Series) -> pd.Series:
    """Finite floats; NaN for anything else (text, ±inf, NaN itself, numbers no float holds)."""
    try:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    except (TypeError, ValueError, OverflowError):
        numbers = pd.Series([_number(v) for v in values], index=values.index, dtype="float64")
    return numbers.where(np.isfinite(numbers))


def _number(value: Any) -> float:
    """One value as a float, NaN if it is none: the slow way, when one odd value spoils the vectorised read."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def as_whole_numbers(values: pd.Series) -> pd.Series:
    """Whole numbers of 0 or more (`10`, `10.0`, `"10"`) as Int64; NA for anything else (`1.5`, -1, `abc`)."""
    numbers = as_numbers(values)
    whole = (numbers >= 0) & (numbers < 2.0**63) & (numbers == np.floor(numbers))
    return numbers.where(whole).astype("Int64")
