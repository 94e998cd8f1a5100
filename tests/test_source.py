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
from etl.source import CANONICAL, SourceStream, check_source

SIZE = SampleSize(messages=265, conversations=20, clients=10)
UTC = ZoneInfo("UTC")


def _sample_messages() -> pd.DataFrame:
    return pd.concat([frame for table, frame in generate(7, SIZE) if table == "messages"], ignore_index=True)


def _expected_ids(first: datetime, end: datetime) -> set[str]:
    messages = _sample_messages()
    return set(messages.loc[(messages["created_at"] >= first) & (messages["created_at"] < end), "id"])


def _read(url: str, interval: Interval, zone: ZoneInfo = UTC, chunk_size: int = 50_000) -> pd.DataFrame:
    with SourceStream(url, CANONICAL, interval.start, interval.end, zone, chunk_size) as stream:
        chunks = []
        while (frames := stream.next_chunk()) is not None:
            chunks.append(frames.messages)
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=["id"])


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
        conn.execute(sa.text("UPDATE messages SET created_at = :at WHERE id = 'v1-1'"), {"at": stored})
    engine.dispose()
    before = _read(url, Interval.days(date(2026, 10, 7), date(2026, 10, 8), UTC))
    after = _read(url, Interval.days(date(2026, 10, 8), date(2026, 10, 9), UTC))
    assert "v1-1" not in set(before["id"]) and "v1-1" in set(after["id"])


def test_naive_timestamps_are_read_in_the_source_zone(tmp_path):
    """Midnight in Moscow is 21:00 UTC the day before: the interval bound is translated, not the data."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    write_sample(url, size=SIZE)
    moscow = ZoneInfo("Europe/Moscow")
    interval = Interval.days(date(2026, 10, 5), date(2026, 10, 6), moscow)
    assert set(_read(url, interval, moscow)["id"]) == _expected_ids(datetime(2026, 10, 5), datetime(2026, 10, 6))


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
        check_source(f"sqlite:///{tmp_path / 'none' / 'x.db'}", None)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "mariadb"])
def test_chunks_stream_in_time_order_with_their_lookups(dialect, tmp_path, request):
    url = f"sqlite:///{tmp_path / 's.db'}" if dialect == "sqlite" else request.getfixturevalue(f"{dialect}_url")
    write_sample(url, size=SIZE)
    interval = Interval.days(date(2026, 9, 1), date(2026, 12, 1), UTC)
    seen: list[str] = []
    with SourceStream(url, CANONICAL, interval.start, interval.end, UTC, chunk_size=37) as stream:
        while (frames := stream.next_chunk()) is not None:
            assert len(frames.messages) <= 37
            assert set(frames.messages["conversation_id"]) <= set(frames.conversations["id"])
            assert set(frames.conversations["client_id"]) <= set(frames.clients["id"])
            times = pd.to_datetime(frames.messages["created_at"].astype(str), format="ISO8601")
            assert times.is_monotonic_increasing
            seen += list(frames.messages["id"])
        assert stream.chunks == -(-len(seen) // 37)
    assert len(seen) == len(set(seen)) == len(_sample_messages())


@pytest.mark.parametrize("messages", [1, 30])
def test_a_sample_too_small_to_draw_an_attachment_is_written(tmp_path, messages):
    """A small sample has no attachment (nor, at 1 message, a reply): an empty table is written as empty."""
    counts = write_sample(f"sqlite:///{tmp_path / 'small.db'}", size=SampleSize(messages=messages))
    assert counts["messages"] == messages


def test_an_even_sample_gives_every_conversation_the_same_size():
    """The benchmarks' fixed shape (40 x 250), beside the default's sizes that vary."""
    def sizes(size: SampleSize) -> list[int]:
        messages = pd.concat([rows for table, rows in generate(size=size) if table == "messages"])
        return sorted(messages.groupby("conversation_id").size())

    assert sizes(SampleSize(messages=1000, conversations=4, clients=4, even=True)) == [250] * 4
    varied = sizes(SampleSize(messages=1000, conversations=4, clients=4))
    assert sum(varied) == 1000 and len(set(varied)) > 1
