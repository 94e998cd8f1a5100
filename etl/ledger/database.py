"""The state database under the ledger: opening it, upgrading its schema, and the dialect's own ways to write.

SQLite (one file, the default), PostgreSQL and MySQL/MariaDB (for many workers) behave alike through this module:
upserts and inserts that leave known rows alone in each dialect's syntax, the database's clock, and IN lists cut
into slices that every driver takes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..errors import RunError
from ..settings import ConfigurationError
from .schema import SCHEMA_VERSION, UPGRADES, meta, metadata

T = TypeVar("T")

IN_SLICE = 500
"""Most values in one IN list: what every driver takes."""
SCHEMA_LOCK = 0x616D6F6A6F  # any number: the advisory lock that schema changes take turns on

_UPGRADED: set[str] = set()
"""Ledger URLs this process has brought to SCHEMA_VERSION: a later open only reads the version."""
_UPGRADED_LOCK = threading.Lock()


def slices(values: Iterable[T], size: int = IN_SLICE) -> Iterator[list[T]]:
    """`values` in lists of at most `size`, so that no IN list or batch grows past what a driver takes."""
    values = values if isinstance(values, Sequence) else list(values)
    for first in range(0, len(values), size):
        yield list(values[first:first + size])


@contextmanager
def _schema_lock(conn: sa.Connection) -> Iterator[None]:
    """Hold the database's own lock for schema changes while inside; commit before letting go of it, so that
    whoever takes it next sees what was done. SQLite needs none: one writer at a time."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        lock, unlock = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    elif dialect in ("mysql", "mariadb"):
        lock, unlock = "SELECT GET_LOCK('amojo_etl_schema', 120)", "SELECT RELEASE_LOCK('amojo_etl_schema')"
    else:
        yield
        conn.commit()
        return
    conn.execute(sa.text(lock), {"key": SCHEMA_LOCK})
    try:
        yield
        conn.commit()
    finally:
        conn.rollback()
        conn.execute(sa.text(unlock), {"key": SCHEMA_LOCK})
        conn.commit()


def _shown(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a SQLAlchemy URL)"


def _unusable(url: str, exc: Exception) -> ConfigurationError:
    """The ledger cannot be opened or written: name the setting, show the URL without its password."""
    reason = str(getattr(exc, "orig", None) or exc).strip()
    return ConfigurationError(f"cannot open the ledger {_shown(url)}: {reason}. Check AMOJO_ETL_STATE_URL: the "
                              "database must be reachable and writable (a SQLite file: its directory too)")


