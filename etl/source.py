"""The source database: the queries that read one data interval, streamed in chunks, in the source's own time.

The canonical schema of data/schema.sql is read by `CANONICAL` with no configuration; a mapping file (TOML, one
SQL query per entity) adapts any other schema, as long as its queries return the canonical column names.
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa

from .settings import SAMPLE_DB, ConfigurationError

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

    `messages` binds `:start` and `:end`: wall times in the source's zone, a day or more wider than the interval
    on each side (the pipeline keeps the rows whose created_at, read, lies in the interval); `edits`, if given,
    the same bounds on the edit time (`updated_at`): the pipeline keeps the rows edited in the interval and
    created before it; `unplaced`,
    if given, binds nothing and returns the messages no interval can select (created_at NULL or not a time).
    Conversations and clients are looked up by id for each chunk, so their queries need no filter (they may
    bind `:start`/`:end` too).
    """

    messages: str
    conversations: str
    clients: str
    managers: str
    edits: str | None = None
    unplaced: str | None = None


CANONICAL = SourceQueries(
    messages=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at >= :start AND created_at < :end",
    conversations=f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM conversations",
    clients=f"SELECT {', '.join(CLIENT_COLUMNS)} FROM clients",
    managers=f"SELECT {', '.join(MANAGER_COLUMNS)} FROM managers",
    edits=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE updated_at >= :start AND updated_at < :end",
)
ENTITIES = {"messages": MESSAGE_COLUMNS, "conversations": CONVERSATION_COLUMNS, "clients": CLIENT_COLUMNS,
            "managers": MANAGER_COLUMNS, "edits": MESSAGE_COLUMNS, "unplaced": MESSAGE_COLUMNS}
UNPLACED = {  # dialect -> the canonical messages no interval can send: no time, or one amojo cannot take
    "sqlite": f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at IS NULL "
              "OR typeof(created_at) <> 'text' OR created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
              "OR created_at < '1970-01-01'",
    "other": f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at IS NULL "
             "OR created_at < '1970-01-01'",
}
REQUIRED = ("messages", "conversations", "clients", "managers")


@dataclass(frozen=True)
class Window:
    """Which rows of a chunk belong to the interval: those whose created_at, once read, is in [start_ms, end_ms).

    The database compares timestamps as it stores them (text on SQLite, where `2026-03-29T05:00` sorts after
    `2026-03-29 21:00`; mixed offsets; a session zone that is not the source's), so it is asked for a wider
    span (`candidate_bounds`) and the parsed instant decides. A created_at that cannot be read belongs to the
    interval whose bounds, as stored (`start`, `end`), enclose its raw value: the one the database would pick.
    """

    start_ms: int
    end_ms: int
    start: datetime | str
    end: datetime | str

    def holds(self, msec: pd.Series) -> pd.Series:
        """Where these unix milliseconds lie in [start_ms, end_ms); False where NA."""
        return ((msec >= self.start_ms) & (msec < self.end_ms)).fillna(False).astype(bool)


@dataclass
class SourceFrames:
    """One chunk of messages with the conversations, clients and managers they refer to, canonical columns.

    `messages` are the interval's only, with `created_ms` (created_at read as unix milliseconds, NA where it
    cannot be read); `rows_read` counts the rows the query returned, those of the neighbouring days included.
    """

    messages: pd.DataFrame
    conversations: pd.DataFrame
    clients: pd.DataFrame
    managers: pd.DataFrame
    rows_read: int = 0


