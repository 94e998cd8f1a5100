"""What runs leave in the ledger besides messages: each interval's outcome, the rows rejected, each day's last audit,
the channel's scope and the OAuth pair."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from .database import Database, slices
from .schema import audits, channel, intervals, oauth_tokens, rejects


class Intervals:
    """The `intervals` table: (start, end) -> the last run's status and summary."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, start: str, end: str, status: str, summary: dict[str, Any]) -> None:
        row = {"start": start, "end": end, "status": status, "summary": json.dumps(summary, default=str),
               "updated_at": time.time()}
        with self.db.engine.begin() as conn:
            self.db.upsert(conn, intervals, [row], ["start", "end"])

    def record(self, start: str, end: str) -> tuple[str, dict[str, Any]] | None:
        """The status and summary last recorded for exactly this interval, if any."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(intervals.c.status, intervals.c.summary)
                               .where(intervals.c.start == start, intervals.c.end == end)).first()
        return None if row is None else (row.status, json.loads(row.summary or "{}"))

    def statuses(self) -> dict[tuple[str, str], str]:
        """(start, end) -> status of every interval the ledger has seen."""
        with self.db.engine.connect() as conn:
            return {(r.start, r.end): r.status for r in conn.execute(sa.select(intervals))}

    def rows(self) -> list[dict[str, Any]]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(intervals).order_by(intervals.c.start))
            return [{**row._asdict(), "summary": json.loads(row.summary or "{}")} for row in rows]


class Rejects:
    """The `rejects` table: source rows that were not sent, with the reason, for the user to fix at the source."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def rows(self, reason: str | None = None, limit: int | None = None,
             interval_label: str | None = None) -> list[dict[str, Any]]:
        """The rejected rows with their reason, newest first."""
        query = sa.select(rejects).order_by(rejects.c.updated_at.desc(), rejects.c.source_key)
        if reason:
            query = query.where(rejects.c.reason == reason)
        if interval_label:
            query = query.where(rejects.c.interval_label == interval_label)
        if limit:
            query = query.limit(limit)
        with self.db.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def counts(self, interval_label: str | None = None) -> dict[str, int]:
        """reason -> rejected rows, of one interval or of all."""
        query = sa.select(rejects.c.reason, sa.func.count()).group_by(rejects.c.reason)
        if interval_label:
            query = query.where(rejects.c.interval_label == interval_label)
        with self.db.engine.connect() as conn:
            return {reason: count for reason, count in conn.execute(query)}

    def save(self, rows: list[dict[str, Any]], interval_label: str) -> None:
        """Keep each rejected row with its reason, for the user to fix at the source.

        A ledger from before version 4 keyed rejects `message:{id}` and kept no interval: such a row is replaced
        by the same source row's reject under its new key, rather than listed twice.
        """
        now = time.time()
        with self.db.engine.begin() as conn:
            for part in slices(rows, 10_000):
                self.db.upsert(conn, rejects, [{**r, "interval_label": interval_label, "updated_at": now}
                                               for r in part], ["source_key"])
                legacy = sorted({r["source_key"].split("@", 1)[0] for r in part if "@" in r["source_key"]})
                for keys in slices(legacy):
                    conn.execute(rejects.delete().where(rejects.c.interval_label.is_(None),
                                                        rejects.c.source_key.in_(keys)))

    def clear(self, interval_label: str) -> None:
        """Forget an interval's rejects before its run starts again: what is still bad is rejected anew."""
        with self.db.engine.begin() as conn:
            conn.execute(rejects.delete().where(rejects.c.interval_label == interval_label))


class Audits:
    """The `audits` table: each interval's last audit."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, start: str, end: str, found: dict[str, Any]) -> None:
        """Keep an interval's audit as its last: `found` has verdict, source, source_rejected, ledger, amocrm,
        differences (kind -> count), repair and repaired."""
        with self.db.engine.begin() as conn:
            row = {**found, "start": start, "end": end, "audited_at": self.db.now(conn),
                   "ledger": json.dumps(found["ledger"]), "differences": json.dumps(found["differences"])}
            self.db.upsert(conn, audits, [row], ["start", "end"])

    def last(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(start, end) -> the last audit of every interval audited."""
        with self.db.engine.connect() as conn:
            return {(r.start, r.end): {**r._asdict(), "ledger": json.loads(r.ledger),
                                       "differences": json.loads(r.differences)}
                    for r in conn.execute(sa.select(audits))}


class Account:
    """The channel's scope, and the OAuth pair: a refresh token is single-use, so each new pair is committed the
    moment it arrives."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save_scope(self, channel_id: str, account_id: str, scope_id: str) -> None:
        with self.db.engine.begin() as conn:
            self.db.upsert(conn, channel, [{"channel_id": channel_id, "account_id": account_id,
                                            "scope_id": scope_id}], ["channel_id"])

    def oauth_pair(self, account: str) -> tuple[str, str, float] | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.account == account)).first()
        return (row.access_token, row.refresh_token, row.expires_at) if row else None

    def save_oauth_pair(self, account: str, access_token: str, refresh_token: str, expires_at: float) -> None:
        with self.db.engine.begin() as conn:
            self.db.upsert(conn, oauth_tokens, [{"account": account, "access_token": access_token,
                                                 "refresh_token": refresh_token, "expires_at": expires_at,
                                                 "updated_at": time.time()}], ["account"])
