"""Data intervals: days in the configured zone, half-open, and the nightly run's 'day before the schedule'."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from etl.intervals import Interval
from etl.intervals import check_range as validate_range
from etl.settings import ConfigurationError
from flows.backfill import days_to_run

MOSCOW = ZoneInfo("Europe/Moscow")


def test_a_nightly_run_imports_the_day_before_its_scheduled_time():
    scheduled = datetime(2026, 10, 5, 3, 0, tzinfo=MOSCOW)
    assert Interval.day_before(scheduled, MOSCOW) == Interval.days(date(2026, 10, 4), date(2026, 10, 5), MOSCOW)
    # A run scheduled at 03:00 Moscow but started late, at 01:30 UTC the next day, still imports its own day
    # when given its scheduled time; the same moment seen in UTC would be another day.
    utc_late = datetime(2026, 10, 5, 0, 30, tzinfo=ZoneInfo("UTC"))  # 03:30 in Moscow
    assert Interval.day_before(utc_late, MOSCOW).label == "2026-10-04..2026-10-05"


def test_daily_intervals_cover_the_range_without_gaps():
    days = Interval.days(date(2026, 10, 30), date(2026, 11, 2), MOSCOW).daily()
    assert [d.label for d in days] == ["2026-10-30..2026-10-31", "2026-10-31..2026-11-01", "2026-11-01..2026-11-02"]
    assert all(a.end == b.start for a, b in zip(days, days[1:], strict=False))


def test_reprocess_selects_days_as_airflow_does():
    days = Interval.days(date(2026, 10, 1), date(2026, 10, 4), MOSCOW).daily()
    key = [(d.start.isoformat(), d.end.isoformat()) for d in days]
    statuses = {key[0]: "complete", key[1]: "incomplete"}
    assert [d.label for d in days_to_run(days, statuses, "missing")] == [days[2].label]
    assert [d.label for d in days_to_run(days, statuses, "failed")] == [days[1].label, days[2].label]
    assert days_to_run(days, statuses, "all") == days


def test_bad_ranges_are_refused():
    with pytest.raises(ConfigurationError, match="must be after"):
        validate_range(date(2026, 10, 2), date(2026, 10, 1), date(2026, 11, 1))
    with pytest.raises(ConfigurationError, match="future"):
        validate_range(date(2026, 12, 1), date(2026, 12, 2), date(2026, 11, 25))
    with pytest.raises(ValueError, match="end is exclusive"):
        Interval.days(date(2026, 10, 1), date(2026, 10, 1), MOSCOW)
