"""The source database: the queries that read one data interval, streamed in chunks, in the source's own time.

The canonical schema of data/schema.sql is read by `CANONICAL` with no configuration; a mapping file (TOML, one
SQL query per entity) adapts any other schema, as long as its queries return the canonical column names.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
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


@dataclass(frozen=True)
class SourceQueries:
    """One SQL query per entity, each returning the canonical column names.

    `messages` binds `:start` and `:end` (the interval, as wall time in the source's zone); `edits`, if given,
    the same bounds, for messages created before the interval and changed in it. Conversations and clients are
    looked up by id for each chunk, so their queries need no filter (they may bind `:start`/`:end` too).
    """

    messages: str
    conversations: str
    clients: str
    managers: str
    edits: str | None = None


CANONICAL = SourceQueries(
    messages=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at >= :start AND created_at < :end",
    conversations=f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM conversations",
    clients=f"SELECT {', '.join(CLIENT_COLUMNS)} FROM clients",
    managers=f"SELECT {', '.join(MANAGER_COLUMNS)} FROM managers",
    edits=(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages "
           "WHERE updated_at >= :start AND updated_at < :end AND created_at < :start"),
)
ENTITIES = {"messages": MESSAGE_COLUMNS, "conversations": CONVERSATION_COLUMNS, "clients": CLIENT_COLUMNS,
            "managers": MANAGER_COLUMNS, "edits": MESSAGE_COLUMNS}
REQUIRED = ("messages", "conversations", "clients", "managers")


@dataclass
class SourceFrames:
    """One chunk of messages with the conversations, clients and managers they refer to, canonical columns."""

    messages: pd.DataFrame
    conversations: pd.DataFrame
    clients: pd.DataFrame
    managers: pd.DataFrame


def load_queries(mapping: Path | None) -> SourceQueries:
    """The canonical queries, or those of a mapping file: TOML with one SQL query per entity under [queries]."""
    if mapping is None:
        return CANONICAL
    try:
        data = tomllib.loads(Path(mapping).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read the mapping file {mapping}: {exc}") from None
    queries = data.get("queries", data)
    missing = [k for k in REQUIRED if not queries.get(k)]
    if missing:
        raise ConfigurationError(f"the mapping file {mapping} has no query for {', '.join(missing)}")
    unknown = sorted(set(queries) - set(ENTITIES))
    if unknown:
        raise ConfigurationError(f"the mapping file {mapping} has unknown entries {', '.join(unknown)}; "
                                 f"expected some of {', '.join(ENTITIES)}")
    return SourceQueries(**{k: queries[k] for k in ENTITIES if queries.get(k)})


def bound(moment: datetime, dialect: str, zone: ZoneInfo) -> datetime | str:
    """An aware interval bound as the source stores naive timestamps: wall time in `zone`.

    SQLite keeps timestamps as text, so there the bound is text of the form `YYYY-MM-DD HH:MM:SS`, which compares
    correctly with stored text with or without fractions of a second.
    """
    naive = moment.astimezone(zone).replace(tzinfo=None)
    if dialect == "sqlite":
        return naive.isoformat(sep=" ", timespec="seconds" if not naive.microsecond else "microseconds")
    return naive


def source_engine(url: str) -> sa.Engine:
    """An engine for the source; SQLite text that is not valid UTF-8 is read, not fatal (transform rejects it)."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _tolerant_text(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    return engine


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


def _bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if f":{k}" in sql}