def _interruption(exc: BaseException | None) -> BaseException | None:
    """The interruption (SIGTERM as Prefect raises it, Ctrl-C) that broke a statement off, if one did: the driver's
    error then comes from cleaning up after it, and is not the ledger's fault."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if not isinstance(exc, Exception):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _write_ahead(connection: Any, _record: Any) -> None:
    """A SQLite ledger in write-ahead mode, still synced at each commit: a commit costs one sync of the log instead
    of the rollback journal's several (a commit a conversation and chunk is most of what a long import writes), and
    readers in other processes no longer block the run that writes. The mode stays with the file.

    Switching needs the file to itself, and SQLite refuses it at once (no busy wait) while another process writes,
    as an older worker may on a ledger it made: that connection goes on in rollback mode, and a later one switches.
    """
    connection.execute("PRAGMA synchronous=FULL")
    if connection.execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "memory"):
        return
    with suppress(sqlite3.OperationalError):
        connection.execute("PRAGMA journal_mode=WAL")


class Database:
    """One ledger database: its engine, its schema at this version, and the dialect's ways to write and tell time."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, future=True)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _write_ahead)
        except (sa.exc.ArgumentError, ImportError, OSError) as exc:
            raise _unusable(url, exc) from None
        self.dialect = self.engine.dialect.name
        try:
            self._open_schema()
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise _unusable(url, exc) from None
        sa.event.listen(self.engine, "handle_error", self._lost)

    def _lost(self, context: sa.engine.ExceptionContext) -> None:
        """The ledger stopped answering after it opened (its database dropped or down, its file gone or
        unreadable): one of our errors naming the setting, so the run ends in one line, not a driver's traceback."""
        if (interruption := _interruption(context.original_exception)) is not None:
            raise interruption  # a run stopped mid-statement stays a stopped run
        if isinstance(context.sqlalchemy_exception, sa.exc.OperationalError | sa.exc.InterfaceError):
            reason = str(context.original_exception).strip()
            raise RunError(f"the ledger {_shown(self.url)} stopped answering mid-run: {reason}. Check the database "
                           "of AMOJO_ETL_STATE_URL, then run again: the run goes on from what the ledger recorded")

    def _open_schema(self) -> None:
        """Upgrade the schema the first time this process opens the ledger; after that, one read checks that it is
        still at this version (no newer amojo-etl upgraded it, nobody recreated the database) instead of taking the
        lock and checking every table. An in-memory database is new at every open: it is always upgraded."""
        remembered = self.engine.url.database not in (None, "", ":memory:")
        with _UPGRADED_LOCK:
            upgraded = self.url in _UPGRADED
        if upgraded:
            try:
                if self.schema_version() == SCHEMA_VERSION:
                    return
            except (sa.exc.SQLAlchemyError, TypeError, ValueError):
                pass  # the tables or the version are gone: build them again
        self._upgrade()
        if remembered:
            with _UPGRADED_LOCK:
                _UPGRADED.add(self.url)

    def _upgrade(self) -> None:
        """Create a new ledger at the current version, or bring an older one up to it, step by step.

        Workers starting together on a new ledger would create its tables at once: a database lock makes them
        take turns (the first creates, the others find it done).
        """
        with self.engine.connect() as conn, _schema_lock(conn):
            metadata.create_all(conn, tables=[meta])
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            if found is None:
                metadata.create_all(conn)
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(found)
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the ledger at AMOJO_ETL_STATE_URL is at schema version {version}, written by a newer "
                    f"amojo-etl (this one knows {SCHEMA_VERSION}): upgrade amojo-etl")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                UPGRADES[step](conn)
            metadata.create_all(conn)  # tables added since, if any
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar())

    def close(self) -> None:
        self.engine.dispose()

    def insert_ignoring_known(self, table: sa.Table) -> sa.Insert:
        """An INSERT that leaves a row whose primary key exists as it is."""
        if self.dialect in ("sqlite", "postgresql"):
            return (sqlite if self.dialect == "sqlite" else postgresql).insert(table).on_conflict_do_nothing()
        return table.insert().prefix_with("IGNORE")

    def upsert(self, conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str],
               kept: tuple[str, ...] = ()) -> None:
        """Insert or update by primary key, in the dialect's own way; columns in `kept` keep what a row has."""
        if not rows:
            return
        changing = [c for c in rows[0] if c not in keys and c not in kept]
        if self.dialect in ("sqlite", "postgresql"):
            insert = (sqlite if self.dialect == "sqlite" else postgresql).insert(table)
            conn.execute(insert.on_conflict_do_update(index_elements=keys,
                                                      set_={c: insert.excluded[c] for c in changing}), rows)
        else:
            insert = mysql.insert(table)
            conn.execute(insert.on_duplicate_key_update({c: insert.inserted[c] for c in changing}), rows)

    def rows_where_in(self, table: sa.Table, key: sa.Column, values: Iterable[Any]) -> Iterator[sa.Row]:
        """Rows whose `key` is one of `values`, queried a slice at a time."""
        with self.engine.connect() as conn:
            for part in slices(values):
                yield from conn.execute(sa.select(table).where(key.in_(part)))

    def now(self, conn: sa.Connection) -> float:
        """Now, in seconds since the epoch, by the database's clock (see `Ledger.clock`)."""
        if self.dialect == "postgresql":
            query = "SELECT extract(epoch FROM clock_timestamp())"
        elif self.dialect in ("mysql", "mariadb"):
            # Not UNIX_TIMESTAMP(NOW(6)): NOW() is in the session's time zone, ambiguous in the hour a DST change
            # repeats; UTC_TIMESTAMP is not.
            query = "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1000000"
        else:
            return time.time()
        return float(conn.execute(sa.text(query)).scalar_one())
