"""Source rows as data frames: one chunk's frames, every column as objects, and source values read as text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..settings import ConfigurationError
from .schema import ATTACHMENT_COLUMNS


@dataclass
class SourceFrames:
    """One chunk of messages with the conversations, clients and managers they refer to, canonical columns.

    `messages` are the interval's only, with `created_ms` (created_at read as unix milliseconds, NA where it
    cannot be read); `rows_read` counts the rows the query returned, those of the neighbouring days included;
    `attachments` are those of the chunk's messages (none without an attachments query).
    """

    messages: pd.DataFrame
    conversations: pd.DataFrame
    clients: pd.DataFrame
    managers: pd.DataFrame
    rows_read: int = 0
    attachments: pd.DataFrame = field(default_factory=lambda: frame_of([], [], ATTACHMENT_COLUMNS))


COMPOUND_TYPES = (list, tuple, dict, set, frozenset, np.ndarray)
"""Values a driver may return for JSON or array columns (PostgreSQL json, text[]): kept as their JSON text."""


def compound_text(value: Any) -> str:
    """A JSON or array value as its JSON text."""
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, ensure_ascii=False, default=str)


def as_text(value: Any) -> str | None:
    """A source value as text, None for missing: bytes (a BLOB where text belongs) decoded as UTF-8, undecodable
    bytes kept as lone surrogates for the checks to reject; `42`, not `42.0`, when a float holds an integer; a
    JSON or array value as its JSON text."""
    if isinstance(value, COMPOUND_TYPES):
        return compound_text(value)
    if value is None or (not isinstance(value, str | bytes) and pd.isna(value)):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_columns(columns: list[str], wanted: tuple[str, ...], entity: str) -> None:
    """Fail, naming the mapping file, when a query does not return a canonical column."""
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ConfigurationError(
            f"the {entity} query returns no column {', '.join(missing)} (it returns {', '.join(columns)}); "
            "fix the query in the mapping file (AMOJO_ETL_MAPPING) or the source schema"
        )


def frame_of(rows: list, columns: list[str], wanted: tuple[str, ...], optional: tuple[str, ...] = ()
             ) -> pd.DataFrame:
    """Rows (tuples, or row objects) -> a frame of the wanted columns and the optional ones (None where the query
    does not return them), every column as objects."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in wanted + optional})
    if type(rows[0]) is not tuple:
        rows = [tuple(row) for row in rows]
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    frame = frame[list(wanted) + [c for c in optional if c in frame.columns]]
    for column in optional:
        if column not in frame.columns:
            frame[column] = pd.Series(None, index=frame.index, dtype=object)
    return frame

