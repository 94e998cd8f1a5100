"""A hostile source database, generated and deterministic: valid conversations over three days with every kind of
bad or odd row that real tables hold mixed in, each with what the pipeline must make of it.

Days are in Europe/Moscow (`ZONE`), the source stores naive UTC (`AMOJO_ETL_SOURCE_TIMEZONE=UTC`), so interval
bounds fall at 21:00 of the stored text — where SQLite's text comparison used to put a `T`-separated time into
the wrong day. Every row has an `Expect`: sent (into which chat) or rejected (why), or found by no interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

ZONE = ZoneInfo("Europe/Moscow")
DAYS = (date(2026, 10, 5), date(2026, 10, 6), date(2026, 10, 7))
TEXT_LIMIT = 5000
COLUMNS = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
           "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone"]

# No constraint the rows could break; numbers kept as text, as many real tables keep them.
SCHEMA = """
CREATE TABLE clients (id VARCHAR(64), name TEXT, phone TEXT, email TEXT, avatar_url TEXT, profile_url TEXT);
CREATE TABLE managers (id VARCHAR(64), name TEXT, email TEXT);
CREATE TABLE conversations (id VARCHAR(64), client_id VARCHAR(64), created_at {ts});
CREATE TABLE messages (id VARCHAR(700), conversation_id VARCHAR(64), created_at {ts} NULL, updated_at {ts} NULL,
    direction VARCHAR(16), manager_id VARCHAR(64), type VARCHAR(16), text TEXT, media_url TEXT, file_name TEXT,
    file_size TEXT, lat TEXT, lon TEXT, contact_name TEXT, contact_phone TEXT)