def _check_columns(columns: list[str], wanted: tuple[str, ...], entity: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ConfigurationError(
            f"the {entity} query returns no column {', '.join(missing)} (it returns {', '.join(columns)}); "
            "fix the query in the mapping file (AMOJO_ETL_MAPPING) or the source schema"
        )


def _frame(rows: list, columns: list[str], wanted: tuple[str, ...]) -> pd.DataFrame:
    """Rows (tuples, or row objects) -> a frame of the wanted columns, every column as objects."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in wanted})
    if type(rows[0]) is not tuple:
        rows = [tuple(row) for row in rows]
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame[list(wanted)]


def _unreadable(url: str | sa.URL, exc: Exception) -> ConfigurationError:
    shown = sa.make_url(url).render_as_string(hide_password=True)
    return ConfigurationError(f"cannot read the source database {shown}: {getattr(exc, 'orig', exc)}. "
                              "Check AMOJO_ETL_SOURCE_URL and AMOJO_ETL_MAPPING.")


class _DriverCursor:
    """A streaming cursor of the database driver itself: plain tuples, no per-row work between driver and pandas.

    psycopg streams through a named (server-side) cursor, PyMySQL through an unbuffered one, sqlite3 always does.
    Another driver streams through SQLAlchemy's own result, at the cost of its row objects.
    """

    def __init__(self, engine: sa.Engine, sql: str, params: dict[str, Any], chunk_size: int) -> None:
        compiled = sa.text(sql).compile(dialect=engine.dialect)
        driver = engine.dialect.driver
        self._raw = engine.raw_connection()
        self._result: sa.CursorResult | None = None
        if driver in ("psycopg", "pymysql", "pysqlite"):
            connection = self._raw.driver_connection
            if driver == "psycopg":
                self._cursor = connection.cursor(name="amojo_etl_source")
                self._cursor.itersize = chunk_size
            elif driver == "pymysql":
                import pymysql.cursors

                self._cursor = connection.cursor(pymysql.cursors.SSCursor)
            else:
                self._cursor = connection.cursor()
            bound = compiled.construct_params(params)
            args = [bound[name] for name in compiled.positiontup] if compiled.positional else bound
            self._cursor.execute(compiled.string, args)
            self.columns = [d[0] for d in self._cursor.description]
        else:
            self._raw.close()
            self._raw = None
            self._connection = engine.connect().execution_options(stream_results=True, yield_per=chunk_size)
            self._result = self._connection.execute(sa.text(sql), params)
            self.columns = list(self._result.keys())

    def fetch(self, size: int) -> list[tuple]:
        if self._result is not None:
            return [tuple(row) for row in self._result.fetchmany(size)]
        return self._cursor.fetchmany(size)

    def close(self) -> None:
        if self._result is not None:
            self._result.close()
            self._connection.close()
        else:
            self._cursor.close()
            self._raw.close()


class SourceStream:
    """The messages of one interval in chunks, through one streaming cursor, ordered by time.

    Each chunk comes with the conversations and clients its messages refer to, looked up by id on a second
    connection (a streaming MySQL cursor allows no other query on its own). Memory is set by the chunk size, not
    by the interval. Messages edited in the interval but created before it follow in a second pass.
    """

    LOOKUP_SLICE = 2000

    def __init__(self, url: str, queries: SourceQueries, start: datetime, end: datetime, zone: ZoneInfo,
                 chunk_size: int = 50_000) -> None:
        self.queries = queries
        self.chunk_size = chunk_size
        self.engine = source_engine(url)
        self.params = {"start": bound(start, self.engine.dialect.name, zone),
                       "end": bound(end, self.engine.dialect.name, zone)}
        self.chunks = 0
        self._carried = {"conversations": _frame([], [], CONVERSATION_COLUMNS),
                         "clients": _frame([], [], CLIENT_COLUMNS)}
        self._passes = [q for q in (queries.messages, queries.edits) if q]
        self._cursor: _DriverCursor | None = None
        try:
            self._lookup = self.engine.connect()
            self.managers = self._select(queries.managers, MANAGER_COLUMNS, "managers")
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise _unreadable(self.engine.url, exc) from None

    def __enter__(self) -> SourceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        """How many message rows the interval holds (both passes), for progress."""
        total = 0
        try:
            for sql in (q for q in (self.queries.messages, self.queries.edits) if q):
                total += self._lookup.execute(sa.text(f"SELECT COUNT(*) FROM ({sql}) q"),
                                              _bind(sql, self.params)).scalar() or 0
        except sa.exc.SQLAlchemyError as exc:
            raise _unreadable(self.engine.url, exc) from None
        return total

    def repeated_ids(self) -> set[str]:
        """Message ids that occur more than once in the interval, found by the database, which sees all of it."""
        repeated: set[str] = set()
        try:
            for sql in (q for q in (self.queries.messages, self.queries.edits) if q):
                result = self._lookup.execute(
                    sa.text(f"SELECT q.id FROM ({sql}) q GROUP BY q.id HAVING COUNT(*) > 1"), _bind(sql, self.params))
                repeated.update(str(row[0]) for row in result if row[0] is not None)
        except sa.exc.SQLAlchemyError as exc:
            raise _unreadable(self.engine.url, exc) from None
        return repeated

    def _select(self, sql: str, wanted: tuple[str, ...], entity: str, ids: list[str] | None = None) -> pd.DataFrame:
        statement = sa.text(f"SELECT * FROM ({sql}) q" + (" WHERE q.id IN :ids" if ids is not None else ""))
        params = _bind(sql, self.params)
        if ids is not None:
            statement = statement.bindparams(sa.bindparam("ids", expanding=True))
            params["ids"] = ids
        result = self._lookup.execute(statement, params)
        columns = list(result.keys())
        _check_columns(columns, wanted, entity)
        return _frame(result.fetchall(), columns, wanted)

    def _by_ids(self, sql: str, ids: list[str], wanted: tuple[str, ...], entity: str) -> pd.DataFrame:
        """Rows of `entity` with these ids: those the previous chunk had are reused, the rest looked up.

        Chunks follow each other in time, so most conversations (and their clients) of one chunk were in the
        one before; carrying one chunk's worth keeps memory bounded and the lookups few.
        """
        carried = self._carried[entity]
        carried = carried[carried["id"].astype(str).isin(ids)]
        missing = sorted(set(ids) - set(carried["id"].astype(str)))
        frames = [carried] + [self._select(sql, wanted, entity, missing[i:i + self.LOOKUP_SLICE])
                              for i in range(0, len(missing), self.LOOKUP_SLICE)]
        found = pd.concat(frames, ignore_index=True)
        self._carried[entity] = found
        return found

    def _next_rows(self) -> list[tuple]:
        while True:
            if self._cursor is None:
                if not self._passes:
                    return []
                sql = self._passes.pop(0)
                self._cursor = _DriverCursor(self.engine, f"SELECT * FROM ({sql}) q ORDER BY q.created_at, q.id",
                                             _bind(sql, self.params), self.chunk_size)
                _check_columns(self._cursor.columns, MESSAGE_COLUMNS, "messages")
            rows = self._cursor.fetch(self.chunk_size)
            if rows:
                return rows
            self._cursor.close()
            self._cursor = None

    def next_chunk(self) -> SourceFrames | None:
        """The next chunk of messages with what they refer to; None when the interval is exhausted."""
        try:
            rows = self._next_rows()
            if not rows:
                return None
            messages = _frame(rows, self._cursor.columns, MESSAGE_COLUMNS)
            conversation_ids = [str(v) for v in messages["conversation_id"].dropna().unique()]
            conversations = self._by_ids(self.queries.conversations, conversation_ids, CONVERSATION_COLUMNS,
                                         "conversations")
            client_ids = [str(v) for v in conversations["client_id"].dropna().unique()]
            clients = self._by_ids(self.queries.clients, client_ids, CLIENT_COLUMNS, "clients")
        except sa.exc.SQLAlchemyError as exc:
            raise _unreadable(self.engine.url, exc) from None
        self.chunks += 1
        return SourceFrames(messages, conversations, clients, self.managers)

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
        self._lookup.close()
        self.engine.dispose()


def open_source(url: str, mapping: Path | None, start: datetime, end: datetime, zone: ZoneInfo,
                chunk_size: int = 50_000) -> SourceStream:
    """The interval's stream of chunks from the source named by the settings."""
    return SourceStream(url, load_queries(mapping), start, end, zone, chunk_size)


def check_source(url: str, mapping: Path | None) -> None:
    """Fail before any request if the source cannot be read or a query lacks a column."""
    queries = load_queries(mapping)
    engine = source_engine(url)
    utc = ZoneInfo("UTC")
    moment = bound(datetime(2000, 1, 1, tzinfo=utc), engine.dialect.name, utc)
    try:
        with engine.connect() as conn:
            for entity, wanted in ENTITIES.items():
                sql = getattr(queries, entity)
                if sql:
                    result = conn.execute(sa.text(f"SELECT * FROM ({sql}) q WHERE 1 = 0"),
                                          _bind(sql, {"start": moment, "end": moment}))
                    _check_columns(list(result.keys()), wanted, entity)
    except sa.exc.SQLAlchemyError as exc:
        raise _unreadable(url, exc) from None
    finally:
        engine.dispose()
