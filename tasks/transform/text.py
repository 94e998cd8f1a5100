"""Text as it can be sent and written anywhere: message texts repaired, names printable, ids and key parts that no
ledger column or JSON body would choke on."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from etl.source import COMPOUND_TYPES, as_text, compound_text

from .digests import hash_text
from .values import per_value

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNFIT_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPED = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
_TEXT_OK, _TEXT_BLANK, _TEXT_INVALID, _TEXT_CONTROL = 0, 1, 2, 3
_TEXT_FLAW = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _classify_text(value: Any) -> int:
    """Whether a text is fine, blank, not valid UTF-8, or holds control characters to drop."""
    if not isinstance(value, str) or not value.strip():
        return _TEXT_BLANK
    if _TEXT_FLAW.search(value) is None:
        return _TEXT_OK
    if _SURROGATE.search(value):
        return _TEXT_INVALID
    return _TEXT_CONTROL if _CONTROL.sub("", value).strip() else _TEXT_BLANK  # control characters only: blank


def repair_text(raw: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Texts without control characters; masks of blank texts and of those that are not valid UTF-8.

    Undecodable bytes arrive as lone surrogates (the source reads text with `surrogateescape`); those cannot be
    repaired without guessing, so they are rejected rather than sent garbled. One pass over the column.
    """
    kind = np.fromiter(map(_classify_text, raw), dtype=np.int8, count=len(raw))
    text = raw.astype(object).where(kind != _TEXT_BLANK, None)
    control = kind == _TEXT_CONTROL
    if control.any():
        text[control] = text[control].map(lambda s: _CONTROL.sub("", s))
    return text, pd.Series(kind == _TEXT_BLANK, index=raw.index), pd.Series(kind == _TEXT_INVALID, index=raw.index)


def printable(value: Any) -> str | None:
    """A source value as text that can be written anywhere: undecodable bytes shown as escapes."""
    if isinstance(value, COMPOUND_TYPES):
        value = compound_text(value)
    elif value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def printable_names(names: pd.Series) -> pd.Series:
    """Display names as JSON can carry them: text (a number or bytes as their text), undecodable bytes replaced,
    control characters dropped."""
    def clean(value: Any) -> Any:
        value = as_text(value)
        if value is None:
            return None
        value = value.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(value) else value
        return _CONTROL.sub("", value)

    return names.map(clean).astype(object)


def sendable_or_none(value: Any) -> Any:
    """A client's optional field, dropped when it could not be sent as JSON (undecodable bytes)."""
    return None if isinstance(value, str) and _SURROGATE.search(value) else value


def unfit_ids(ids: pd.Series, few: bool = False) -> pd.Series:
    """Ids no ledger column and no JSON body can hold as they are: control characters or undecodable bytes.
    With `few` (conversation and client ids repeat across a chunk's messages), each distinct id is looked at once."""
    if few:
        return per_value(ids, lambda v: isinstance(v, str) and _UNFIT_ID.search(v) is not None).astype(bool)
    return ids.str.contains(_UNFIT_ID).fillna(False).astype(bool)


def any_undecodable(m: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """Where any of these text columns holds bytes that are not UTF-8 (lone surrogates)."""
    unfit = pd.Series(False, index=m.index)
    for column in columns:
        unfit |= m[column].str.contains(_SURROGATE).fillna(False).astype(bool)
    return unfit


def key_part(value: Any, limit: int = 200) -> str | None:
    """A value as it can be written into any ledger column: control characters, bad bytes and backslashes
    escaped (so that no two values meet), and cut, with a digest of the whole, past `limit` characters."""
    text = value if isinstance(value, str) else printable(value)
    if text is None:
        return None
    if _ESCAPED.search(text):
        text = _ESCAPED.sub(lambda c: "\\\\" if c.group() == "\\" else f"\\x{ord(c.group()):02x}"
                            if ord(c.group()) < 256 else f"\\u{ord(c.group()):04x}", text)
    if len(text) > limit:
        text = f"{text[:limit]}…{hash_text(text):016x}"
    return text

