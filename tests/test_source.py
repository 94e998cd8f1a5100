"""Reading one interval from the source: the same rows from SQLite, PostgreSQL and MariaDB, bounds half-open."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from etl.intervals import Interval
from etl.sample import SampleSize, generate, write_sample
from etl.settings import ConfigurationError
from etl.source import CANONICAL, check_source, read_interval, read_source

SIZE = SampleSize(clients=10, conversations=20)
UTC = ZoneInfo("UTC")


def _expected_ids(first: datetime, end: datetime) -> set[str]:
    rows = dict(generate(7, SIZE))["messages"]
    return {r["id"] for r in rows if first <= r["created_at"] < end}


def _read(url: str, interval: Interval) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        return read_interval(engine, CANONICAL, interval.start, interval.end, UTC).messages
    finally:
        engine.dispose()


def _check_database(url: str) -> None:
    write_sample(url, size=SIZE)
    interval = Interval.days(date(2026, 10, 5), date(2026, 10, 12), UTC)
    frames = _read(url, interval)
    expected = _expected_ids(datetime(2026, 10, 5), datetime(2026, 10, 12))
    assert expected, "the sample should have messages in that week"
    assert set(frames["id"].astype(str)) == expected
    assert len(frames) == len(expected)


def test_sqlite_source(tmp_path):
    _check_database(f"sqlite:///{tmp_path / 's.db'}")


@pytest.mark.postgres
def test_postgres_source(postgres_url):
    _check_database(postgres_url)


@pytest.mark.mariadb
def test_mariadb_source(mariadb_url):
    _check_database(mariadb_url)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "mariadb"])
def test_message_on_a_boundary_belongs_to_exactly_one_interval(dialect, tmp_path, request):
    url = f"sqlite:///{tmp_path / 's.db'}" if dialect == "sqlite" else request.getfixturevalue(f"{dialect}_url")
    write_sample(url, size=SIZE)
    engine = sa.create_engine(url)
    value = datetime(2026, 10, 8, 0, 0, 0)
    stored = value.isoformat(sep=" ") if engine.dialect.name == "sqlite" else value
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET created_at = :at WHERE id = 'v1-0'"), {"at": stored})
    engine.dispose()
    before = _read(url, Interval.days(date(2026, 10, 7), date(2026, 10, 8), UTC))
    after = _read(url, Interval.days(date(2026, 10, 8), date(2026, 10, 9), UTC))
    assert "v1-0" not in set(before["id"]) and "v1-0" in set(after["id"])


def test_naive_timestamps_are_read_in_the_source_zone(tmp_path):
    """Midnight in Moscow is 21:00 UTC the day before: the interval bound is translated, not the data."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    write_sample(url, size=SIZE)
    moscow = ZoneInfo("Europe/Moscow")
    interval = Interval.days(date(2026, 10, 5), date(2026, 10, 6), moscow)
    engine = sa.create_engine(url)
    frames = read_interval(engine, CANONICAL, interval.start, interval.end, moscow)
    engine.dispose()
    assert set(frames.messages["id"]) == _expected_ids(datetime(2026, 10, 5), datetime(2026, 10, 6))


def test_missing_column_is_named_before_anything_is_sent(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    write_sample(url, size=SIZE)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[queries]\n'
        'messages = "SELECT id, conversation_id, created_at FROM messages WHERE created_at >= :start AND '
        'created_at < :end"\n'
        f'conversations = "{CANONICAL.conversations}"\nclients = "{CANONICAL.clients}"\n'
        f'managers = "{CANONICAL.managers}"\n'
    )
    with pytest.raises(ConfigurationError, match="no column updated_at, direction"):
        check_source(url, mapping)


def test_unreachable_source_says_which_setting_to_fix(tmp_path):
    with pytest.raises(ConfigurationError, match="AMOJO_ETL_SOURCE_URL"):
        read_source(f"sqlite:///{tmp_path / 'none' / 'x.db'}", None, datetime(2026, 1, 1, tzinfo=UTC),
                    datetime(2026, 1, 2, tzinfo=UTC), UTC)
