"""The canonical source schema: the columns every query returns, and the tables of data/schema.sql."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

SCHEMA_SQL = Path(__file__).resolve().parent.parent.parent / "data" / "schema.sql"

MESSAGE_COLUMNS = (
    "id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text", "media_url",
    "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone",
)
MESSAGE_OPTIONAL_COLUMNS = ("reply_to_id",)
"""Columns a messages query may return: `reply_to_id`, the source id of the message this one answers."""
ATTACHMENT_COLUMNS = (
    "message_id", "id", "type", "media_url", "file_name", "file_size", "duration", "lat", "lon", "contact_name",
    "contact_phone",
)
"""An attachment of a message (several per message, in attachment id order); `duration` in seconds."""
CONVERSATION_COLUMNS = ("id", "client_id", "created_at")
CLIENT_COLUMNS = ("id", "name", "phone", "email", "avatar_url", "profile_url")
MANAGER_COLUMNS = ("id", "name", "email")
CONVERSATION_OPTIONAL = ("source_external_id",)
"""Columns a conversations query may return: the amoCRM source the chat is tied to when it is created."""


def create_schema(engine: sa.Engine) -> None:
    """Create the canonical tables (data/schema.sql) in an empty database."""
    sql = "\n".join(line.split("--", 1)[0] for line in SCHEMA_SQL.read_text().splitlines())
    if engine.dialect.name in ("mysql", "mariadb"):
        # MySQL's TIMESTAMP converts through the session zone and ends in 2038; DATETIME keeps wall time as given.
        sql = sql.replace("TIMESTAMP", "DATETIME(6)")
    with engine.begin() as conn:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                conn.exec_driver_sql(statement)
