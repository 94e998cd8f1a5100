"""Message ids and source rows: the first row registered with an id owns it, whatever runs at the same time, and
each row is read into exactly one interval, in time order, whether it was created or edited there."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from etl.intervals import Interval
from etl.ledger import Ledger
from etl.source import CANONICAL, SourceStream
from tasks.load import own_ids, plan
from tasks.transform import Batch, SeenIds, Senders, transform

UTC = ZoneInfo("UTC")
MOSCOW = ZoneInfo("Europe/Moscow")
SENDERS = Senders({}, bot_id="bot")
SCHEMA = """
CREATE TABLE clients (id TEXT, name TEXT, phone TEXT, email TEXT, avatar_url TEXT, profile_url TEXT);
CREATE TABLE managers (id TEXT, name TEXT, email TEXT);
CREATE TABLE conversations (id TEXT, client_id TEXT, created_at TIMESTAMP);
CREATE TABLE messages (id TEXT, conversation_id TEXT, created_at TIMESTAMP, updated_at TIMESTAMP, direction TEXT,
    manager_id TEXT, type TEXT, text TEXT, media_url TEXT, file_name TEXT, file_size BIGINT, lat DOUBLE PRECISION,
    lon DOUBLE PRECISION, contact_name TEXT, contact_phone TEXT)
"""


def _source(tmp_path, messages: list[tuple]) -> str:
    """A SQLite source with conversations a and b of client c; messages as (id, conversation, created, updated,
    text)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in SCHEMA.split(";"):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO clients VALUES ('c', 'Client', NULL, NULL, NULL, NULL)"))
        conn.execute(sa.text("INSERT INTO conversations VALUES ('a', 'c', '2026-10-01 00:00:00'), "
                             "('b', 'c', '2026-10-01 00:00:00')"))
        for id_, conversation, created, updated, text in messages:
            conn.execute(sa.text("INSERT INTO messages (id, conversation_id, created_at, updated_at, direction, type, "
                                 "text) VALUES (:i, :c, :t, :u, 'in', 'text', :x)"),
                         {"i": id_, "c": conversation, "t": created, "u": updated, "x": text})
    engine.dispose()
    return url


def _day(url: str, day: date, zone: ZoneInfo = UTC, chunk_size: int = 50_000, source_zone: ZoneInfo = UTC):
    interval = Interval.days(day, date.fromordinal(day.toordinal() + 1), zone)
    batches = []
    with SourceStream(url, CANONICAL, interval.start, interval.end, source_zone, chunk_size) as stream:
        seen = SeenIds(stream.repeated_ids())
        while (frames := stream.next_chunk()) is not None:
            batches.append(transform(frames, SENDERS, "ae-", source_zone, seen=seen, now=datetime(2026, 11, 25)))
    return batches


def _one(batches: list[Batch]) -> Batch:
    """The chunks of a day as one batch (the edits pass makes a chunk of its own)."""
    return Batch(pd.concat([b.conversations for b in batches]).groupby(level=0).first(),
                 pd.concat([b.messages for b in batches], ignore_index=True),
                 pd.concat([b.rejects for b in batches], ignore_index=True))


def test_an_id_two_runs_register_at_once_has_one_owner_and_the_other_row_is_rejected(tmp_path):
    """Review of issue 11: with two days running at once, both passed the ownership check before either had
    registered the id; the loser's row then counted as skipped, neither sent nor rejected."""
    url = _source(tmp_path, [("x", "a", "2026-10-05 10:00:00", None, "day one"),
                             ("x", "b", "2026-10-06 10:00:00", None, "day two")])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    first = _one(_day(url, date(2026, 10, 5)))
    second = _one(_day(url, date(2026, 10, 6)))

    class LateMessages:  # the other run registers between this run's read and its insert
        def __init__(self) -> None:
            self.reads = 0

        def states(self, msgids):
            self.reads += 1
            return {} if self.reads == 1 else ledger.messages.states(msgids)

        def register(self, rows):
            own_ids(second, ledger)
            ledger.messages.register(rows)

    class LateReader:
        messages = LateMessages()

    first = own_ids(first, LateReader())  # type: ignore[arg-type]
    assert first.messages.empty
    assert list(first.rejects["reason"]) == ["duplicate_id"]
    assert "conversation ae-b" in first.rejects["detail"].iloc[0]
    to_send, _, _ = plan(own_ids(second, ledger), ledger)
    assert list(to_send["conversation_id"]) == ["ae-b"]


def test_a_rejected_duplicate_edited_later_never_edits_the_kept_message(tmp_path):
    """Review of issue 11: the second row with an id was rejected on its day, then edited the next day; the
    edits pass sent its text as an edit of the first row's message."""
    url = _source(tmp_path, [("twice", "a", "2026-10-05 10:00:00", None, "the first"),
                             ("twice", "a", "2026-10-05 10:05:00", "2026-10-06 09:00:00", "the second, edited")])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    day_one = own_ids(_one(_day(url, date(2026, 10, 5))), ledger)
    assert list(day_one.messages["text"]) == ["the first"] and list(day_one.rejects["reason"]) == ["duplicate_id"]
    ledger.messages.record([{"msgid": "ae-twice", "conversation_id": "ae-a",
                             "msec": int(day_one.messages["msec"].iloc[0]),
                             "content_hash": int(day_one.messages["content_hash"].iloc[0]), "status": "sent"}])
    day_two = own_ids(_one(_day(url, date(2026, 10, 6))), ledger)
    _, to_edit, _ = plan(day_two, ledger)
    assert to_edit.empty
    assert list(day_two.rejects["reason"]) == ["duplicate_id"]


def test_edits_are_read_by_their_parsed_times(tmp_path):
    """Review of issue 11: the edits pass still compared text on SQLite; an edit was lost, one came a day late,
    and a row created and edited in one interval came out of both passes."""
    url = _source(tmp_path, [
        ("t-created", "a", "2026-10-05T20:00:00", "2026-10-06 10:00:00", "T in created_at"),  # Moscow 10-05
        ("t-edited", "a", "2026-10-05 12:00:00", "2026-10-06T20:30:00", "T in updated_at"),  # edited 10-06
        ("both", "a", "2026-10-05 23:30:00-02:00", "2026-10-06 10:00:00", "created and edited on the 6th"),
    ])
    seen = {}
    for day in (date(2026, 10, 5), date(2026, 10, 6), date(2026, 10, 7)):
        seen[day] = [m for b in _day(url, day, MOSCOW) for m in b.messages["source_id"]]
    assert sorted(seen[date(2026, 10, 6)]) == ["both", "t-created", "t-edited"]
    assert seen[date(2026, 10, 7)] == []


def test_naive_and_offset_text_come_out_in_time_order_across_chunks(tmp_path):
    """Review of issue 11: SQLite sorted naive text as UTC, so with a Moscow source a message went out after a
    later one, in another chunk."""
    url = _source(tmp_path, [("noon", "a", "2026-10-05 12:00:00", None, "09:00 UTC"),
                             ("ten-utc", "a", "2026-10-05 10:00:00+00:00", None, "10:00 UTC"),
                             ("eleven", "a", "2026-10-05 11:00:00", None, "08:00 UTC"),
                             ("t13", "a", "2026-10-05T13:00", None, "10:00 UTC")])
    batches = _day(url, date(2026, 10, 5), MOSCOW, chunk_size=2, source_zone=MOSCOW)
    msec = [int(v) for b in batches for v in b.messages["msec"]]
    assert len(msec) == 4 and msec == sorted(msec)
