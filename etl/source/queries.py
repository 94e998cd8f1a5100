"""The queries that read the source: the canonical schema's, or a mapping file's (TOML, one SQL query per entity)
for any other schema, as long as its queries return the canonical column names."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..settings import ConfigurationError
from .schema import (
    ATTACHMENT_COLUMNS,
    CLIENT_COLUMNS,
    CONVERSATION_COLUMNS,
    CONVERSATION_OPTIONAL,
    MANAGER_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_OPTIONAL_COLUMNS,
)


@dataclass(frozen=True)
class SourceQueries:
    """One SQL query per entity, each returning the canonical column names.

    `messages` binds `:start` and `:end`: wall times in the source's zone, a day or more wider than the interval
    on each side (the pipeline keeps the rows whose created_at, read, lies in the interval); `edits`, if given,
    the same bounds on the edit time (`updated_at`): the pipeline keeps the rows edited in the interval and
    created before it; without it, the edits pass is derived from `messages` (`edits_pass`); `unplaced`,
    if given, binds nothing and returns the messages no interval can select (created_at NULL or not a time).
    Conversations and clients are looked up by id for each chunk, so their queries need no filter (they may
    bind `:start`/`:end` too). `attachments`, if given, binds `:start` and `:end` like `messages` (the window of the
    messages they belong to, on their created_at) and is looked up by `message_id` for each chunk's messages.
    A messages query may also return `reply_to_id` (MESSAGE_OPTIONAL_COLUMNS).
    """

    messages: str
    conversations: str
    clients: str
    managers: str
    edits: str | None = None
    unplaced: str | None = None
    attachments: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict, compare=False)
    """Settings a mapping's queries may read as parameters (`:media_base_url`), beside the interval's bounds."""

    def bind(self, sql: str, bounds: dict[str, Any]) -> dict[str, Any]:
        """The parameters `sql` names, among the interval's `bounds` and the settings of `parameters`."""
        return bind(sql, {**self.parameters, **bounds})


CANONICAL = SourceQueries(
    messages=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at >= :start AND created_at < :end",
    conversations=f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM conversations",
    clients=f"SELECT {', '.join(CLIENT_COLUMNS)} FROM clients",
    managers=f"SELECT {', '.join(MANAGER_COLUMNS)} FROM managers",
    edits=f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE updated_at >= :start AND updated_at < :end",
)
ENTITIES = {"messages": MESSAGE_COLUMNS, "conversations": CONVERSATION_COLUMNS, "clients": CLIENT_COLUMNS,
            "managers": MANAGER_COLUMNS, "edits": MESSAGE_COLUMNS, "unplaced": MESSAGE_COLUMNS,
            "attachments": ATTACHMENT_COLUMNS}
UNPLACED = {  # dialect -> the canonical messages no interval can send: no time, or one amojo cannot take
    "sqlite": f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at IS NULL "
              "OR typeof(created_at) <> 'text' OR created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
              "OR created_at < '1970-01-01'",
    "other": f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE created_at IS NULL "
             "OR created_at < '1970-01-01'",
}
OPTIONAL = {"conversations": CONVERSATION_OPTIONAL, "messages": MESSAGE_OPTIONAL_COLUMNS,
            "edits": MESSAGE_OPTIONAL_COLUMNS, "unplaced": MESSAGE_OPTIONAL_COLUMNS}
"""Columns a query may return beyond the required ones of `ENTITIES`, read when they are there."""
REQUIRED = ("messages", "conversations", "clients", "managers")
WINDOWED = ("messages", "edits", "attachments")
"""The queries that read one interval's rows: each must bind :start and :end, or it reads the whole table for every
interval (a day of a backfill reads all of history). `unplaced` binds nothing; the lookups need no filter."""

EDITED_FROM, EDITED_TO = "amojo_edited_from", "amojo_edited_to"
"""The parameters of the derived edits pass: the span of edit times, bound on the messages query's updated_at."""


