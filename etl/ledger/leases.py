"""Leases in the ledger (the `claims` table): who is doing what right now, so that concurrent runs on one ledger
never do the same work twice. `etl/claims.py` keeps a run's leases alive; this module reads and writes them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import sqlalchemy as sa

from .database import Database, slices
from .schema import claims, stored_key


class Leases:
    """A lease per (kind, key): interval | conversation | client, held by one run until it expires."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, kind: str, keys: Iterable[str], holder: str, ttl_s: float, **span: int) -> set[str]:
        """Take the claims on `keys` that are free, expired or already ours; return the keys now held.

        Rows are locked with SKIP LOCKED where the database has it (PostgreSQL, MariaDB), so a key another run is
        claiming at this moment is skipped rather than waited for; SQLite serialises writers by itself. Keys are
        taken in sorted order, so two runs inserting the same keys never deadlock. Expiry is by the database's
        clock (`Ledger.clock`), read in the same transaction.
        """
        held: set[str] = set()
        given = {stored_key(key): key for key in keys}  # the held keys are answered as they were given
        for part in slices(sorted(given)):
            mine = claims.c.kind == kind, claims.c.key.in_(part)
            with self.db.engine.begin() as conn:
                now = self.db.now(conn)
                claimable = sa.or_(claims.c.holder == holder, claims.c.expires_at < now)
                conn.execute(self.db.insert_ignoring_known(claims),
                             [{"kind": kind, "key": k, "holder": holder, "expires_at": now + ttl_s, **span}
                              for k in part])
                free = [r.key for r in conn.execute(sa.select(claims.c.key).where(*mine, claimable)
                                                    .order_by(claims.c.key).with_for_update(skip_locked=True))]
                if free:
                    conn.execute(claims.update().where(claims.c.kind == kind, claims.c.key.in_(free), claimable)
                                 .values(holder=holder, expires_at=now + ttl_s, **span))
                held.update(given[r.key] for r in conn.execute(sa.select(claims.c.key).where(
                    *mine, claims.c.holder == holder)))
        return held

    def renew(self, holder: str, ttl_s: float) -> int:
        """Extend every claim `holder` still has, to `ttl_s` from now by the database's clock; the count tells it
        whether another run took one over."""
        with self.db.engine.begin() as conn:
            return conn.execute(claims.update().where(claims.c.holder == holder)
                                .values(expires_at=self.db.now(conn) + ttl_s)).rowcount

    def release(self, holder: str, kind: str | None = None, keys: Iterable[str] | None = None) -> None:
        """Give up `holder`'s claims: those on `keys` of `kind`, or all of them."""
        with self.db.engine.begin() as conn:
            if keys is None:
                conn.execute(claims.delete().where(claims.c.holder == holder))
                return
            for part in slices([stored_key(key) for key in keys]):
                conn.execute(claims.delete().where(claims.c.holder == holder, claims.c.kind == kind,
                                                   claims.c.key.in_(part)))

    def advance_frontier(self, holder: str, key: str, frontier_ms: int) -> None:
        """Say that every message of the interval `key` before `frontier_ms` is registered in the ledger."""
        with self.db.engine.begin() as conn:
            conn.execute(claims.update().where(claims.c.kind == "interval", claims.c.key == key,
                                               claims.c.holder == holder)
                         .values(frontier_ms=frontier_ms))

    def live(self, kind: str, other_than: str | None = None, expired_within_s: float = 0.0) -> list[sa.Row]:
        """The claims of `kind` not yet expired (or expired less than `expired_within_s` ago), except `other_than`'s;
        expired by the database's clock."""
        query = sa.select(claims).where(claims.c.kind == kind)
        if other_than:
            query = query.where(claims.c.holder != other_than)
        with self.db.engine.connect() as conn:
            if math.isfinite(expired_within_s):  # MySQL takes no infinities
                query = query.where(claims.c.expires_at >= self.db.now(conn) - expired_within_s)
            return list(conn.execute(query))
