"""Connecting to the source: the engine, the driver's own streaming cursor, and its errors in the settings' words."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ..settings import ConfigurationError


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


def unreadable(url: str | sa.URL, exc: Exception, query: str | None = None) -> ConfigurationError:
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


class DriverCursor:
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
        """Up to `size` more rows as plain tuples; none when the query is exhausted."""
        if self._result is not None:
            return [tuple(row) for row in self._result.fetchmany(size)]
        return self._cursor.fetchmany(size)

    def close(self) -> None:
        """Release the cursor and its connection."""
        if self._result is not None:
            self._result.close()
            self._connection.close()
        else:
            self._cursor.close()
            self._raw.close()

