"""Reading one data interval: its messages in chunks through one streaming cursor, ordered by time, each chunk
with the conversations and clients it refers to."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from .checks import returned_columns, unknown_columns
from .connection import DriverCursor, driver_errors, source_engine, unreadable
from .frames import SourceFrames, as_text, check_columns, frame_of
from .queries import (
    CANONICAL,
    EDITED_FROM,
    EDITED_TO,
    OPTIONAL,
    UNPLACED,
    SourceQueries,
    canonical_queries,
    edits_pass,
    load_queries,
)
from .schema import (
    ATTACHMENT_COLUMNS,
    CLIENT_COLUMNS,
    CONVERSATION_COLUMNS,
    MANAGER_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_OPTIONAL_COLUMNS,
)
from .timestamps import to_utc_ms
from .window import EARLIEST, Window, bound, candidate_bounds


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
        self._earliest = bound(EARLIEST, dialect, zone)
        self.window = Window(int(start.timestamp() * 1000), int(end.timestamp() * 1000),
                             self.params["start"], self.params["end"])
        self.chunks = 0
        self._carried = {"conversations": frame_of([], [], CONVERSATION_COLUMNS, OPTIONAL["conversations"]),
                         "clients": frame_of([], [], CLIENT_COLUMNS)}
        self._cursor: DriverCursor | None = None
        self._edits_pass = False
        try:
            self._lookup = self.engine.connect()
            if queries is CANONICAL:
                self.queries = queries = canonical_queries(self._lookup)
            self._passes = self._queries_and_bounds()
            self.unknown_columns = unknown_columns(returned_columns(self._lookup, queries))
            if dialect == "sqlite":
                self._time_order = self._sqlite_time_order()
            self.managers = self._select(queries.managers, MANAGER_COLUMNS, "managers")
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise unreadable(self.engine.url, exc) from None

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
        for sql, params, _ in self._queries_and_bounds():
            found = self._lookup.execute(sa.text(f"SELECT 1 FROM ({sql}) q WHERE {odd} LIMIT 1"),
                                         self.queries.bind(sql, params))
            if found.first() is not None:
                return "amojo_instant(q.created_at), q.id"
        return "q.created_at, q.id"

    def _queries_and_bounds(self) -> list[tuple[str, dict[str, Any], bool]]:
        """The passes over messages (SQL, parameters, whether it is the edits pass), both over the candidate span:
        new messages by their creation time, then edits by their edit time. An edits pass derived from the messages
        query spans creation times from before 1970 to the interval's end, and binds the span on updated_at."""
        edits, derived = edits_pass(self.queries)
        candidate = self.candidate_params
        edit_params = {"start": self._earliest, "end": candidate["end"], EDITED_FROM: candidate["start"],
                       EDITED_TO: candidate["end"]} if derived else candidate
        return [(self.queries.messages, candidate, False), (edits, edit_params, True)]

    def count(self) -> int:
        """How many message rows the passes read (the candidate span, both passes), for progress."""
        total = 0
        try:
            for sql, params, _ in self._queries_and_bounds():
                total += self._lookup.execute(sa.text(f"SELECT COUNT(*) FROM ({sql}) q"),
                                              self.queries.bind(sql, params)).scalar() or 0
        except sa.exc.SQLAlchemyError as exc:
            raise unreadable(self.engine.url, exc) from None
        return total

    def repeated_ids(self) -> set[str]:
        """Message ids that occur more than once in the interval, found by the database, which sees all of it."""
        repeated: set[str] = set()
        try:
            for sql, params, _ in self._queries_and_bounds():
                result = self._lookup.execute(
                    sa.text(f"SELECT q.id FROM ({sql}) q GROUP BY q.id HAVING COUNT(*) > 1"),
                    self.queries.bind(sql, params))
                repeated.update(as_text(row[0]) for row in result if row[0] is not None)
        except sa.exc.SQLAlchemyError as exc:
            raise unreadable(self.engine.url, exc) from None
        return repeated

    def _select(self, sql: str, wanted: tuple[str, ...], entity: str, ids: list[str] | None = None) -> pd.DataFrame:
        """The rows of one entity's query, all of them or those with these ids, on the lookup connection."""
        statement = sa.text(f"SELECT * FROM ({sql}) q" + (" WHERE q.id IN :ids" if ids is not None else ""))
        params = self.queries.bind(sql, self.params)
        if ids is not None:
            statement = statement.bindparams(sa.bindparam("ids", expanding=True))
            params["ids"] = ids
        result = self._lookup.execute(statement, params)
        columns = list(result.keys())
        check_columns(columns, wanted, entity)
        return frame_of(result.fetchall(), columns, wanted, OPTIONAL.get(entity, ()))

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
        """The next rows of the current pass, opening the next pass when one is exhausted; none after the last."""
        while True:
            if self._cursor is None:
                if not self._passes:
                    return []
                sql, params, self._edits_pass = self._passes.pop(0)
                self._cursor = DriverCursor(self.engine, f"SELECT * FROM ({sql}) q ORDER BY {self._time_order}",
                                             self.queries.bind(sql, params), self.chunk_size)
                check_columns(self._cursor.columns, MESSAGE_COLUMNS, "messages")
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
            raise unreadable(self.engine.url, exc, "edits" if self._edits_pass else "messages") from None
        if not rows:
            return None
        try:
            messages = self._of_interval(frame_of(rows, self._cursor.columns, MESSAGE_COLUMNS,
                                                  MESSAGE_OPTIONAL_COLUMNS))
            attachments = self._attachments_of(messages)
            conversation_ids = [str(v) for v in messages["conversation_id"].dropna().unique()]
            conversations = self._by_ids(self.queries.conversations, conversation_ids, CONVERSATION_COLUMNS,
                                         "conversations")
            client_ids = [str(v) for v in conversations["client_id"].dropna().unique()]
            clients = self._by_ids(self.queries.clients, client_ids, CLIENT_COLUMNS, "clients")
        except driver_errors(self.engine) as exc:
            raise unreadable(self.engine.url, exc, "attachments, conversations or clients") from None
        self.chunks += 1
        return SourceFrames(messages, conversations, clients, self.managers, len(rows), attachments)

    def _attachments_of(self, messages: pd.DataFrame) -> pd.DataFrame:
        """The attachments of these messages, by message id, bound to the span their messages were read from."""
        sql = self.queries.attachments
        ids = sorted({as_text(v) for v in messages["id"] if as_text(v) is not None})
        if not sql or not ids:
            return frame_of([], [], ATTACHMENT_COLUMNS)
        # The edits pass reads messages created before the interval: their attachments by id, from any earlier time.
        span = dict(self.candidate_params, start=self._earliest) if self._edits_pass else self.candidate_params
        statement = sa.text(f"SELECT * FROM ({sql}) q WHERE q.message_id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True))
        frames = []
        for first in range(0, len(ids), self.LOOKUP_SLICE):
            result = self._lookup.execute(statement, {**self.queries.bind(sql, span),
                                                      "ids": ids[first:first + self.LOOKUP_SLICE]})
            columns = list(result.keys())
            check_columns(columns, ATTACHMENT_COLUMNS, "attachments")
            frames.append(frame_of(result.fetchall(), columns, ATTACHMENT_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def _of_interval(self, messages: pd.DataFrame) -> pd.DataFrame:
        """The rows of the pass that belong to the interval, with `created_ms`: new messages by their creation time,
        edits by their edit time."""
        created_ms = to_utc_ms(messages["created_at"], self.zone)
        if self._edits_pass:  # edited in the interval, created before it: the first pass has the others
            edited_ms = to_utc_ms(messages["updated_at"], self.zone)
            mine = self.window.holds(edited_ms) & (created_ms < self.window.start_ms).fillna(False).astype(bool)
        else:
            mine = self.window.keeps(created_ms, messages["created_at"])
        messages, created_ms = messages[mine].reset_index(drop=True), created_ms[mine].reset_index(drop=True)
        messages["created_ms"] = created_ms
        return messages

    def close(self) -> None:
        """Close the cursor, the lookup connection and the engine."""
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
            check_columns(columns, MESSAGE_COLUMNS, "unplaced")
            return frame_of(result.fetchall(), columns, MESSAGE_COLUMNS, MESSAGE_OPTIONAL_COLUMNS)
    except sa.exc.SQLAlchemyError as exc:
        raise unreadable(url, exc) from None
    finally:
        engine.dispose()


def open_source(url: str, mapping: Path | None, start: datetime, end: datetime, zone: ZoneInfo,
                chunk_size: int = 50_000, parameters: dict[str, Any] | None = None) -> SourceStream:
    """The interval's stream of chunks from the source named by the settings (`parameters`: the settings a
    mapping's queries may read, `Settings.mapping_parameters`)."""
    return SourceStream(url, load_queries(mapping, parameters), start, end, zone, chunk_size)

