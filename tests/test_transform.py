"""Transform: a hostile source yields payloads for exactly the valid rows and one reject per bad row, with reason."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from amojo.emulator import inputs as emulator_rules
from amojo.payloads import client_participant, message_payload
from etl.intervals import Interval
from etl.source import CANONICAL, SourceFrames, SourceStream, to_utc_ms
from tasks.transform import SeenIds, Senders, normalise_phones, transform, unplaced_rejects

UTC = ZoneInfo("UTC")
WIDE = Interval.days(date(1960, 1, 1), date(2100, 1, 1), UTC)
SENDERS = Senders({"anna@example.com": "amojo-anna"}, bot_id=None)

# The schema as a real database might have it: no constraint that the rows could break.
HOSTILE_SCHEMA = """
CREATE TABLE clients (id VARCHAR(64), name TEXT, phone TEXT, email TEXT, avatar_url TEXT, profile_url TEXT);
CREATE TABLE managers (id VARCHAR(64), name TEXT, email TEXT);
CREATE TABLE conversations (id VARCHAR(64), client_id VARCHAR(64), created_at {ts});
CREATE TABLE messages (id VARCHAR(64), conversation_id VARCHAR(64), created_at {ts}, updated_at {ts},
    direction VARCHAR(16), manager_id VARCHAR(64), type VARCHAR(16), text TEXT, media_url TEXT, file_name TEXT,
    file_size BIGINT, lat DOUBLE PRECISION, lon DOUBLE PRECISION, contact_name TEXT, contact_phone TEXT)
