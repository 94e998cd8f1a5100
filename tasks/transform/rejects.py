"""Rejects: the source rows that will not be sent, each with a key that names the row across chunks, runs and
days, its reason, a detail for people, and the row as read."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from etl.source import to_utc_ms

from .batch import SeenIds
from .digests import digest
from .text import key_part, printable
from .values import as_texts, scalars

REJECT_COLUMNS = ["source_key", "reason", "detail", "row"]


class Rejects:
    """A chunk's rejects as the checks find them, in the order they are found.

    `raw` holds the rows as read (what a reject shows); `ids` and `msec` the message ids as text and the times
    as read, by which a reject's key names its row; `kind` what the rows are (`message`, `attachment`).
    """

    def __init__(self, raw: pd.DataFrame, ids: pd.Series, msec: pd.Series, seen: SeenIds,
                 kind: str = "message") -> None:
        self._raw, self._ids, self._msec, self._seen, self._kind = raw, ids, msec, seen, kind
        self._found: list[pd.DataFrame] = []

    def add(self, mask: pd.Series, reason: str, detail: str, *, duplicate: bool = False) -> None:
        """Reject the rows where `mask` holds; a `duplicate`'s key always carries a digest (its id is not its own)."""
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            rows = self._raw.loc[mask[mask].index]
            key = source_keys(self._ids.loc[rows.index], self._msec.loc[rows.index], rows.get("created_at"), rows,
                              self._seen, always_digest=duplicate, kind=self._kind)
            self._found.append(pd.DataFrame({
                "source_key": key,
                "reason": reason,
                "detail": detail,
                "row": json_lines(rows.map(printable)),
            }))

    def frame(self) -> pd.DataFrame:
        """All of them, one row each."""
        return pd.concat(self._found, ignore_index=True) if self._found else pd.DataFrame(columns=REJECT_COLUMNS)


def json_lines(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row. (Not `splitlines()`: JSON keeps U+2028, U+2029 and U+0085 as they are.)"""
    if not len(frame):
        return []
    return frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n").split("\n")


def unplaced_rejects(messages: pd.DataFrame, source_zone: ZoneInfo) -> pd.DataFrame:
    """Rejects for the source's messages no interval can send: created_at NULL or not a time (`no_timestamp`),
    before 1970, or stored in a form the database cannot compare with an interval (`bad_timestamp`)."""
    messages = scalars(messages).reset_index(drop=True)
    msec = to_utc_ms(messages["created_at"], source_zone)
    readable = msec.notna().to_numpy(dtype=bool)
    before_1970 = (msec < 0).fillna(False).to_numpy(dtype=bool)
    return pd.DataFrame({
        "source_key": source_keys(as_texts(messages["id"]), msec, messages["created_at"], messages),
        "reason": np.where(readable, "bad_timestamp", "no_timestamp"),
        "detail": np.where(before_1970, "created_at is before 1970, which amoCRM cannot hold",
                           np.where(readable, "created_at is stored in a form the database cannot compare with an "
                                              "interval; store it as YYYY-MM-DD HH:MM:SS",
                                    "created_at is NULL or not an ISO 8601 time, so no interval selects the row; "
                                    "fix it at the source")),
        "row": json_lines(messages.map(printable)),
    }, columns=REJECT_COLUMNS)


def source_keys(ids: pd.Series, msec: pd.Series, created_at: pd.Series | None, rows: pd.DataFrame,
                seen: SeenIds | None = None, *, always_digest: bool = False, kind: str = "message") -> pd.Series:
    """`message:{id}@{created_at in UTC}`: which source row a reject is, the same across chunks, runs and days
    (`attachment:{message id}#{attachment id}@{its message's created_at}` for an attachment).

    Rows that this cannot tell apart (a repeated id, no id, no readable time) get a digest of what they hold,
    and identical rows a count of the copies before them in the interval (they are interchangeable).
    """
    shown = ids.map(key_part)
    when = pd.Series(_utcas_texts(msec), index=ids.index, dtype=object)
    unreadable = msec.isna()
    if created_at is not None and unreadable.any():
        when[unreadable] = created_at[unreadable].map(key_part)
    keys = f"{kind}:" + shown.fillna("<null id>") + "@" + when.fillna("<null time>")
    ambiguous = shown.isna() | (ids == "") | unreadable if not always_digest else pd.Series(True, index=ids.index)
    if ambiguous.any():
        digests = digest(rows.loc[ambiguous[ambiguous].index].map(printable).astype(str))
        keys[ambiguous] = keys[ambiguous] + "#" + digests.map(lambda h: f"{h & 0xFFFFFFFF:08x}")
        repeat = (seen or SeenIds()).occurrence(keys[ambiguous])
        keys[ambiguous] = keys[ambiguous].where(repeat == 0, keys[ambiguous] + "~" + repeat.astype(str))
    return keys


def _utcas_texts(msec: pd.Series) -> np.ndarray:
    """Unix milliseconds as `2026-10-05T12:00:00Z` (with `.250` when there are milliseconds); None where NA."""
    known = msec.notna().to_numpy(dtype=bool)
    text = np.full(len(msec), None, dtype=object)
    if known.any():
        stamps = np.datetime_as_string(msec[known].to_numpy(dtype="int64").astype("datetime64[ms]"), unit="ms")
        text[known] = [t.removesuffix(".000") + "Z" for t in stamps]
    return text

