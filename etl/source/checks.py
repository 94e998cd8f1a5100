"""Checking the source before any request: it exists, can be read, and every query returns the canonical columns."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ..settings import SAMPLE_DB, ConfigurationError
from .connection import source_engine, unreadable
from .frames import check_columns
from .queries import ENTITIES, OPTIONAL, SourceQueries, load_queries
from .window import bound


def check_source(url: str, mapping: Path | None, parameters: dict[str, Any] | None = None) -> None:
    """Fail before any request if the source cannot be read or a query lacks a column (`parameters`: the settings a
    mapping's queries may read)."""
    queries = load_queries(mapping, parameters)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and "mode=memory" not in str(parsed) and not Path(parsed.database).is_file():
        hint = " (`amojo-etl sample-data` writes the sample)" if Path(parsed.database) == SAMPLE_DB else ""
        raise ConfigurationError(f"the source database {parsed.database} does not exist{hint}: check "
                                 "AMOJO_ETL_SOURCE_URL")
    try:
        engine = source_engine(url)
    except (sa.exc.ArgumentError, ImportError, TypeError) as exc:
        raise unreadable(url, exc) from None
    try:
        with engine.connect() as conn:
            for entity, columns in returned_columns(conn, queries).items():
                check_columns(columns, ENTITIES[entity], entity)
    except sa.exc.SQLAlchemyError as exc:
        raise unreadable(url, exc) from None
    finally:
        engine.dispose()


def returned_columns(conn: sa.Connection, queries: SourceQueries) -> dict[str, list[str]]:
    """The columns each query of `queries` returns, asked of the database without reading a row."""
    utc = ZoneInfo("UTC")
    moment = bound(datetime(2000, 1, 1, tzinfo=utc), conn.dialect.name, utc)
    returned: dict[str, list[str]] = {}
    for entity in ENTITIES:
        sql = getattr(queries, entity)
        if sql:
            result = conn.execute(sa.text(f"SELECT * FROM ({sql}) q WHERE 1 = 0"),
                                  queries.bind(sql, {"start": moment, "end": moment}))
            returned[entity] = list(result.keys())
    return returned


def unknown_columns(returned: dict[str, list[str]]) -> str | None:
    """One line naming, query by query, the columns no stage reads (a misspelt optional column, one the product
    does not take); None when there are none. Said once per run, not per chunk: the columns are the queries'."""
    unknown = {entity: [c for c in columns if c not in (*ENTITIES[entity], *OPTIONAL.get(entity, ()))]
               for entity, columns in returned.items()}
    named = "; ".join(f"{entity}: {', '.join(columns)}" for entity, columns in unknown.items() if columns)
    if not named:
        return None
    return (f"the mapping's queries return columns amojo-etl does not read, and they are ignored ({named}); "
            "rename them to the columns of data/schema.sql (README, Another schema) or drop them from the mapping "
            "file (AMOJO_ETL_MAPPING)")
