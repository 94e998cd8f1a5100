"""The ledger's tables, and the steps that bring a ledger written by an older amojo-etl up to this version."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import sqlalchemy as sa

SCHEMA_VERSION = 7
KEY_LENGTH = 512
"""Longest id the ledger keeps (msgid, conversation and client ids, reject keys): what real sources hold, and
within what MySQL can index (3072 bytes of utf8mb4). Longer source ids are rejected before they get here."""



def stored_key(key: str) -> str:
    """`key` as a key column holds it: as it is when it fits, else its first part and a digest of the whole. Keys the
    ledger composes (`client:` and a client id of the longest, a person's `email:` and an email of any length) can
    be longer than any source id, and PostgreSQL and MariaDB refuse a value longer than the column."""
    if len(key) <= KEY_LENGTH:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return f"{key[:KEY_LENGTH - 41]}~{digest}"


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

# The contact each person resolved to, by what amoCRM's search finds a person by: `phone:<last ten digits>` or
# `email:<address, lowercased>`, so that clients sharing them get one contact, in one batch, run, or several runs at
# once (tasks/load/contacts.py). Added in version 7.
persons = sa.Table(
    "persons", metadata,
    sa.Column("person_key", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("contact_id", sa.BigInteger, nullable=False, index=True),
)


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
    7: lambda conn: persons.create(conn, checkfirst=True),
}
"""Schema version -> the step that brings a ledger of the version before up to it."""
