"""A source in another shape, read through the example mapping of data/examples/."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from etl.intervals import Interval
from etl.settings import ConfigurationError
from etl.source import check_source, load_queries, open_source
from tasks.transform import SeenIds, Senders, transform

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "examples"
MAPPING = EXAMPLES / "helpdesk_mapping.toml"
UTC = ZoneInfo("UTC")


def _helpdesk(url: str) -> None:
    engine = sa.create_engine(url)
    sql = (EXAMPLES / "helpdesk_schema.sql").read_text()
    sql = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    with engine.begin() as conn:
        for statement in filter(str.strip, sql.split(";")):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO customers VALUES ('6f1c', 'Ольга Петрова', '+7 916 000-11-22', NULL)"))
        conn.execute(sa.text("INSERT INTO agents VALUES (7, 'Anna', 'anna@example.com')"))
        conn.execute(sa.text("INSERT INTO tickets VALUES (501, '6f1c', '2026-10-05 09:00:00')"))
        rows = [
            (1, "2026-10-05 09:00:00", None, "customer", None, "Где мой заказ?", None, None, None),
            (2, "2026-10-05 09:05:00", None, "agent", 7, "Уже в пути!", None, None, None),
            (3, "2026-10-05 09:06:00", None, "agent", 7, None, "https://x.example/track.pdf", "track.pdf", 1200),
            (4, "2026-10-06 10:00:00", None, "robot", None, "not a known author", None, None, None),
            (5, "2026-10-04 10:00:00", "2026-10-05 12:00:00", "customer", None, "edited on the 5th", None, None,
             None),
        ]
        for row in rows:
            conn.execute(sa.text("INSERT INTO ticket_messages VALUES (:a, 501, :b, :c, :d, :e, :f, :g, :h, :i)"),
                         dict(zip("abcdefghi", row, strict=True)))
    engine.dispose()


def _day(url: str, day: date):
    interval = Interval.days(day, date.fromordinal(day.toordinal() + 1), UTC)
    seen, batches = SeenIds(), []
    with open_source(url, MAPPING, interval.start, interval.end, UTC) as stream:
        while (frames := stream.next_chunk()) is not None:
            batches.append(transform(frames, Senders({"anna@example.com": "amojo-anna"}, None), "hd-", UTC,
                                     seen=seen))
    return batches


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_helpdesk_schema_through_the_example_mapping(dialect, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    _helpdesk(url)
    check_source(url, MAPPING)
    batches = _day(url, date(2026, 10, 5))
    messages = [m for b in batches for m in b.messages.itertuples(index=False)]
    # The day's three messages, then the message of the 4th that was edited on the 5th (the edits pass).
    assert [m.msgid for m in messages] == ["hd-1", "hd-2", "hd-3", "hd-5"]
    assert [m.outgoing for m in messages] == [False, True, True, False]
    assert messages[1].ref_id == "amojo-anna" and messages[2].type == "file"
    conversation = batches[0].conversations.loc["hd-501"]
    assert conversation["phone"] == "+79160001122" and conversation["name"] == "Ольга Петрова"
    rejected = [r for b in _day(url, date(2026, 10, 6)) for r in b.rejects.itertuples()]
    assert [(r.source_key, r.reason) for r in rejected] == [("message:4@2026-10-06T10:00:00Z", "unknown_direction")]


def test_mistyped_column_in_a_mapping_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    _helpdesk(url)
    broken = tmp_path / "broken.toml"
    broken.write_text(MAPPING.read_text().replace("full_name AS name", "full_name AS nmae"))
    with pytest.raises(ConfigurationError, match=r"clients query returns no column name \(it returns .*nmae"):
        check_source(url, broken)


def test_mapping_without_a_required_query_is_refused(tmp_path):
    partial = tmp_path / "partial.toml"
    partial.write_text('[queries]\nmessages = "SELECT 1"\n')
    with pytest.raises(ConfigurationError, match="no query for conversations, clients, managers"):
        load_queries(partial)