def load_queries(mapping: Path | None) -> SourceQueries:
    """The canonical queries, or those of a mapping file: TOML with one SQL query per entity under [queries]."""
    if mapping is None:
        return CANONICAL
    try:
        data = tomllib.loads(Path(mapping).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read the mapping file {mapping}: {exc}") from None
    queries = data.get("queries", data)
    if not isinstance(queries, dict):
        raise ConfigurationError(f"the mapping file {mapping} (AMOJO_ETL_MAPPING): queries must be a table of SQL "
                                 f"queries ([queries] then messages = \"SELECT ...\"), not {_toml_type(queries)}")
    wrong = [f"{k} is {_toml_type(v)}" for k, v in queries.items() if k in ENTITIES and not isinstance(v, str)]
    if wrong:
        raise ConfigurationError(f"the mapping file {mapping} (AMOJO_ETL_MAPPING): each query is SQL text in quotes "
                                 f"(messages = \"SELECT ...\"), but {', '.join(wrong)}")
    missing = [k for k in REQUIRED if not queries.get(k)]
    if missing:
        raise ConfigurationError(f"the mapping file {mapping} has no query for {', '.join(missing)}")
    unknown = sorted(set(queries) - set(ENTITIES))
    if unknown:
        raise ConfigurationError(f"the mapping file {mapping} has unknown entries {', '.join(unknown)}; "
                                 f"expected some of {', '.join(ENTITIES)}")
    return SourceQueries(**{k: queries[k] for k in ENTITIES if queries.get(k)})


def _toml_type(value: Any) -> str:
    """What a TOML value is, in the file's words (never the value: it is shown in error messages)."""
    names = {str: "text", bool: "a boolean", int: "a number", float: "a number", dict: "a table", list: "an array"}
    return names.get(type(value), "a date")


def bound(moment: datetime, dialect: str, zone: ZoneInfo) -> datetime | str:
    """An aware interval bound as the source stores naive timestamps: wall time in `zone`.

    SQLite keeps timestamps as text, so there the bound is text of the form `YYYY-MM-DD HH:MM:SS`, which compares
    correctly with stored text with or without fractions of a second.
    """
    return _naive_bound(moment.astimezone(zone), dialect)


CANDIDATE_MARGIN = timedelta(days=1)
"""How much wider than the interval the messages query reads, on each side, in whole days of the source zone:
enough for text timestamps with a `T`, and for offsets up to a day away from the source zone."""


def candidate_bounds(start: datetime, end: datetime, dialect: str, zone: ZoneInfo) -> dict[str, datetime | str]:
    """The messages query's :start and :end: the interval widened to whole days plus `CANDIDATE_MARGIN`.

    A bound at a midnight also takes in every SQLite text of the day before it, whatever its separator.
    """
    first = datetime.combine(start.astimezone(zone).date(), time(), zone)
    local_end = end.astimezone(zone)
    last = datetime.combine(local_end.date(), time(), zone)
    if last < local_end:
        last += timedelta(days=1)
    try:
        first -= CANDIDATE_MARGIN
    except OverflowError:
        first = datetime.min.replace(tzinfo=zone)
    try:
        last += CANDIDATE_MARGIN
    except OverflowError:
        last = datetime.max.replace(tzinfo=zone)
    return {"start": _naive_bound(first, dialect), "end": _naive_bound(last, dialect)}


def _naive_bound(local: datetime, dialect: str) -> datetime | str:
    naive = local.replace(tzinfo=None)
    if dialect == "sqlite":
        return naive.isoformat(sep=" ", timespec="seconds" if not naive.microsecond else "microseconds")
    return naive


def source_engine(url: str, zone: ZoneInfo | None = None) -> sa.Engine:
    """An engine for the source; SQLite text that is not valid UTF-8 is read, not fatal (transform rejects it).

    On SQLite, `amojo_instant(created_at)` gives the instant a stored text means (naive ones in `zone`), so that
    rows sort in time order whatever their separator or offset.
    """
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        instant = _instant_in(zone or ZoneInfo("UTC"))

        @sa.event.listens_for(engine, "connect")
        def _tolerant_text(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
            dbapi_connection.create_function("amojo_instant", 1, instant, deterministic=True)
    return engine


def _instant_in(zone: ZoneInfo) -> Any:
    def instant(value: Any) -> float | None:
        if not isinstance(value, str):
            return None
        try:
            moment = datetime.fromisoformat(value.strip())
            return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).timestamp()
        except (ValueError, OverflowError):
            return None

    return instant


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


_OFFSET = re.compile(r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$")
"""A time of day followed by a UTC offset or `Z`: the text says its own zone."""


def to_utc_ms(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Source timestamps as unix milliseconds (NA where unreadable, or outside what pandas holds: 1677..2262).

    Naive ones (text or datetime objects) are wall time in the source zone; those that carry an offset (text
    ending in `+05:00` or `Z`, aware datetimes) are read with it, so one column may mix both. ISO 8601 text only,
    with a space or a `T`, with or without fractions: a day-first or month-first date is not guessed.
    A wall time that does not exist (the hour skipped by DST) is moved forward; one that exists twice is read as
    the first of the two: the source cannot say which it meant, and either keeps the message's place in order.
    """
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is not None else _localize(values, zone)
        return ((parsed.dt.tz_convert("UTC") - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    fast = _read_uniform(values, zone)
    if fast is not None:
        return ((fast - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    values = values.astype(object)
    result = pd.Series(pd.NA, index=values.index, dtype="Int64")
    is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    aware = np.fromiter((getattr(v, "tzinfo", None) is not None for v in values), dtype=bool, count=len(values))
    if is_text.any():
        text = values[is_text].str.strip()
        aware[is_text] = text.str.contains(_OFFSET).fillna(False).to_numpy(dtype=bool)
        values = values.copy()
        values[is_text] = text
    other = ~is_text & ~aware & values.notna().to_numpy()
    if other.any():  # datetime, date and pandas objects are read as they are; anything else is text to parse
        odd = values[other]
        readable = np.fromiter((isinstance(v, datetime | date | pd.Timestamp) for v in odd), dtype=bool,
                               count=len(odd))
        values = values.copy()
        values[odd.index[~readable]] = odd[~readable].map(str)
    for mask, read in ((aware, lambda v: _parse_timestamps(v, utc=True)),
                       (~aware & values.notna().to_numpy(), lambda v: _read_naive(v, zone))):
        if mask.any():
            parsed = read(values[mask])
            result[mask] = ((parsed - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")
    return result


def _read_uniform(values: pd.Series, zone: ZoneInfo) -> pd.Series | None:
    """The common case in one vectorised read: all text or all datetimes, naive alike or with one offset, every
    value read. None when the column mixes kinds or offsets, or a value needs a closer look (spaces, odd ones)."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "datetime", "date"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
        if not pd.api.types.is_datetime64_any_dtype(parsed) or parsed.isna().sum() != values.isna().sum():
            return None
        return (parsed if parsed.dt.tz is not None else _localize(parsed, zone)).dt.tz_convert("UTC")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return None


def _parse_timestamps(values: pd.Series, utc: bool) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(values, errors="coerce", format="ISO8601", utc=utc)
        except (ValueError, TypeError, OverflowError):  # one odd value spoils the vectorised read: go one by one
            return pd.Series([_parse_one(v, utc) for v in values], index=values.index,
                             dtype="datetime64[ns, UTC]" if utc else "datetime64[ns]")


def _parse_one(value: Any, utc: bool) -> pd.Timestamp:
    try:
        parsed = pd.to_datetime(value, errors="coerce", format="ISO8601", utc=utc)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if parsed is pd.NaT or utc or parsed.tzinfo is None:
        return parsed
    return pd.NaT  # an offset where none was expected: not this group's


def _read_naive(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    parsed = _parse_timestamps(values, utc=False)
    try:
        return _localize(parsed, zone).dt.tz_convert("UTC")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.Series([_localize_one(v, zone) for v in parsed], index=parsed.index, dtype="datetime64[ns, UTC]")


def _localize(parsed: pd.Series, zone: ZoneInfo) -> pd.Series:
    return parsed.dt.tz_localize(zone, ambiguous=np.ones(len(parsed), dtype=bool), nonexistent="shift_forward")


def _localize_one(value: pd.Timestamp, zone: ZoneInfo) -> pd.Timestamp:
    try:
        return value.tz_localize(zone, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.NaT


def _in_window(msec: pd.Series, created_at: pd.Series, window: Window) -> pd.Series:
    """Rows of the interval: a readable created_at inside it, or an unreadable one the bounds enclose as stored."""
    inside = window.holds(msec)
    unreadable = msec.isna()
    if unreadable.any():
        def enclosed(value: Any) -> bool:
            try:
                return bool(window.start <= value < window.end)
            except TypeError:  # not comparable with the bounds (NULL, a number): the database chose it, keep it
                return True

        inside[unreadable] = [enclosed(v) for v in created_at[unreadable]]
    return inside


COMPOUND_TYPES = (list, tuple, dict, set, frozenset, np.ndarray)
"""Values a driver may return for JSON or array columns (PostgreSQL json, text[]): kept as their JSON text."""


def compound_text(value: Any) -> str:
    """A JSON or array value as its JSON text."""
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, ensure_ascii=False, default=str)


def as_text(value: Any) -> str | None:
    """A source value as text, None for missing: bytes (a BLOB where text belongs) decoded as UTF-8, undecodable
    bytes kept as lone surrogates for the checks to reject; `42`, not `42.0`, when a float holds an integer; a
    JSON or array value as its JSON text."""
    if isinstance(value, COMPOUND_TYPES):
        return compound_text(value)
    if value is None or (not isinstance(value, str | bytes) and pd.isna(value)):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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


def _unreadable(url: str | sa.URL, exc: Exception, query: str | None = None) -> ConfigurationError:
    """The source could not be read, or a query failed on its rows (`query`): name the setting, hide the password."""
    shown = sa.make_url(url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip()
    if query is not None:
        return ConfigurationError(f"the {query} query failed on the rows of the source database {shown}: {reason}. "
                                  "Fix the query in the mapping file (AMOJO_ETL_MAPPING) or the rows it reads.")
    return ConfigurationError(f"cannot read the source database {shown}: {reason}. "
                              "Check AMOJO_ETL_SOURCE_URL and AMOJO_ETL_MAPPING.")


def driver_errors(engine: sa.Engine) -> tuple[type[Exception], ...]:
    """What reading `engine` raises when the database refuses: SQLAlchemy's errors, and the driver's own (a raw
    driver cursor raises those unwrapped)."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None)
    error = getattr(dbapi, "Error", None)
    return (sa.exc.SQLAlchemyError, error) if isinstance(error, type) else (sa.exc.SQLAlchemyError,)


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
    by the interval. Messages edited in the interval but created before it follow in a second pass. Both passes
    read a wider span than the interval (`candidate_bounds`) and keep its rows by their parsed times.
    """

    LOOKUP_SLICE = 2000

    def __init__(self, url: str, queries: SourceQueries, start: datetime, end: datetime, zone: ZoneInfo,
                 chunk_size: int = 50_000) -> None:
        self.queries = queries
        self.zone = zone
        self.chunk_size = chunk_size
        self.engine = source_engine(url, zone)
        dialect = self.engine.dialect.name
        self._time_order = "q.created_at, q.id"
        self.params = {"start": bound(start, dialect, zone), "end": bound(end, dialect, zone)}
        self.candidate_params = candidate_bounds(start, end, dialect, zone)
        self.window = Window(int(start.timestamp() * 1000), int(end.timestamp() * 1000),
                             self.params["start"], self.params["end"])
        self.chunks = 0
        self._carried = {"conversations": _frame([], [], CONVERSATION_COLUMNS),
                         "clients": _frame([], [], CLIENT_COLUMNS)}
        self._passes = [(q, p, q is queries.edits) for q, p in self._queries_and_bounds()]
        self._cursor: _DriverCursor | None = None
        self._edits_pass = False
        try:
            self._lookup = self.engine.connect()
            if dialect == "sqlite":
                self._time_order = self._sqlite_time_order()
            self.managers = self._select(queries.managers, MANAGER_COLUMNS, "managers")
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise _unreadable(self.engine.url, exc) from None

    def __enter__(self) -> SourceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sqlite_time_order(self) -> str:
        """How SQLite sorts the span in time order. Its text compares as text: a `T` separator sorts after a space,
        an offset or `Z` is just more text. julianday() reads them all, at no cost over the column, but takes naive
        text for UTC; so for another source zone, a span whose text is not uniform sorts by `amojo_instant`, the
        parsed instant in that zone (a Python call per row before the first arrives: 10 days of 1M messages, 3 s
        instead of 0.5 s). Finding out costs a scan of the span (1M rows: 1.9 s)."""
        if self.zone.key == "UTC":
            return "julianday(q.created_at), q.id"
        odd = ("typeof(q.created_at) = 'text' AND (q.created_at GLOB '*T*' OR q.created_at GLOB '*[Zz]' "
               "OR q.created_at GLOB '*[0-9]:[0-9][0-9]*[+-][0-9]*' OR q.created_at GLOB ' *')")
        for sql, params in self._queries_and_bounds():
            found = self._lookup.execute(sa.text(f"SELECT 1 FROM ({sql}) q WHERE {odd} LIMIT 1"), _bind(sql, params))
            if found.first() is not None:
                return "amojo_instant(q.created_at), q.id"
        return "q.created_at, q.id"

    def _queries_and_bounds(self) -> list[tuple[str, dict[str, Any]]]:
        """The passes over messages, both over the candidate span: new messages, then edits."""
        return [(q, self.candidate_params) for q in (self.queries.messages, self.queries.edits) if q]

    def count(self) -> int:
        """How many message rows the passes read (the candidate span, both passes), for progress."""
        total = 0
        try:
            for sql, params in self._queries_and_bounds():
                total += self._lookup.execute(sa.text(f"SELECT COUNT(*) FROM ({sql}) q"),
                                              _bind(sql, params)).scalar() or 0
        except sa.exc.SQLAlchemyError as exc:
            raise _unreadable(self.engine.url, exc) from None
        return total

    def repeated_ids(self) -> set[str]:
        """Message ids that occur more than once in the interval, found by the database, which sees all of it."""
        repeated: set[str] = set()
        try:
            for sql, params in self._queries_and_bounds():
                result = self._lookup.execute(
                    sa.text(f"SELECT q.id FROM ({sql}) q GROUP BY q.id HAVING COUNT(*) > 1"), _bind(sql, params))
                repeated.update(as_text(row[0]) for row in result if row[0] is not None)
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
                sql, params, self._edits_pass = self._passes.pop(0)
                self._cursor = _DriverCursor(self.engine, f"SELECT * FROM ({sql}) q ORDER BY {self._time_order}",
                                             _bind(sql, params), self.chunk_size)
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
        except driver_errors(self.engine) as exc:
            raise _unreadable(self.engine.url, exc, "edits" if self._edits_pass else "messages") from None
        if not rows:
            return None
        try:
            messages = _frame(rows, self._cursor.columns, MESSAGE_COLUMNS)
            created_ms = to_utc_ms(messages["created_at"], self.zone)
            if self._edits_pass:  # edited in the interval, created before it: the first pass has the others
                edited_ms = to_utc_ms(messages["updated_at"], self.zone)
                mine = self.window.holds(edited_ms) & (created_ms < self.window.start_ms).fillna(False).astype(bool)
            else:
                mine = _in_window(created_ms, messages["created_at"], self.window)
            messages, created_ms = messages[mine].reset_index(drop=True), created_ms[mine].reset_index(drop=True)
            messages["created_ms"] = created_ms
            conversation_ids = [str(v) for v in messages["conversation_id"].dropna().unique()]
            conversations = self._by_ids(self.queries.conversations, conversation_ids, CONVERSATION_COLUMNS,
                                         "conversations")
            client_ids = [str(v) for v in conversations["client_id"].dropna().unique()]
            clients = self._by_ids(self.queries.clients, client_ids, CLIENT_COLUMNS, "clients")
        except driver_errors(self.engine) as exc:
            raise _unreadable(self.engine.url, exc, "conversations or clients") from None
        self.chunks += 1
        return SourceFrames(messages, conversations, clients, self.managers, len(rows))

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
        self._lookup.close()
        self.engine.dispose()


def read_unplaced(url: str, mapping: Path | None) -> pd.DataFrame | None:
    """The source's messages that no interval can ever select (no readable created_at); None when a mapping
    has no `unplaced` query to find them with."""
    queries = load_queries(mapping)
    engine = source_engine(url)
    sql = queries.unplaced if mapping is not None else UNPLACED.get(engine.dialect.name, UNPLACED["other"])
    if sql is None:
        engine.dispose()
        return None
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM ({sql}) q"))
            columns = list(result.keys())
            _check_columns(columns, MESSAGE_COLUMNS, "unplaced")
            return _frame(result.fetchall(), columns, MESSAGE_COLUMNS)
    except sa.exc.SQLAlchemyError as exc:
        raise _unreadable(url, exc) from None
    finally:
        engine.dispose()


def open_source(url: str, mapping: Path | None, start: datetime, end: datetime, zone: ZoneInfo,
                chunk_size: int = 50_000) -> SourceStream:
    """The interval's stream of chunks from the source named by the settings."""
    return SourceStream(url, load_queries(mapping), start, end, zone, chunk_size)


def check_source(url: str, mapping: Path | None) -> None:
    """Fail before any request if the source cannot be read or a query lacks a column."""
    queries = load_queries(mapping)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and "mode=memory" not in str(parsed) and not Path(parsed.database).is_file():
        hint = " (`amojo-etl sample-data` writes the sample)" if Path(parsed.database) == SAMPLE_DB else ""
        raise ConfigurationError(f"the source database {parsed.database} does not exist{hint}: check "
                                 "AMOJO_ETL_SOURCE_URL")
    try:
        engine = source_engine(url)
    except (sa.exc.ArgumentError, ImportError, TypeError) as exc:
        raise _unreadable(url, exc) from None
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
