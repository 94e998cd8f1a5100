"""The ledger: what has been done in amoCRM, kept in the state database so that runs resume and never repeat.

Message status moves pending -> sending -> sent -> confirmed (or rejected / failed). `sending` is written before
the request and `sent` after the answer; a `sending` row is checked against chat history before any resend.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .settings import ConfigurationError

SCHEMA_VERSION = 6
KEY_LENGTH = 512
"""Longest id the ledger keeps (msgid, conversation and client ids, reject keys): what real sources hold, and
within what MySQL can index (3072 bytes of utf8mb4). Longer source ids are rejected before they get here."""

metadata = sa.MetaData()

meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))
channel = sa.Table(
    "channel", metadata,
    sa.Column("channel_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("scope_id", sa.String(160), nullable=False),
)
chats = sa.Table(
    "chats", metadata,
    sa.Column("conversation_id", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("chat_id", sa.String(64)),
    sa.Column("client_key", sa.String(KEY_LENGTH)),
    sa.Column("contact_id", sa.BigInteger),
    sa.Column("linked", sa.Boolean, nullable=False, default=False),
    sa.Column("quarantine", sa.Text),
    sa.Column("updated_at", sa.Float),
)
contacts = sa.Table(
    "contacts", metadata,
    sa.Column("client_key", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Boolean, nullable=False),
)
messages = sa.Table(
    "messages", metadata,
    sa.Column("msgid", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("conversation_id", sa.String(KEY_LENGTH), nullable=False, index=True),
    sa.Column("msec", sa.BigInteger, nullable=False, index=True),
    sa.Column("content_hash", sa.BigInteger, nullable=False),
    sa.Column("text_hash", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amojo_id", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float),
)
intervals = sa.Table(
    "intervals", metadata,
    sa.Column("start", sa.String(40), primary_key=True),
    sa.Column("end", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("updated_at", sa.Float),
)
rejects = sa.Table(
    "rejects", metadata,
    sa.Column("source_key", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("row", sa.Text),
    sa.Column("updated_at", sa.Float),
    # The interval whose run rejected the row (its label); a run clears its own before it starts again, so that
    # a row fixed at the source stops being listed. Added in version 4; "unplaced" for rows no interval selects.
    sa.Column("interval_label", sa.String(64), index=True),
)

# Reconciliation reads a conversation's messages of one interval: (conversation_id, msec). Added in version 2.
messages_by_conversation_time = sa.Index("messages_conversation_msec", messages.c.conversation_id, messages.c.msec)

oauth_tokens = sa.Table(
    "oauth_tokens", metadata,
    sa.Column("account", sa.String(255), primary_key=True),
    sa.Column("access_token", sa.Text, nullable=False),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),  # not Float: single precision on MySQL
    sa.Column("updated_at", sa.Float),
)

# Who is doing what right now, so that concurrent runs on one ledger never do the same work twice. A claim is a lease:
# its holder renews it while alive; once expired, another run takes it over. Added in version 3.
claims = sa.Table(
    "claims", metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # interval | conversation | client
    sa.Column("key", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),  # not Float: single precision on MySQL
    # An interval claim's span, and how far into it the holder has registered its messages as pending.
    sa.Column("start_ms", sa.BigInteger),
    sa.Column("end_ms", sa.BigInteger),
    sa.Column("frontier_ms", sa.BigInteger),
)

# Requests sent whose effect amoCRM has not confirmed (their answer was lost, or the run died waiting for it):
# before the same thing is done again, amoCRM is read to learn whether it was done. Added in version 5.
uncertain = sa.Table(
    "uncertain", metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # contact: a create of the client `key`'s contact
    sa.Column("key", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("since", sa.Double, nullable=False),  # not Float: single precision on MySQL
)

# The last audit of each interval (flows/audit.py): when, its verdict, the three counts and the differences by kind,
# so that `status` shows it beside the import's. Added in version 6.
audits = sa.Table(
    "audits", metadata,
    sa.Column("start", sa.String(40), primary_key=True),
    sa.Column("end", sa.String(40), primary_key=True),
    sa.Column("audited_at", sa.Double, nullable=False),  # the ledger's clock; not Float: single precision on MySQL
    sa.Column("verdict", sa.String(16), nullable=False),  # consistent | differs
    sa.Column("source", sa.Integer, nullable=False),  # rows, valid and rejected
    sa.Column("source_rejected", sa.Integer, nullable=False),
    sa.Column("ledger", sa.Text, nullable=False),  # JSON: status -> messages (sent, rejected, pending, failed)
    sa.Column("amocrm", sa.Integer, nullable=False),  # messages amoCRM showed
    sa.Column("differences", sa.Text, nullable=False),  # JSON: kind -> messages
    sa.Column("repair", sa.Boolean, nullable=False),  # an audit --repair
    sa.Column("repaired", sa.Integer, nullable=False),  # messages it sent or edited
)

DONE = ("sent", "confirmed")
UNKNOWN_CONTENT = 0
"""The content hash of a sent message whose content in amoCRM is not the source's: the next run edits it."""
UNSENT = ("pending", "sending", "failed")
IN_SLICE = 500


