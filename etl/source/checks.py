"""Checking the source before any request: it exists, can be read, and every query returns the canonical columns."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ..settings import SAMPLE_DB, ConfigurationError
from .connection import source_engine, unreadable
from .frames import check_columns
from .queries import ENTITIES, bind, load_queries
from .window import bound


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
        raise unreadable(url, exc) from None
    utc = ZoneInfo("UTC")
    moment = bound(datetime(2000, 1, 1, tzinfo=utc), engine.dialect.name, utc)
    try:
        with engine.connect() as conn:
            for entity, wanted in ENTITIES.items():
                sql = getattr(queries, entity)
                if sql:
                    result = conn.execute(sa.text(f"SELECT * FROM ({sql}) q WHERE 1 = 0"),
                                          bind(sql, {"start": moment, "end": moment}))
                    check_columns(list(result.keys()), wanted, entity)
    except sa.exc.SQLAlchemyError as exc:
        raise unreadable(url, exc) from None
    finally:
        engine.dispose()
