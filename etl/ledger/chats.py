"""Chats and contacts in the ledger: each conversation's chat, its client's contact and link; and the requests whose
effect amoCRM has not confirmed yet (`Effects`), which are resolved by reading amoCRM before they are done again."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .database import Database, slices
from .schema import chats, contacts, persons, stored_key, uncertain


@dataclass(frozen=True)
class ChatState:
    conversation_id: str
    chat_id: str | None
    contact_id: int | None
    linked: bool
    quarantine: str | None


class Chats:
    """The `chats` table: conversation -> chat id, client key, contact, linked, quarantine."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def states(self, conversation_ids: Iterable[str]) -> dict[str, ChatState]:
        return {
            row.conversation_id: ChatState(row.conversation_id, row.chat_id, row.contact_id, bool(row.linked),
                                           row.quarantine)
            for row in self.db.rows_where_in(chats, chats.c.conversation_id, conversation_ids)
        }

    def quarantined(self) -> dict[str, str]:
        """Every conversation quarantined now, with its reason (the contacts and the fix)."""
        with self.db.engine.connect() as conn:
            return dict(conn.execute(sa.select(chats.c.conversation_id, chats.c.quarantine)
                                     .where(chats.c.quarantine.is_not(None))).all())  # type: ignore[arg-type]

    def save(self, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        with self.db.engine.begin() as conn:
            self.db.upsert(conn, chats, [{**r, "updated_at": now} for r in rows], ["conversation_id"])


class Contacts:
    """The `contacts` table: client key -> amoCRM contact id, and whether we created it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def ids(self, client_keys: Iterable[str]) -> dict[str, int]:
        return {row.client_key: row.contact_id
                for row in self.db.rows_where_in(contacts, contacts.c.client_key, client_keys)}

    def save(self, rows: list[dict[str, Any]]) -> None:
        with self.db.engine.begin() as conn:
            self.db.upsert(conn, contacts, rows, ["client_key"])

    def created(self, contact_ids: Iterable[int]) -> set[int]:
        """Which of `contact_ids` we created."""
        return {row.contact_id for row in self.db.rows_where_in(contacts, contacts.c.contact_id, contact_ids)
                if row.created}

    def persons(self, person_keys: Iterable[str]) -> dict[str, int]:
        """Person key (`phone:…`, `email:…`) -> the contact a client found or created by it resolved to."""
        given = {stored_key(key): key for key in person_keys}
        return {given[row.person_key]: row.contact_id
                for row in self.db.rows_where_in(persons, persons.c.person_key, given)}

    def save_persons(self, contact_ids: dict[str, int]) -> None:
        if contact_ids:
            with self.db.engine.begin() as conn:
                self.db.upsert(conn, persons, [{"person_key": stored_key(k), "contact_id": i}
                                               for k, i in contact_ids.items()], ["person_key"])

    def forget(self, contact_ids: Iterable[int]) -> None:
        """Contacts amoCRM no longer has (merged or deleted there): no client or person resolves to them any more,
        and the chats linked to them are to be linked again, to the contact their client resolves to next."""
        with self.db.engine.begin() as conn:
            for part in slices(contact_ids):
                conn.execute(contacts.delete().where(contacts.c.contact_id.in_(part)))
                conn.execute(persons.delete().where(persons.c.contact_id.in_(part)))
                conn.execute(chats.update().where(chats.c.contact_id.in_(part))
                             .values(contact_id=None, linked=False, updated_at=time.time()))


class Effects:
    """The `uncertain` table: requests sent whose effect amoCRM has not confirmed (kind "contact": a create of the
    client `key`'s contact)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def expect(self, kind: str, keys: Iterable[str]) -> None:
        """Say, before sending them, that requests for `keys` are under way: until `settle`, their effect is
        unknown, and whoever comes next reads amoCRM before doing them again. `since` is the ledger's clock."""
        keys = list(keys)
        if keys:
            with self.db.engine.begin() as conn:
                now = self.db.now(conn)
                self.db.upsert(conn, uncertain, [{"kind": kind, "key": key, "since": now} for key in keys],
                               ["kind", "key"])

    def settle(self, kind: str, keys: Iterable[str]) -> None:
        with self.db.engine.begin() as conn:
            for part in slices(keys):
                conn.execute(uncertain.delete().where(uncertain.c.kind == kind, uncertain.c.key.in_(part)))

    def latest(self, kind: str) -> float | None:
        """When the newest request of `kind` whose effect is unknown was noted (the ledger's clock), of any key."""
        with self.db.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(uncertain.c.since)).where(uncertain.c.kind == kind)).scalar()

    def uncertain(self, kind: str, keys: Iterable[str]) -> dict[str, float]:
        """Which of `keys` have a request of `kind` whose effect is unknown, and since when (the ledger's clock)."""
        return {row.key: row.since for row in self.db.rows_where_in(uncertain, uncertain.c.key, keys)
                if row.kind == kind}
