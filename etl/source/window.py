"""Which rows belong to an interval: its bounds as the source stores time, the wider span the queries read, and
the window that keeps the interval's rows by their parsed times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd


@dataclass(frozen=True)
class Window:
    """Which rows of a chunk belong to the interval: those whose created_at, once read, is in [start_ms, end_ms).

    The database compares timestamps as it stores them (text on SQLite, where `2026-03-29T05:00` sorts after
    `2026-03-29 21:00`; mixed offsets; a session zone that is not the source's), so it is asked for a wider
    span (`candidate_bounds`) and the parsed instant decides. A created_at that cannot be read belongs to the
    interval whose bounds, as stored (`start`, `end`), enclose its raw value: the one the database would pick.
    """

    start_ms: int
    end_ms: int
    start: datetime | str
    end: datetime | str

    def holds(self, msec: pd.Series) -> pd.Series:
        """Where these unix milliseconds lie in [start_ms, end_ms); False where NA."""
        return ((msec >= self.start_ms) & (msec < self.end_ms)).fillna(False).astype(bool)

    def keeps(self, msec: pd.Series, created_at: pd.Series) -> pd.Series:
        """Rows of the interval: a readable created_at inside it, or an unreadable one the bounds enclose as stored."""
        inside = self.holds(msec)
        unreadable = msec.isna()
        if unreadable.any():
            def enclosed(value: Any) -> bool:
                try:
                    return bool(self.start <= value < self.end)
                except TypeError:  # not comparable with the bounds (NULL, a number): the database chose it, keep it
                    return True

            inside[unreadable] = [enclosed(v) for v in created_at[unreadable]]
        return inside


def bound(moment: datetime, dialect: str, zone: ZoneInfo) -> datetime | str:
    """An aware interval bound as the source stores naive timestamps: wall time in `zone`.

    SQLite keeps timestamps as text, so there the bound is text of the form `YYYY-MM-DD HH:MM:SS`, which compares
    correctly with stored text with or without fractions of a second.
    """
    return _naive_bound(moment.astimezone(zone), dialect)


EARLIEST = datetime(1969, 12, 31, tzinfo=ZoneInfo("UTC"))
"""Before every time amojo takes (1970 on): the lower bound of a span that reaches back to the beginning."""

CANDIDATE_MARGIN = timedelta(days=1)
"""How much wider than the interval the messages query reads, on each side, in whole days of the source zone:
enough for text timestamps with a `T`, and for offsets up to a day away from the source zone."""


def candidate_bounds(start: datetime, end: datetime, dialect: str, zone: ZoneInfo) -> dict[str, datetime | str]:
    """The messages query's :start and :end: the interval widened to whole days plus `CANDIDATE_MARGIN`.

    A bound at a midnight also takes in every SQLite text of the day before it, whatever its separator.
    """
    first = datetime.combine(start.astimezone(zone).date(), time(), zone)
    local_end = end.astimezone(zone)
    last = datetime.combine(local_end.date(), time(), zone)
    if last < local_end:
        last += timedelta(days=1)
    try:
        first -= CANDIDATE_MARGIN
    except OverflowError:
        first = datetime.min.replace(tzinfo=zone)
    try:
        last += CANDIDATE_MARGIN
    except OverflowError:
        last = datetime.max.replace(tzinfo=zone)
    return {"start": _naive_bound(first, dialect), "end": _naive_bound(last, dialect)}


def _naive_bound(local: datetime, dialect: str) -> datetime | str:
    naive = local.replace(tzinfo=None)
    if dialect == "sqlite":
        return naive.isoformat(sep=" ", timespec="seconds" if not naive.microsecond else "microseconds")
    return naive