@dataclass(frozen=True)
class ChatState:
    conversation_id: str
    chat_id: str | None
    contact_id: int | None
    linked: bool
    quarantine: str | None


def _widen_keys(conn: sa.Connection) -> None:
    """Version 4: id columns of VARCHAR(255) become VARCHAR(KEY_LENGTH); rejects know their interval.

    SQLite ignores VARCHAR lengths, so there only the rejects table changes.
    """
    dialect = conn.dialect
    inspector = sa.inspect(conn)
    for table in (chats, contacts, messages, rejects, claims):  # the tables that hold source ids
        found = {c["name"]: c for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if not isinstance(column.type, sa.String) or column.type.length != KEY_LENGTH:
                continue
            if getattr(found[column.name]["type"], "length", None) in (None, KEY_LENGTH):
                continue
            kind = column.type.compile(dialect=dialect)
            if dialect.name == "postgresql":
                conn.execute(sa.text(f'ALTER TABLE {table.name} ALTER COLUMN "{column.name}" TYPE {kind}'))
            elif dialect.name in ("mysql", "mariadb"):
                null = "NULL" if column.nullable and not column.primary_key else "NOT NULL"
                conn.execute(sa.text(f"ALTER TABLE {table.name} MODIFY `{column.name}` {kind} {null}"))
    if "interval_label" not in {c["name"] for c in inspector.get_columns("rejects")}:
        conn.execute(sa.text("ALTER TABLE rejects ADD COLUMN interval_label VARCHAR(64)"))
    for index in rejects.indexes:
        index.create(conn, checkfirst=True)


UPGRADES: dict[int, Callable[[sa.Connection], None]] = {
    2: lambda conn: messages_by_conversation_time.create(conn, checkfirst=True),
    3: lambda conn: claims.create(conn, checkfirst=True),
    4: _widen_keys,
    5: lambda conn: uncertain.create(conn, checkfirst=True),
    6: lambda conn: audits.create(conn, checkfirst=True),
}
"""Schema version -> the step that brings a ledger of the version before up to it."""


SCHEMA_LOCK = 0x616D6F6A6F  # any number: the advisory lock that schema changes take turns on


@contextmanager
def _schema_lock(conn: sa.Connection) -> Iterator[None]:
    """Hold the database's own lock for schema changes while inside; commit before letting go of it, so that
    whoever takes it next sees what was done. SQLite needs none: one writer at a time."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        lock, unlock = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    elif dialect in ("mysql", "mariadb"):
        lock, unlock = "SELECT GET_LOCK('amojo_etl_schema', 120)", "SELECT RELEASE_LOCK('amojo_etl_schema')"
    else:
        yield
        conn.commit()
        return
    conn.execute(sa.text(lock), {"key": SCHEMA_LOCK})
    try:
        yield
        conn.commit()
    finally:
        conn.rollback()
        conn.execute(sa.text(unlock), {"key": SCHEMA_LOCK})
        conn.commit()


def _unusable(url: str, exc: Exception) -> ConfigurationError:
    """The ledger cannot be opened or written: name the setting, show the URL without its password."""
    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        shown = "(not a SQLAlchemy URL)"
    reason = str(getattr(exc, "orig", None) or exc).strip()
    return ConfigurationError(f"cannot open the ledger {shown}: {reason}. Check AMOJO_ETL_STATE_URL: the database "
                              "must be reachable and writable (a SQLite file: its directory too)")


def _write_ahead(connection: Any, _record: Any) -> None:
    """A SQLite ledger in write-ahead mode, still synced at each commit: a commit costs one sync of the log instead
    of the rollback journal's several (a commit a conversation and chunk is most of what a long import writes), and
    readers in other processes no longer block the run that writes. The mode stays with the file.

    Switching needs the file to itself, and SQLite refuses it at once (no busy wait) while another process writes,
    as an older worker may on a ledger it made: that connection goes on in rollback mode, and a later one switches.
    """
    connection.execute("PRAGMA synchronous=FULL")
    if connection.execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "memory"):
        return
    with suppress(sqlite3.OperationalError):
        connection.execute("PRAGMA journal_mode=WAL")


class Ledger:
    """The state database behind one account's imports (SQLite file by default, PostgreSQL for many workers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            engine = sa.make_url(url)
            if engine.get_backend_name() == "sqlite" and engine.database and engine.database != ":memory:":
                Path(engine.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, future=True)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _write_ahead)
        except (sa.exc.ArgumentError, ImportError, OSError) as exc:
            raise _unusable(url, exc) from None
        try:
            self._upgrade()
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise _unusable(url, exc) from None

    def _upgrade(self) -> None:
        """Create a new ledger at the current version, or bring an older one up to it, step by step.

        Workers starting together on a new ledger would create its tables at once: a database lock makes them
        take turns (the first creates, the others find it done).
        """
        with self.engine.connect() as conn, _schema_lock(conn):
            metadata.create_all(conn, tables=[meta])
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            if found is None:
                metadata.create_all(conn)
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(found)
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the ledger at AMOJO_ETL_STATE_URL is at schema version {version}, written by a newer "
                    f"amojo-etl (this one knows {SCHEMA_VERSION}): upgrade amojo-etl")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                UPGRADES[step](conn)
            metadata.create_all(conn)  # tables added since, if any
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar())

    def close(self) -> None:
        self.engine.dispose()

    def _insert_ignoring_known(self, table: sa.Table) -> sa.Insert:
        """An INSERT that leaves a row whose primary key exists as it is."""
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            return (sqlite if dialect == "sqlite" else postgresql).insert(table).on_conflict_do_nothing()
        return table.insert().prefix_with("IGNORE")

    def _upsert(self, conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str],
                kept: tuple[str, ...] = ()) -> None:
        """Insert or update by primary key, in the dialect's own way; columns in `kept` keep what a row has."""
        if not rows:
            return
        dialect = self.engine.dialect.name
        changing = [c for c in rows[0] if c not in keys and c not in kept]
        if dialect in ("sqlite", "postgresql"):
            insert = (sqlite if dialect == "sqlite" else postgresql).insert(table)
            conn.execute(insert.on_conflict_do_update(index_elements=keys,
                                                      set_={c: insert.excluded[c] for c in changing}), rows)
        else:
            insert = mysql.insert(table)
            conn.execute(insert.on_duplicate_key_update({c: insert.inserted[c] for c in changing}), rows)

    # -- channel
    def save_scope(self, channel_id: str, account_id: str, scope_id: str) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, channel, [{"channel_id": channel_id, "account_id": account_id, "scope_id": scope_id}],
                         ["channel_id"])

    # -- chats and contacts
    def _rows_where_in(self, table: sa.Table, key: sa.Column, values: Iterable[Any]) -> Iterator[sa.Row]:
        """Rows whose `key` is one of `values`, queried in slices so that no IN list grows past the driver."""
        values = list(values)
        with self.engine.connect() as conn:
            for start in range(0, len(values), IN_SLICE):
                yield from conn.execute(sa.select(table).where(key.in_(values[start:start + IN_SLICE])))

    def chat_states(self, conversation_ids: Iterable[str]) -> dict[str, ChatState]:
        return {
            row.conversation_id: ChatState(row.conversation_id, row.chat_id, row.contact_id, bool(row.linked),
                                           row.quarantine)
            for row in self._rows_where_in(chats, chats.c.conversation_id, conversation_ids)
        }

    def save_chats(self, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            self._upsert(conn, chats, [{**r, "updated_at": now} for r in rows], ["conversation_id"])

    def contact_ids(self, client_keys: Iterable[str]) -> dict[str, int]:
        return {row.client_key: row.contact_id
                for row in self._rows_where_in(contacts, contacts.c.client_key, client_keys)}

    def save_contacts(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, contacts, rows, ["client_key"])

    # -- requests whose effect is unknown
    def expect_effects(self, kind: str, keys: Iterable[str]) -> None:
        """Say, before sending them, that requests for `keys` are under way: until `settle_effects`, their effect
        is unknown, and whoever comes next reads amoCRM before doing them again. `since` is the ledger's clock."""
        keys = list(keys)
        if keys:
            with self.engine.begin() as conn:
                now = self._now(conn)
                self._upsert(conn, uncertain, [{"kind": kind, "key": key, "since": now} for key in keys],
                             ["kind", "key"])

    def settle_effects(self, kind: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self.engine.begin() as conn:
            for first in range(0, len(keys), IN_SLICE):
                conn.execute(uncertain.delete().where(uncertain.c.kind == kind,
                                                      uncertain.c.key.in_(keys[first:first + IN_SLICE])))

    def uncertain_keys(self, kind: str, keys: Iterable[str]) -> dict[str, float]:
        """Which of `keys` have a request of `kind` whose effect is unknown, and since when (the ledger's clock)."""
        return {row.key: row.since for row in self._rows_where_in(uncertain, uncertain.c.key, keys)
                if row.kind == kind}

    # -- messages
    def message_states(self, msgids: Iterable[str]) -> dict[str, tuple[str, int, str, int]]:
        """msgid -> (status, content hash, conversation_id, msec) for the messages the ledger knows."""
        return {row.msgid: (row.status, row.content_hash, row.conversation_id, row.msec)
                for row in self._rows_where_in(messages, messages.c.msgid, msgids)}

    def add_pending(self, rows: list[dict[str, Any]]) -> None:
        """Record messages as `pending` unless the ledger already knows them (whatever their status)."""
        if not rows:
            return
        now = time.time()
        rows = [{**r, "status": "pending", "attempts": 0, "updated_at": now} for r in rows]
        insert = self._insert_ignoring_known(messages)
        with self.engine.begin() as conn:
            for first in range(0, len(rows), 10_000):
                conn.execute(insert, rows[first:first + 10_000])

    def record_messages(self, rows: list[dict[str, Any]]) -> None:
        """Batch write of message states (one transaction for the batch); a column a row leaves out is kept.

        A message stays in the conversation and at the time it was first recorded with: amoCRM cannot move it.
        """
        now = time.time()
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            by_shape.setdefault(tuple(sorted(row)), []).append({**row, "updated_at": now})
        with self.engine.begin() as conn:
            for batch in by_shape.values():
                self._upsert(conn, messages, batch, ["msgid"], kept=("conversation_id", "msec"))

    def conversations_between(self, start_ms: int, end_ms: int) -> list[tuple[str, str | None]]:
        """(conversation_id, chat_id) of every conversation with a message of [start_ms, end_ms) in the ledger."""
        query = (sa.select(messages.c.conversation_id, chats.c.chat_id).distinct()
                 .select_from(messages.outerjoin(chats, messages.c.conversation_id == chats.c.conversation_id))
                 .where(messages.c.msec >= start_ms, messages.c.msec < end_ms)
                 .order_by(messages.c.conversation_id))
        with self.engine.connect() as conn:
            return [(row.conversation_id, row.chat_id) for row in conn.execute(query)]

    def messages_between(self, conversation_ids: list[str], start_ms: int, end_ms: int) -> list[sa.Row]:
        """The ledger's rows for these conversations' messages of [start_ms, end_ms)."""
        rows: list[sa.Row] = []
        with self.engine.connect() as conn:
            for first in range(0, len(conversation_ids), IN_SLICE):
                query = sa.select(messages).where(
                    messages.c.conversation_id.in_(conversation_ids[first:first + IN_SLICE]),
                    messages.c.msec >= start_ms, messages.c.msec < end_ms)
                rows.extend(conn.execute(query))
        return rows

    def status_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status))
            return {status: count for status, count in rows}

    # -- OAuth pairs: a refresh token is single-use, so each new pair is committed the moment it arrives
    def oauth_pair(self, account: str) -> tuple[str, str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.account == account)).first()
        return (row.access_token, row.refresh_token, row.expires_at) if row else None

    def save_oauth_pair(self, account: str, access_token: str, refresh_token: str, expires_at: float) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, oauth_tokens, [{"account": account, "access_token": access_token,
                                               "refresh_token": refresh_token, "expires_at": expires_at,
                                               "updated_at": time.time()}], ["account"])

    # -- intervals and rejects
    def save_interval(self, start: str, end: str, status: str, summary: dict[str, Any]) -> None:
        row = {"start": start, "end": end, "status": status, "summary": json.dumps(summary, default=str),
               "updated_at": time.time()}
        with self.engine.begin() as conn:
            self._upsert(conn, intervals, [row], ["start", "end"])

    def interval_record(self, start: str, end: str) -> tuple[str, dict[str, Any]] | None:
        """The status and summary last recorded for exactly this interval, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(intervals.c.status, intervals.c.summary)
                               .where(intervals.c.start == start, intervals.c.end == end)).first()
        return None if row is None else (row.status, json.loads(row.summary or "{}"))

    def interval_statuses(self) -> dict[tuple[str, str], str]:
        """(start, end) -> status of every interval the ledger has seen."""
        with self.engine.connect() as conn:
            return {(r.start, r.end): r.status for r in conn.execute(sa.select(intervals))}

    def save_audit(self, start: str, end: str, found: dict[str, Any]) -> None:
        """Keep an interval's audit as its last: `found` has verdict, source, source_rejected, ledger, amocrm,
        differences (kind -> count), repair and repaired."""
        with self.engine.begin() as conn:
            row = {**found, "start": start, "end": end, "audited_at": self._now(conn),
                   "ledger": json.dumps(found["ledger"]), "differences": json.dumps(found["differences"])}
            self._upsert(conn, audits, [row], ["start", "end"])

    def last_audits(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(start, end) -> the last audit of every interval audited."""
        with self.engine.connect() as conn:
            return {(r.start, r.end): {**r._asdict(), "ledger": json.loads(r.ledger),
                                       "differences": json.loads(r.differences)}
                    for r in conn.execute(sa.select(audits))}

    def mark_messages(self, msgids: list[str], status: str) -> None:
        """Set these messages' status (reconcile's repair marks the missing ones `failed`, to be sent again)."""
        with self.engine.begin() as conn:
            for first in range(0, len(msgids), IN_SLICE):
                conn.execute(messages.update().where(messages.c.msgid.in_(msgids[first:first + IN_SLICE]))
                             .values(status=status, updated_at=time.time()))

    def mark_changed(self, msgids: list[str]) -> None:
        """Say that amoCRM holds other content for these sent messages (reconcile's repair): the next run edits
        them to the source's."""
        with self.engine.begin() as conn:
            for first in range(0, len(msgids), IN_SLICE):
                conn.execute(messages.update().where(messages.c.msgid.in_(msgids[first:first + IN_SLICE]))
                             .values(content_hash=UNKNOWN_CONTENT, updated_at=time.time()))

    def interval_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(intervals).order_by(intervals.c.start))
            return [{**row._asdict(), "summary": json.loads(row.summary or "{}")} for row in rows]

    def reject_rows(self, reason: str | None = None, limit: int | None = None,
                    interval_label: str | None = None) -> list[dict[str, Any]]:
        """The rejected rows with their reason, newest first."""
        query = sa.select(rejects).order_by(rejects.c.updated_at.desc(), rejects.c.source_key)
        if reason:
            query = query.where(rejects.c.reason == reason)
        if interval_label:
            query = query.where(rejects.c.interval_label == interval_label)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def reject_counts(self, interval_label: str | None = None) -> dict[str, int]:
        """reason -> rejected rows, of one interval or of all."""
        query = sa.select(rejects.c.reason, sa.func.count()).group_by(rejects.c.reason)
        if interval_label:
            query = query.where(rejects.c.interval_label == interval_label)
        with self.engine.connect() as conn:
            return {reason: count for reason, count in conn.execute(query)}

    def save_rejects(self, rows: list[dict[str, Any]], interval_label: str) -> None:
        """Keep each rejected row with its reason, for the user to fix at the source.

        A ledger from before version 4 keyed rejects `message:{id}` and kept no interval: such a row is replaced
        by the same source row's reject under its new key, rather than listed twice.
        """
        now = time.time()
        with self.engine.begin() as conn:
            for first in range(0, len(rows), 10_000):
                part = rows[first:first + 10_000]
                self._upsert(conn, rejects, [{**r, "interval_label": interval_label, "updated_at": now}
                                             for r in part], ["source_key"])
                legacy = sorted({r["source_key"].split("@", 1)[0] for r in part if "@" in r["source_key"]})
                for start in range(0, len(legacy), IN_SLICE):
                    conn.execute(rejects.delete().where(rejects.c.interval_label.is_(None),
                                                        rejects.c.source_key.in_(legacy[start:start + IN_SLICE])))

    def clear_rejects(self, interval_label: str) -> None:
        """Forget an interval's rejects before its run starts again: what is still bad is rejected anew."""
        with self.engine.begin() as conn:
            conn.execute(rejects.delete().where(rejects.c.interval_label == interval_label))

    # -- claims: leases on work, so that concurrent runs never do the same thing twice
    def clock(self) -> float:
        """Now, in seconds since the epoch, as the ledger database sees it: the one clock that claims expire by,
        whatever the workers' own clocks say. A SQLite ledger is a local file: its clock is this machine's."""
        with self.engine.connect() as conn:
            return self._now(conn)

    def _now(self, conn: sa.Connection) -> float:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            query = "SELECT extract(epoch FROM clock_timestamp())"
        elif dialect in ("mysql", "mariadb"):
            # Not UNIX_TIMESTAMP(NOW(6)): NOW() is in the session's time zone, ambiguous in the hour a DST change
            # repeats; UTC_TIMESTAMP is not.
            query = "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1000000"
        else:
            return time.time()
        return float(conn.execute(sa.text(query)).scalar_one())

    def claim(self, kind: str, keys: Iterable[str], holder: str, ttl_s: float, **span: int) -> set[str]:
        """Take the claims on `keys` that are free, expired or already ours; return the keys now held.

        Rows are locked with SKIP LOCKED where the database has it (PostgreSQL, MariaDB), so a key another run is
        claiming at this moment is skipped rather than waited for; SQLite serialises writers by itself. Keys are
        taken in sorted order, so two runs inserting the same keys never deadlock. Expiry is by the database's
        clock (`clock`), read in the same transaction.
        """
        keys = sorted(set(keys))
        held: set[str] = set()
        for first in range(0, len(keys), IN_SLICE):
            part = keys[first:first + IN_SLICE]
            mine = claims.c.kind == kind, claims.c.key.in_(part)
            with self.engine.begin() as conn:
                now = self._now(conn)
                claimable = sa.or_(claims.c.holder == holder, claims.c.expires_at < now)
                conn.execute(self._insert_ignoring_known(claims),
                             [{"kind": kind, "key": k, "holder": holder, "expires_at": now + ttl_s, **span}
                              for k in part])
                free = [r.key for r in conn.execute(sa.select(claims.c.key).where(*mine, claimable)
                                                    .order_by(claims.c.key).with_for_update(skip_locked=True))]
                if free:
                    conn.execute(claims.update().where(claims.c.kind == kind, claims.c.key.in_(free), claimable)
                                 .values(holder=holder, expires_at=now + ttl_s, **span))
                held.update(r.key for r in conn.execute(sa.select(claims.c.key).where(*mine,
                                                                                       claims.c.holder == holder)))
        return held

    def renew_claims(self, holder: str, ttl_s: float) -> int:
        """Extend every claim `holder` still has, to `ttl_s` from now by the database's clock; the count tells it
        whether another run took one over."""
        with self.engine.begin() as conn:
            return conn.execute(claims.update().where(claims.c.holder == holder)
                                .values(expires_at=self._now(conn) + ttl_s)).rowcount

    def release_claims(self, holder: str, kind: str | None = None, keys: Iterable[str] | None = None) -> None:
        """Give up `holder`'s claims: those on `keys` of `kind`, or all of them."""
        with self.engine.begin() as conn:
            if keys is None:
                conn.execute(claims.delete().where(claims.c.holder == holder))
                return
            keys = list(keys)
            for first in range(0, len(keys), IN_SLICE):
                conn.execute(claims.delete().where(claims.c.holder == holder, claims.c.kind == kind,
                                                   claims.c.key.in_(keys[first:first + IN_SLICE])))

    def advance_frontier(self, holder: str, key: str, frontier_ms: int) -> None:
        """Say that every message of the interval `key` before `frontier_ms` is registered in the ledger."""
        with self.engine.begin() as conn:
            conn.execute(claims.update().where(claims.c.kind == "interval", claims.c.key == key,
                                               claims.c.holder == holder)
                         .values(frontier_ms=frontier_ms))

    def live_claims(self, kind: str, other_than: str | None = None, expired_within_s: float = 0.0) -> list[sa.Row]:
        """The claims of `kind` not yet expired (or expired less than `expired_within_s` ago), except `other_than`'s;
        expired by the database's clock (`clock`)."""
        query = sa.select(claims).where(claims.c.kind == kind)
        if other_than:
            query = query.where(claims.c.holder != other_than)
        with self.engine.connect() as conn:
            if math.isfinite(expired_within_s):  # MySQL takes no infinities
                query = query.where(claims.c.expires_at >= self._now(conn) - expired_within_s)
            return list(conn.execute(query))

    def earliest_unsent(self, conversation_ids: list[str], spans: list[tuple[int, int]]) -> dict[str, int]:
        """conversation_id -> msec of its earliest message not yet sent whose time lies in one of `spans`."""
        if not spans:
            return {}
        within = sa.or_(*(sa.and_(messages.c.msec >= start, messages.c.msec < end) for start, end in spans))
        found: dict[str, int] = {}
        with self.engine.connect() as conn:
            for first in range(0, len(conversation_ids), IN_SLICE):
                query = (sa.select(messages.c.conversation_id, sa.func.min(messages.c.msec))
                         .where(messages.c.conversation_id.in_(conversation_ids[first:first + IN_SLICE]),
                                messages.c.status.in_(UNSENT), within)
                         .group_by(messages.c.conversation_id))
                found.update({conversation: int(msec) for conversation, msec in conn.execute(query)})
        return found