"""

CLIENTS = [  # id, name, phone, email, avatar, profile
    ("k1", "Вася", "12345", None, None, None),  # a phone that is no phone: dropped, the client still sent
    ("k2", "Без контактов", None, None, None, None),
    ("k3", "[/bold] markup", "+7 915 111-22-33", "K3@Example.com", None, None),
    ("k4", "", "8 916 000 11 22", None, "javascript:alert(1)", "not a url"),  # no name: "Client k4"
    ("k5", "Emoji 🙂", None, "k5@example.com", "https://x.example/a.png", "https://x.example/k5"),
    ("k6", "Tab\tand\nnewline", None, "not an email", None, None),
    ("kx\x01", "Control in id", None, None, None, None),
]
MANAGERS = [("m1", "Anna", "Anna@Example.com"), ("m2", "Unknown to amoCRM", "nobody@example.com"),
            ("m3", "No email", None)]
CONVERSATIONS = [  # id, client_id
    ("f1", "k1"), ("f2", "k2"), ("f3", "k3"), ("f4", "k4"), ("f5", "k5"), ("f6", "k6"),
    ("conv-a", "k5"), ("conv-b", "k2"),
    ("no-client", None), ("ghost-client", "nobody"), ("bad-client", "kx\x01"), ("c\x01v", "k1"),
    ("dup-conv", "k1"), ("dup-conv", "k2"),  # a join that repeats a conversation: the first is kept
]


@dataclass(frozen=True)
class Expect:
    outcome: str  # "sent" | "rejected" | "unplaced" | "none" (a row of the copy that is sent)
    reason: str | None = None
    chat: str | None = None  # our conversation id for sent rows


@dataclass
class Row:
    kind: str
    values: dict[str, Any]
    expect: Expect
    day: date | None = None  # the interval it belongs to (Moscow days)
    dialects: tuple[str, ...] = ("sqlite", "postgresql", "mysql")
    edited: date | None = None  # the interval whose edits pass reads it again (updated_at)


@dataclass
class Corpus:
    rows: list[Row] = field(default_factory=list)

    def for_dialect(self, dialect: str) -> list[Row]:
        return [r for r in self.rows if dialect in r.dialects]

    def kinds(self, dialect: str) -> set[str]:
        return {r.kind for r in self.for_dialect(dialect)}


def _utc(day: date, minutes: int) -> datetime:
    """A moment of `day` (Moscow) as naive UTC: Moscow midnight is 21:00 UTC of the day before."""
    return datetime(day.year, day.month, day.day) - timedelta(hours=3) + timedelta(minutes=minutes)


def _stamp(moment: datetime, dialect: str) -> Any:
    return moment.isoformat(sep=" ") if dialect == "sqlite" else moment


def build() -> Corpus:
    """Every row of the hostile source with what must become of it."""
    corpus = Corpus()
    add = corpus.rows.append
    sent = Expect("sent")

    def msg(kind: str, id_: Any, day: date, minute: int, expect: Expect, conv: str = "f5", *, text: Any = "x",
            dialects: tuple[str, ...] = ("sqlite", "postgresql", "mysql"), created_at: Any = None,
            **values: Any) -> None:
        base = {"id": id_, "conversation_id": conv, "created_at": created_at or _utc(day, minute),
                "direction": "in", "type": "text", "text": text}
        if expect.outcome == "sent" and expect.chat is None:
            expect = Expect("sent", chat=conv)
        edited = values.get("updated_at")
        edited_day = None
        if edited is not None:
            edited_day = (datetime.fromisoformat(str(edited)) + timedelta(hours=3)).date()  # stored UTC, days Moscow
        add(Row(kind, {**base, **values}, expect, day, dialects, edited_day))

    # Valid filler: six conversations, 120 messages a day, so each day takes two chunks of 100 (and the odd
    # rows fall into both).
    for day_number, day in enumerate(DAYS):
        for n in range(120):
            conv = f"f{n % 6 + 1}"
            out = n % 3 == 0
            msg("valid filler", f"{day.isoformat()}-{n}", day, 30 + n * 9, sent, conv,
                text=f"сообщение {day_number}-{n}", direction="out" if out else "in",
                manager_id=("m1", "m2", "m3")[n % 3] if out else None)

    d1, d2, d3 = DAYS
    # -- odd but valid: sent
    msg("T separator in the interval's text bound", "t-sep", d1, 8 * 60, sent, "f1", dialects=("sqlite",),
        created_at="2026-10-05T05:00:00")  # 08:00 Moscow, the 5th: plain text comparison took it for the 6th
    msg("offset among naive timestamps", "offset", d2, 0, sent, "f2", dialects=("sqlite",),
        created_at="2026-10-06 12:00:00+05:00")  # 07:00 UTC
    msg("Z suffix", "zulu", d2, 0, sent, "f3", dialects=("sqlite",), created_at="2026-10-06T09:15:00Z")
    msg("fractional seconds", "fraction", d1, 0, sent, "f4",
        created_at=_utc(d1, 600) + timedelta(microseconds=123456))
    msg("mixed case and spaces in type and direction", "case", d1, 610, sent, type=" Text ", direction="IN ")
    msg("control characters inside a text", "ctrl-inside", d1, 620, sent, text="bell\x07 removed")
    msg("Rich markup in a text", "markup-text", d1, 630, sent, text="[/bold] [red]not markup")
    msg("Rich markup in an id", "[/bold]", d1, 640, sent)
    msg("ANSI escape in a text", "ansi", d1, 650, sent, text="\x1b[31mred\x1b[0m")
    msg("newlines and tabs in a text", "newlines", d1, 660, sent, text="line 1\nline 2\ttab")
    msg("emoji and RTL text", "emoji", d1, 670, sent, text="🙂 שלום مرحبا")
    msg("a long text within the limit", "long-text", d1, 680, sent, text="ю" * TEXT_LIMIT)
    msg("a 300-character id", "i" * 300, d1, 690, sent)
    msg("integer-like id", "42", d1, 700, sent)
    msg("picture with file meta", "pic", d2, 600, sent, type="picture", text=None,
        media_url="https://x.example/p.jpg", file_name="p.jpg", file_size="10")
    msg("file size as a float holding an integer", "size-float", d2, 610, sent, type="file", text=None,
        media_url="https://x.example/f.pdf", file_name="f.pdf", file_size="2048.0")
    msg("file without a name", "unnamed", d2, 620, sent, type="file", text=None,
        media_url="https://x.example/docs/invoice.pdf")
    msg("video", "video", d2, 630, sent, type="video", text=None, media_url="https://x.example/v.mp4",
        file_name="v.mp4", file_size="9")
    msg("voice", "voice", d2, 640, sent, type="voice", text=None, media_url="https://x.example/v.ogg")
    msg("audio", "audio", d2, 650, sent, type="audio", text=None, media_url="https://x.example/a.mp3")
    msg("sticker", "sticker", d2, 660, sent, type="sticker", text=None, media_url="https://x.example/s.webp")
    msg("location at the edge of the range", "loc-edge", d2, 670, sent, type="location", text=None, lat="-90",
        lon="180")
    msg("contact card", "contact", d2, 680, sent, type="contact", text=None, contact_name="Courier",
        contact_phone="+74950000000")
    msg("file size on a text message is ignored", "size-on-text", d2, 690, sent, file_size="abc")
    msg("conversation repeated by a join", "dup-conv-msg", d2, 700, sent, "dup-conv")
    msg("message reused id, first conversation", "reused", d1, 710, sent, "conv-a", text="first, day one")
    msg("edited a day later", "edited", d1, 720, sent, "f2", text="as edited", updated_at=_utc(d2, 60))
    msg("edited a day later, T in updated_at", "edited-t", d1, 730, sent, "f2", text="as edited too",
        updated_at="2026-10-06T10:00:00", dialects=("sqlite",))
    msg("exact copy of a row, first", "copy", d3, 600, sent, "f6", text="same")
    msg("same id twice in a day, first", "twice", d3, 610, sent, "f6", text="the first")

    # -- rejected, with the reason
    def bad(kind: str, id_: Any, day: date, minute: int, reason: str, conv: str = "f5", **values: Any) -> None:
        msg(kind, id_, day, minute, Expect("rejected", reason), conv, **values)

    bad("NULL text", "null-text", d1, 900, "empty_text", text=None)
    bad("blank text", "blank-text", d1, 905, "empty_text", text="   ")
    bad("control characters only", "ctrl-only", d1, 910, "empty_text", text="\x01\x02\x07")
    bad("unknown type", "gif", d1, 915, "unknown_type", type="gif")
    bad("unknown direction", "sideways", d1, 920, "unknown_direction", direction="sideways")
    bad("orphan conversation", "orphan", d1, 925, "orphan_conversation", conv="nowhere")
    bad("conversation without a client", "no-client-msg", d1, 930, "missing_client", conv="no-client")
    bad("client missing from the source", "ghost-msg", d1, 935, "orphan_client", conv="ghost-client")
    bad("client id with a control character", "bad-client-msg", d1, 940, "bad_client_id", conv="bad-client")
    bad("conversation id with a control character", "bad-conv-msg", d1, 945, "bad_conversation_id",
        conv="c\x01v")
    bad("message id with a control character", "id\x01ctl", d1, 950, "bad_id")
    bad("NULL id", None, d1, 955, "missing_id")
    bad("empty id", "", d1, 960, "missing_id")
    bad("id longer than the ledger holds", "L" * 600, d1, 965, "id_too_long")
    bad("text longer than the limit", "too-long", d1, 970, "text_too_long", text="x" * (TEXT_LIMIT + 1))
    bad("media without a url", "no-url", d2, 900, "bad_media_url", type="picture", text=None)
    bad("ftp url", "ftp", d2, 905, "bad_media_url", type="file", text=None, media_url="ftp://x.example/f")
    bad("fractional file size", "size-frac", d2, 910, "bad_file_size", type="file", text=None,
        media_url="https://x.example/f", file_size="1.5")
    bad("file size as text", "size-text", d2, 915, "bad_file_size", type="file", text=None,
        media_url="https://x.example/f", file_size="abc")
    bad("negative file size", "size-neg", d2, 920, "bad_file_size", type="file", text=None,
        media_url="https://x.example/f", file_size="-1")
    bad("infinite latitude", "lat-inf", d2, 925, "bad_location", type="location", text=None, lat="inf", lon="1")
    bad("latitude as a word", "lat-word", d2, 930, "bad_location", type="location", text=None, lat="north",
        lon="1")
    bad("latitude out of range", "lat-1000", d2, 935, "bad_location", type="location", text=None, lat="1000",
        lon="1")
    bad("NaN latitude", "lat-nan", d2, 940, "bad_location", type="location", text=None, lat="NaN", lon="1")
    bad("longitude out of range", "lon-200", d2, 945, "bad_location", type="location", text=None, lat="1",
        lon="200")
    bad("location without coordinates", "loc-none", d2, 950, "bad_location", type="location", text=None)
    bad("contact without a phone", "contact-half", d2, 955, "bad_contact", type="contact", text=None,
        contact_name="n")
    bad("message reused id, another conversation a day later", "reused", d2, 960, "duplicate_id", conv="conv-b",
        text="second, day two")
    bad("exact copy of a row, second", "copy", d3, 600, "duplicate_id", conv="f6", text="same")
    bad("exact copy of a row, third", "copy", d3, 600, "duplicate_id", conv="f6", text="same")
    bad("same id twice in a day, second", "twice", d3, 615, "duplicate_id", conv="f6", text="the second")
    bad("text that is not UTF-8", "not-utf8", d3, 620, "invalid_utf8", text=b"Hello\xff", dialects=("sqlite",))
    bad("file name that is not UTF-8", "name-not-utf8", d3, 625, "invalid_utf8", type="file", text=None,
        media_url="https://x.example/f", file_name=b"\xfe.pdf", dialects=("sqlite",))
    bad("impossible time within the day's text", "time-25", d3, 0, "bad_timestamp", dialects=("sqlite",),
        created_at="2026-10-07 15:61:00")

    # -- no interval can select them: reported by the backfill
    def unplaced(kind: str, id_: str, created_at: Any, dialects: tuple[str, ...],
                 reason: str = "no_timestamp") -> None:
        add(Row(kind, {"id": id_, "conversation_id": "f5", "direction": "in", "type": "text", "text": "x",
                       "created_at": created_at}, Expect("unplaced", reason), None, dialects))

    unplaced("NULL created_at", "no-time", None, ("sqlite", "postgresql", "mysql"))
    unplaced("created_at as a word", "word-time", "yesterday", ("sqlite",))
    unplaced("created_at as a unix number", "unix-time", 1759640000, ("sqlite",))
    unplaced("created_at before 1970", "moon-landing", datetime(1969, 7, 20, 20, 17), ("sqlite", "postgresql", "mysql"),
             "bad_timestamp")
    return corpus


def write(url: str, corpus: Corpus) -> list[Row]:
    """Create the hostile source at `url`; the rows it holds (some kinds only fit some databases)."""
    engine = sa.create_engine(url)
    dialect = "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name
    ts = "DATETIME(6)" if dialect == "mysql" else "TIMESTAMP"
    rows = corpus.for_dialect(dialect)
    with engine.begin() as conn:
        for statement in SCHEMA.format(ts=ts).split(";"):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO clients VALUES (:a, :b, :c, :d, :e, :f)"),
                     [dict(zip("abcdef", c, strict=True)) for c in CLIENTS])
        conn.execute(sa.text("INSERT INTO managers VALUES (:a, :b, :c)"),
                     [dict(zip("abc", m, strict=True)) for m in MANAGERS])
        opened = _stamp(datetime(2026, 10, 1), dialect)
        conn.execute(sa.text("INSERT INTO conversations VALUES (:a, :b, :c)"),
                     [{"a": c, "b": k, "c": opened} for c, k in CONVERSATIONS])
        insert = sa.text(f"INSERT INTO messages ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})")
        for row in rows:
            values = {c: row.values.get(c) for c in COLUMNS}
            for column in ("created_at", "updated_at"):
                if isinstance(values[column], datetime):
                    values[column] = _stamp(values[column], dialect)
            raw = {c: v for c, v in values.items() if isinstance(v, bytes)}
            if raw:  # bytes that are not UTF-8 in a TEXT column: only SQLite keeps them, through a cast
                for column in raw:
                    values[column] = None
                conn.execute(insert, values)
                for column, value in raw.items():
                    conn.execute(sa.text(f"UPDATE messages SET {column} = CAST(X'{value.hex()}' AS TEXT) "
                                         "WHERE id = :id"), {"id": values["id"]})
            else:
                conn.execute(insert, values)
    engine.dispose()
    return rows