"""

T = "2026-10-05 12:00:{:02d}"
VALID = {  # id -> (direction, manager, type, fields)
    "ok-text-in": ("in", None, "text", {"text": "Здравствуйте!"}),
    "ok-text-out": ("out", "m1", "text", {"text": "Hello from Anna"}),
    "ok-picture": ("in", None, "picture", {"media_url": "https://x.example/p.jpg", "file_name": "p.jpg",
                                           "file_size": 10}),
    "ok-video": ("in", None, "video", {"media_url": "https://x.example/v.mp4", "file_name": "v.mp4", "file_size": 9}),
    "ok-file-unnamed": ("in", None, "file", {"media_url": "https://x.example/docs/invoice.pdf"}),
    "ok-file-empty-name": ("in", None, "file", {"media_url": "https://x.example/docs/report.pdf", "file_name": ""}),
    "ok-picture-blank-name": ("in", None, "picture", {"media_url": "https://x.example/p/", "file_name": "  "}),
    "ok-voice": ("in", None, "voice", {"media_url": "http://x.example/v.ogg"}),
    "ok-audio": ("in", None, "audio", {"media_url": "https://x.example/a.mp3"}),
    "ok-sticker": ("in", None, "sticker", {"media_url": "https://x.example/s.webp"}),
    "ok-location": ("in", None, "location", {"lat": 55.75, "lon": 37.61}),
    "ok-contact": ("in", None, "contact", {"contact_name": "Courier", "contact_phone": "+74950000000"}),
    "dup": ("in", None, "text", {"text": "the first of two rows with this id"}),
    "ok-control-chars": ("in", None, "text", {"text": "bell\x07 removed"}),
}
BAD = {  # id -> (reason, direction, manager, type, fields, overrides)
    "bad-null-text": ("empty_text", "in", None, "text", {"text": None}, {}),
    "bad-blank-text": ("empty_text", "in", None, "text", {"text": "   "}, {}),
    "bad-no-url": ("bad_media_url", "in", None, "picture", {"file_name": "p.jpg", "file_size": 1}, {}),
    "bad-ftp-url": ("bad_media_url", "in", None, "file", {"media_url": "ftp://x.example/f"}, {}),
    "bad-type": ("unknown_type", "in", None, "gif", {"text": "x"}, {}),
    "bad-direction": ("unknown_direction", "sideways", None, "text", {"text": "x"}, {}),
    "bad-orphan": ("orphan_conversation", "in", None, "text", {"text": "x"}, {"conversation_id": "nowhere"}),
    "bad-future": ("future_timestamp", "in", None, "text", {"text": "x"}, {"created_at": "2099-01-01 00:00:00"}),
    "bad-1969": ("bad_timestamp", "in", None, "text", {"text": "x"}, {"created_at": "1969-12-31 23:00:00"}),
    "bad-long": ("text_too_long", "in", None, "text", {"text": "x" * 101}, {}),
    "bad-no-sender": ("no_sender_ref", "out", "m9", "text", {"text": "from a manager amoCRM does not know"}, {}),
    "bad-location": ("bad_location", "in", None, "location", {"lat": 55.0}, {}),
    "bad-contact": ("bad_contact", "in", None, "contact", {"contact_name": "n"}, {}),
}


def _hostile(url: str) -> int:
    """Fill a hostile source at `url`; returns how many bad rows it holds."""
    engine = sa.create_engine(url)
    ts = "DATETIME(6)" if engine.dialect.name in ("mysql", "mariadb") else "TIMESTAMP"
    columns = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
               "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone"]
    rows = []
    for n, (message_id, (direction, manager, kind, fields)) in enumerate(VALID.items()):
        rows.append({"id": message_id, "conversation_id": "v1", "created_at": T.format(n), "direction": direction,
                     "manager_id": manager, "type": kind, **fields})
    rows.append({"id": "dup", "conversation_id": "v1", "created_at": T.format(40), "direction": "in",
                 "type": "text", "text": "the second row with this id"})
    for n, (message_id, (_, direction, manager, kind, fields, overrides)) in enumerate(BAD.items()):
        rows.append({"id": message_id, "conversation_id": "v1", "created_at": T.format(20 + n), "direction": direction,
                     "manager_id": manager, "type": kind, **fields, **overrides})
    rows.append({"id": None, "conversation_id": "v1", "created_at": T.format(50), "direction": "in", "type": "text",
                 "text": "a row without an id"})
    with engine.begin() as conn:
        for statement in HOSTILE_SCHEMA.format(ts=ts).split(";"):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO clients VALUES ('c1', 'Вася', '8 (915) 111-22-33', 'NOT AN EMAIL', "
                             "NULL, NULL)"))
        conn.execute(sa.text("INSERT INTO managers VALUES ('m1', 'Anna', 'Anna@Example.com'), "
                             "('m9', 'Ghost', 'ghost@example.com')"))
        conn.execute(sa.text("INSERT INTO conversations VALUES ('v1', 'c1', '2026-10-05 11:00:00')"))
        for row in rows:
            full = {c: row.get(c) for c in columns}
            conn.execute(sa.text(f"INSERT INTO messages ({', '.join(columns)}) VALUES "
                                 f"({', '.join(':' + c for c in columns)})"), full)
        bad = len(BAD) + 2  # the second "dup" and the row without an id
        if engine.dialect.name == "sqlite":  # only SQLite lets a TEXT column hold bytes that are not UTF-8
            conn.execute(sa.text("INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                                 "VALUES ('bad-utf8', 'v1', '2026-10-05 12:01:00', 'in', 'text', "
                                 "CAST(X'48656C6C6FFF' AS TEXT))"))
            bad += 1
    engine.dispose()
    return bad


def _run(url: str, chunk_size: int = 7):
    batches = []
    with SourceStream(url, CANONICAL, WIDE.start, WIDE.end, UTC, chunk_size) as stream:
        seen = SeenIds(stream.repeated_ids())
        assert len(seen) == 0
        while (frames := stream.next_chunk()) is not None:
            batches.append(transform(frames, SENDERS, "ae-", UTC, seen=seen, text_limit=100,
                                     now=datetime(2026, 11, 25)))
    return batches


def _check_hostile(url: str) -> None:
    bad_rows = _hostile(url)
    batches = _run(url)
    messages = pd.concat([b.messages for b in batches], ignore_index=True)
    rejects = pd.concat([b.rejects for b in batches], ignore_index=True)
    assert sorted(messages["source_id"]) == sorted(VALID)
    assert len(rejects) == bad_rows
    assert rejects["source_key"].is_unique
    by_key = dict(zip(rejects["source_key"].str.split("@").str[0], rejects["reason"], strict=True))
    for message_id, (reason, *_rest) in BAD.items():
        assert by_key[f"message:{message_id}"] == reason, message_id
    assert by_key["message:dup"] == "duplicate_id"
    assert by_key["message:<null id>"] == "missing_id"
    if "message:bad-utf8" in by_key:
        assert by_key["message:bad-utf8"] == "invalid_utf8"
    assert all(rejects["row"].str.startswith("{"))  # the row itself is kept, for the user

    conversations = pd.concat([b.conversations for b in batches])
    conversation = next(conversations.loc[["ae-v1"]].itertuples())
    client = client_participant(conversation)
    assert client["profile"] == {"phone": "+79151112233"}  # the bad email dropped, the phone normalised
    assert sum(b.warnings["invalid_email_dropped"] for b in batches) >= 1
    for message in messages.itertuples(index=False):
        payload = message_payload(message, client)
        # Every payload passes the emulator's reading of amojo-api.md §3.4.
        emulator_rules.message_body(payload["message"], None, edit=False)
        emulator_rules.participant(payload["sender"], "sender")
        assert payload["silent"] is True and payload["msgid"] == f"ae-{message.source_id}"
        if message.source_id == "ok-text-out":
            assert payload["sender"]["ref_id"] == "amojo-anna" and payload["receiver"] == client
        else:
            assert "receiver" not in payload
        if message.source_id == "ok-file-unnamed":
            assert payload["message"]["file_name"] == "invoice.pdf"
        if message.source_id == "ok-file-empty-name":  # empty or blank: named as when missing
            assert payload["message"]["file_name"] == "report.pdf"
        if message.source_id == "ok-picture-blank-name":  # and a URL that names nothing: the payload's own name
            assert payload["message"]["file_name"] == "file"
        if message.source_id == "ok-control-chars":
            assert payload["message"]["text"] == "bell removed"
        if message.source_id == "dup":
            assert payload["message"]["text"] == "the first of two rows with this id"


def test_hostile_sqlite(tmp_path):
    _check_hostile(f"sqlite:///{tmp_path / 'hostile.db'}")


@pytest.mark.postgres
def test_hostile_postgres(postgres_url):
    _check_hostile(postgres_url)


@pytest.mark.mariadb
def test_hostile_mariadb(mariadb_url):
    _check_hostile(mariadb_url)


def test_phones_in_every_notation_are_one():
    phones = normalise_phones(pd.Series(["+7 (915) 111-22-33", "8 915 111 22 33", "79151112233", "9151112233",
                                         "12345", None, "+44 20 7946 0958"]))
    assert list(phones) == ["+79151112233"] * 4 + [None, None, "+442079460958"]


def test_timestamps_across_a_dst_change():
    berlin = ZoneInfo("Europe/Berlin")
    values = pd.Series(["2026-10-25 02:30:00",  # happens twice: read as the first (CEST)
                        "2026-03-29 02:30:00",  # never happens: moved forward to 03:00 CEST
                        "2026-10-25 12:00:00"], dtype=object)
    ms = to_utc_ms(values, berlin)
    as_utc = [datetime.fromtimestamp(v / 1000, UTC).strftime("%Y-%m-%d %H:%M") for v in ms]
    assert as_utc == ["2026-10-25 00:30", "2026-03-29 01:00", "2026-10-25 11:00"]


def test_intervals_across_a_dst_change(tmp_path):
    """The 25-hour day of 25 Oct 2026 in Berlin: a UTC source, intervals in Berlin time, bounds exact."""
    berlin = ZoneInfo("Europe/Berlin")
    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in HOSTILE_SCHEMA.format(ts="TIMESTAMP").split(";"):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO conversations VALUES ('v1', 'c1', '2026-10-01 00:00:00')"))
        for message_id, at in [("before", "2026-10-24 21:59:59"), ("first", "2026-10-24 22:00:00"),
                               ("last", "2026-10-25 22:59:59"), ("after", "2026-10-25 23:00:00")]:
            conn.execute(sa.text("INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                                 "VALUES (:id, 'v1', :at, 'in', 'text', 'x')"), {"id": message_id, "at": at})
    engine.dispose()
    day = Interval.days(date(2026, 10, 25), date(2026, 10, 26), berlin)
    assert (day.end.astimezone(UTC) - day.start.astimezone(UTC)).total_seconds() == 25 * 3600
    with SourceStream(url, CANONICAL, day.start, day.end, UTC) as stream:
        frames = stream.next_chunk()
    frames.clients = pd.DataFrame({"id": ["c1"], "name": ["C"], "phone": [None], "email": [None],
                                   "avatar_url": [None], "profile_url": [None]})
    batch = transform(frames, SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))
    assert set(batch.messages["source_id"]) == {"first", "last"} and batch.rejects.empty


@pytest.mark.parametrize("repeated", [None, {"b", "d"}])
def test_duplicates_are_found_across_chunks(repeated):
    seen = SeenIds(repeated)
    first = seen.split(pd.Series(["a", "b", "c"]))
    second = seen.split(pd.Series(["d", "b", "d", "e"]))
    assert list(first) == [False, False, False]
    assert list(second) == [False, True, True, False]
    assert len(seen) == (5 if repeated is None else 2)  # told which ids repeat, it remembers only those


def _frames(rows: list[dict], conversations: list[tuple] | None = None) -> SourceFrames:
    """One chunk as the source gives it: every column as objects, the canonical conversation and client."""
    columns = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
               "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone"]
    base = {"conversation_id": "v1", "created_at": "2026-10-05 12:00:00", "direction": "in", "type": "text"}
    messages = pd.DataFrame([{c: {**base, **r}.get(c) for c in columns} for r in rows], dtype=object)
    conversations = conversations or [("v1", "c1", "2026-10-01 00:00:00")]
    return SourceFrames(
        messages,
        pd.DataFrame(conversations, columns=["id", "client_id", "created_at"], dtype=object),
        pd.DataFrame([("c1", "Client", None, None, None, None)],
                     columns=["id", "name", "phone", "email", "avatar_url", "profile_url"], dtype=object),
        pd.DataFrame(columns=["id", "name", "email"], dtype=object),
    )


ONE_BAD_VALUE = {  # issue 11, "one bad value fails the whole interval": the bad row, and what it must become
    "offset among naive timestamps": ({"created_at": "2026-03-29 12:00:00+05:00", "text": "x"}, None),
    "T separator": ({"created_at": "2026-03-29T05:00:00", "text": "x"}, None),
    "datetime objects with different offsets": (
        {"created_at": datetime(2026, 3, 29, 12, tzinfo=ZoneInfo("Asia/Tokyo")), "text": "x"}, None),
    "fractional file size": ({"type": "file", "media_url": "https://x.example/f", "file_size": 1.5},
                             "bad_file_size"),
    "file size as text": ({"type": "file", "media_url": "https://x.example/f", "file_size": "abc"},
                          "bad_file_size"),
    "file size as an integral float": ({"type": "file", "media_url": "https://x.example/f", "file_size": 10.0},
                                       None),
    "conversation without a client": ({"conversation_id": "v2", "text": "x"}, "missing_client"),
    "infinite latitude": ({"type": "location", "lat": float("inf"), "lon": 1.0}, "bad_location"),
    "latitude as a word": ({"type": "location", "lat": "north", "lon": 1.0}, "bad_location"),
    "latitude out of range": ({"type": "location", "lat": 1000.0, "lon": 1.0}, "bad_location"),
    "control characters only": ({"text": "\x01\x02\x07"}, "empty_text"),
    "control characters and bad bytes": ({"text": "\x01\udcff"}, "invalid_utf8"),
    "an id the ledger cannot hold": ({"id": "x" * 600, "text": "x"}, "id_too_long"),
    "bytes where text belongs": ({"text": b"hello"}, None),
    "a NaN conversation id": ({"conversation_id": float("nan"), "text": "x"}, "missing_conversation"),
    "an empty id beside a NULL one": ({"id": "", "text": "x"}, "missing_id"),
}


@pytest.mark.parametrize("case", list(ONE_BAD_VALUE))
def test_one_bad_value_fails_only_its_own_row(case):
    values, reason = ONE_BAD_VALUE[case]
    rows = [{"id": "good", "text": "a valid row beside it"}, {"id": "odd", **values}]
    if case == "an empty id beside a NULL one":
        rows.insert(1, {"id": None, "text": "x"})
    frames = _frames(rows, [("v1", "c1", "2026-10-01 00:00:00"), ("v2", None, "2026-10-01 00:00:00")])
    batch = transform(frames, SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))
    assert "good" in set(batch.messages["source_id"])
    if reason is None:
        assert set(batch.messages["source_id"]) == {"good", values.get("id", "odd")} and batch.rejects.empty
        for message in batch.messages.itertuples(index=False):
            conversation = next(batch.conversations.loc[[message.conversation_id]].itertuples())
            json.dumps(message_payload(message, client_participant(conversation)), allow_nan=False).encode()
    else:
        assert list(batch.rejects["reason"]) == [reason] * (len(rows) - 1)
        assert len(batch.messages) == 1


def test_offsets_are_read_at_their_own_instant():
    ms = to_utc_ms(pd.Series(["2026-03-29 12:00:00+05:00", "2026-03-29 12:00:00", "2026-03-29T07:00:00Z",
                              "2026-03-29 07:00:00.250"], dtype=object), UTC)
    assert [datetime.fromtimestamp(v / 1000, UTC).isoformat() for v in ms] == [
        "2026-03-29T07:00:00+00:00", "2026-03-29T12:00:00+00:00", "2026-03-29T07:00:00+00:00",
        "2026-03-29T07:00:00.250000+00:00"]


def test_reject_keys_stay_apart_across_chunks():
    """Issue 11: reject keys restarted in every chunk, so later chunks overwrote earlier rows in the ledger."""
    seen = SeenIds()
    keys = []
    for chunk in range(3):
        rows = [{"id": "same", "text": "the first"}] if chunk == 0 else []
        rows += [{"id": "same", "text": f"copy {chunk}", "created_at": "2026-10-05 12:00:00"},
                 {"id": "same", "text": f"copy {chunk}", "created_at": "2026-10-05 12:00:00"},
                 {"id": f"empty-{chunk}", "text": None}]
        keys += list(transform(_frames(rows), SENDERS, "ae-", UTC, seen=seen, now=datetime(2026, 11, 25))
                     .rejects["source_key"])
    assert len(keys) == 9 and len(set(keys)) == 9


def test_rows_without_id_or_time_keep_keys_of_their_own():
    """Review of issue 11: two NULL-id rows of one second shared `message:<null id>@…`, so the ledger kept one."""
    rows = [{"id": None, "text": "one"}, {"id": None, "text": "two"}, {"id": "", "text": "three"},
            {"id": "", "text": "three"}, {"id": "a\x01", "text": None}, {"id": "a\\x01", "text": None}]
    batch = transform(_frames(rows), SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))
    assert len(batch.rejects) == 6 and batch.rejects["source_key"].is_unique
    unplaced = unplaced_rejects(pd.DataFrame([{"id": None, "created_at": None, "text": "x"},
                                              {"id": None, "created_at": None, "text": "y"},
                                              {"id": "k", "created_at": None, "text": "z"},
                                              {"id": "k", "created_at": None, "text": "z"}], dtype=object), UTC)
    assert unplaced["source_key"].is_unique and set(unplaced["reason"]) == {"no_timestamp"}


def test_json_and_array_values_are_data_not_failures():
    """Review of issue 11: a PostgreSQL json or text[] value (a dict, a list) failed the whole chunk."""
    rows = [{"id": "good", "text": "fine"},
            {"id": "json-type", "type": {"kind": "text"}, "text": "x"},
            {"id": "array-name", "type": "file", "media_url": "https://x.example/f", "file_name": ["a", "b"]},
            {"id": ["list", "id"], "text": "x"},
            {"id": "list-time", "created_at": ["2026-10-05"], "text": "x"},
            {"id": "huge-lat", "type": "location", "lat": 10**400, "lon": 1.0}]
    batch = transform(_frames(rows), SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))
    outcome = dict(zip(batch.messages["source_id"], ["sent"] * len(batch.messages), strict=True))
    outcome.update(dict(zip(batch.rejects["row"].map(lambda r: json.loads(r)["id"]), batch.rejects["reason"],
                            strict=True)))
    assert outcome == {"good": "sent", "json-type": "unknown_type", "array-name": "sent", '["list", "id"]': "sent",
                       "list-time": "bad_timestamp", "huge-lat": "bad_location"}
