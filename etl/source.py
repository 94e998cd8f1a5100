"""The source database: its connection, the queries that read one data interval, and time bounds as it stores them.

The canonical schema of data/schema.sql is read by `CANONICAL` with no configuration; a mapping file (issue 4)
supplies other queries returning the same column names.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from .settings import ConfigurationError

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "data" / "schema.sql"

MESSAGE_COLUMNS = (
    "id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text", "media_url",
    "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone",
)
CONVERSATION_COLUMNS = ("id", "client_id", "created_at")
CLIENT_COLUMNS = ("id", "name", "phone", "email", "avatar_url", "profile_url")
MANAGER_COLUMNS = ("id", "name", "email")

_IN_INTERVAL = "SELECT conversation_id FROM messages WHERE created_at >= :start AND created_at < :end"


@dataclass(frozen=True)
class SourceQueries:
    """One SQL query per entity; `:start` and `:end` bound to the interval in the source's own time zone."""

    messages: str
    conversations: str
    clients: str
    managers: str


CANONICAL = SourceQueries(
    messages=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at >= :start AND created_at < :end",
    conversations=f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM conversations WHERE id IN ({_IN_INTERVAL})",
    clients=(
        f"SELECT {', '.join(CLIENT_COLUMNS)} FROM clients WHERE id IN "
        f"(SELECT client_id FROM conversations WHERE id IN ({_IN_INTERVAL}))"
    ),
    managers=f"SELECT {', '.join(MANAGER_COLUMNS)} FROM managers",
)


def load_queries(mapping: Path | None) -> SourceQueries:
    """The canonical queries, or those of a mapping file: TOML with one SQL query per entity."""
    if mapping is None:
        return CANONICAL
    try:
        data = tomllib.loads(Path(mapping).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read the mapping file {mapping}: {exc}") from None
    queries = data.get("queries", data)
    missing = [k for k in ("messages", "conversations", "clients", "managers") if not queries.get(k)]
    if missing:
        raise ConfigurationError(f"the mapping file {mapping} has no query for {', '.join(missing)}")
    return SourceQueries(**{k: queries[k] for k in ("messages", "conversations", "clients", "managers")})


@dataclass
class SourceFrames:
    """What one interval reads from the source, as dataframes with the canonical column names."""

    messages: pd.DataFrame
    conversations: pd.DataFrame
    clients: pd.DataFrame
    managers: pd.DataFrame


def bound(moment: datetime, engine: sa.Engine, zone: ZoneInfo) -> datetime | str:
    """An aware interval bound as the source stores naive timestamps: wall time in `zone`.

    SQLite keeps timestamps as text, so the bound is text in the same `YYYY-MM-DD HH:MM:SS` form for the
    comparison to be a correct string comparison.
    """
    naive = moment.astimezone(zone).replace(tzinfo=None)
    if engine.dialect.name == "sqlite":
        return naive.isoformat(sep=" ", timespec="seconds" if not naive.microsecond else "microseconds")
    return naive


def create_schema(engine: sa.Engine) -> None:
    """Create the canonical tables (data/schema.sql) in an empty database."""
    sql = _strip_comments(SCHEMA_SQL.read_text())
    if engine.dialect.name in ("mysql", "mariadb"):
        # MySQL's TIMESTAMP converts through the session zone and ends in 2038; DATETIME keeps wall time as given.
        sql = sql.replace("TIMESTAMP", "DATETIME(6)")
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def read_interval(engine: sa.Engine, queries: SourceQueries, start: datetime, end: datetime,
                  zone: ZoneInfo) -> SourceFrames:
    """Read the messages of [start, end) and the conversations, clients and managers they refer to."""
    params = {"start": bound(start, engine, zone), "end": bound(end, engine, zone)}
    with engine.connect() as conn:
        def frame(sql: str, columns: tuple[str, ...]) -> pd.DataFrame:
            stmt = sa.text(sql)
            used = {k: v for k, v in params.items() if f":{k}" in sql}
            df = pd.read_sql_query(stmt, conn, params=used)
            missing = [c for c in columns if c not in df.columns]
            if missing:
                raise ConfigurationError(
                    f"the source query returns no column {', '.join(missing)} (it returns "
                    f"{', '.join(map(str, df.columns))}); fix the query or the mapping file: {sql[:160]}"
                )
            return df[list(columns)]

        return SourceFrames(
            messages=frame(queries.messages, MESSAGE_COLUMNS),
            conversations=frame(queries.conversations, CONVERSATION_COLUMNS),
            clients=frame(queries.clients, CLIENT_COLUMNS),
            managers=frame(queries.managers, MANAGER_COLUMNS),
        )



def read_source(url: str, mapping: Path | None, start: datetime, end: datetime, zone: ZoneInfo) -> SourceFrames:
    """Open the source, read one interval and close it; a source that cannot be read says what to fix."""
    engine = sa.create_engine(url)
    try:
        return read_interval(engine, load_queries(mapping), start, end, zone)
    except sa.exc.SQLAlchemyError as exc:
        raise ConfigurationError(
            f"cannot read the source database {engine.url.render_as_string(hide_password=True)}: "
            f"{getattr(exc, 'orig', exc)}. Check AMOJO_ETL_SOURCE_URL and AMOJO_ETL_MAPPING."
        ) from None
    finally:
        engine.dispose()


def check_source(url: str, mapping: Path | None) -> None:
    """Fail before any request if the source cannot be read or a query lacks a column (reads an empty interval)."""
    moment = datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))
    read_source(url, mapping, moment, moment, ZoneInfo("UTC"))