def edits_pass(queries: SourceQueries) -> tuple[str, bool]:
    """The SQL of the edits pass, and whether it was derived from the messages query (no `edits` query given).

    Derived, it is the messages query's rows filtered on their updated_at: the user's SQL is wrapped, not
    rewritten. Its own :start/:end then span from before 1970 to the interval's end (every message created before
    the interval may have been edited in it), and the edit-time span is bound on the wrapper (`EDITED_FROM`,
    `EDITED_TO`). PostgreSQL, MySQL/MariaDB and SQLite push that filter into a plain query, so an index on the
    edit time makes the pass cheap; without one, the pass reads the messages created before the interval's end,
    once per interval (give an `edits` query, or the index, when that is too much).
    """
    if queries.edits:
        return queries.edits, False
    return (f"SELECT * FROM ({queries.messages}) edited "
            f"WHERE edited.updated_at >= :{EDITED_FROM} AND edited.updated_at < :{EDITED_TO}"), True


def bound_names(sql: str) -> set[str]:
    """The names a query binds (`:start` -> start), as SQLAlchemy reads them (`::date` is a cast, not a name)."""
    return set(sa.text(sql).compile().params)


def _unbounded(mapping: Path, queries: dict[str, str]) -> None:
    """Refuse an interval's query that does not bind both :start and :end, saying why and what to write."""
    for entity in WINDOWED:
        sql = queries.get(entity)
        if not sql:
            continue
        lacking = [f":{name}" for name in ("start", "end") if name not in bound_names(sql)]
        if lacking:
            time = "the edit time (updated_at)" if entity == "edits" else "the message time (created_at)"
            raise ConfigurationError(
                f"the mapping file {mapping} (AMOJO_ETL_MAPPING): the {entity} query does not use "
                f"{' and '.join(lacking)}, so it would read the whole table for every interval; filter it on "
                f"{time}: WHERE <that column> >= :start AND <that column> < :end")


def canonical_queries(conn: sa.Connection) -> SourceQueries:
    """The canonical queries for what this database has: `reply_to_id` and the attachments table are newer than
    the canonical schema, so a database created before them is read without them."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("messages"):
        return CANONICAL
    columns = MESSAGE_COLUMNS + tuple(c for c in MESSAGE_OPTIONAL_COLUMNS
                                      if c in {col["name"] for col in inspector.get_columns("messages")})
    attachments = None
    if inspector.has_table("attachments"):
        attachments = (f"SELECT {', '.join('a.' + c for c in ATTACHMENT_COLUMNS)} FROM attachments a "
                       "JOIN messages m ON m.id = a.message_id WHERE m.created_at >= :start AND m.created_at < :end")
    return SourceQueries(
        messages=f"SELECT {', '.join(columns)} FROM messages WHERE created_at >= :start AND created_at < :end",
        conversations=CANONICAL.conversations, clients=CANONICAL.clients, managers=CANONICAL.managers,
        edits=f"SELECT {', '.join(columns)} FROM messages WHERE updated_at >= :start AND updated_at < :end",
        attachments=attachments,
    )


def load_queries(mapping: Path | None, parameters: dict[str, Any] | None = None) -> SourceQueries:
    """The canonical queries, or those of a mapping file: TOML with one SQL query per entity under [queries], which
    may read the settings of `parameters` (`Settings.mapping_parameters`) as `:name`."""
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
    _unbounded(mapping, queries)
    return SourceQueries(**{k: queries[k] for k in ENTITIES if queries.get(k)}, parameters=dict(parameters or {}))


def _toml_type(value: Any) -> str:
    """What a TOML value is, in the file's words (never the value: it is shown in error messages)."""
    names = {str: "text", bool: "a boolean", int: "a number", float: "a number", dict: "a table", list: "an array"}
    return names.get(type(value), "a date")


def bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters among `params` that a query names: a query binds `:start` and `:end`, or either, or none."""
    named = bound_names(sql)
    return {k: v for k, v in params.items() if k in named}
