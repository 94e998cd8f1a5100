"""Data intervals: [start, end) in the configured time zone, by day, as Airflow has them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .errors import ConfigurationError

EARLIEST = date(1970, 1, 1)
"""No interval starts before this: amojo takes no earlier timestamp (such rows are rejected as bad_timestamp)."""


class RangeError(ConfigurationError):
    """A date range no command takes: empty, before 1970, or reaching past today."""


def check_range(start: date, end: date, today: date) -> None:
    """The one rule every command and flow applies to [start, end): not empty, not before 1970, and no day after
    `today` (the day in AMOJO_ETL_TIMEZONE): a day not over yet may be imported, one not begun has nothing yet."""
    if end <= start:
        raise RangeError(f"the end ({end}) must be after the start ({start}); the end (--end) is exclusive")
    if start < EARLIEST:
        raise RangeError(f"the range starts before {EARLIEST} ({start}): amojo takes no earlier message")
    if end > today + timedelta(days=1):
        raise RangeError(f"the range reaches into the future, past today ({today} in AMOJO_ETL_TIMEZONE): end is "
                         f"exclusive, so the latest end is {today + timedelta(days=1)}")


@dataclass(frozen=True)
class Interval:
    """Half-open [start, end): a message exactly at `end` belongs to the next interval."""

    start: datetime
    end: datetime

    @classmethod
    def days(cls, first: date, end: date, zone: ZoneInfo) -> Interval:
        """From midnight of `first` to midnight of `end` (exclusive) in `zone`."""
        if end <= first:
            raise ValueError(f"end ({end}) must be after start ({first}); end is exclusive")
        return cls(datetime.combine(first, time(), zone), datetime.combine(end, time(), zone))

    @classmethod
    def day_before(cls, moment: datetime, zone: ZoneInfo) -> Interval:
        """The day before `moment` in `zone`: what a nightly run scheduled at `moment` imports."""
        today = moment.astimezone(zone).date()
        return cls.days(today - timedelta(days=1), today, zone)

    @property
    def label(self) -> str:
        return f"{self.start.date().isoformat()}..{self.end.date().isoformat()}"

    def daily(self) -> list[Interval]:
        zone = self.start.tzinfo
        assert isinstance(zone, ZoneInfo)
        first, last = self.start.date(), self.end.date()
        return [Interval.days(first + timedelta(days=i), first + timedelta(days=i + 1), zone)
                for i in range((last - first).days)]

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)
