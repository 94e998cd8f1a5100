"""Messages in the ledger: each source message's msgid, place (conversation, time), content hash and status.

The statuses and the moves between them are in `status.py`; this module is where they are written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa

from .database import Database, slices
from .schema import chats, messages
from .status import MOVABLE, NEEDS_EDIT_HASH, UNSENT, MessageStatus, allowed


class MessageState(NamedTuple):
    """What the ledger knows of one message."""

    status: str
    content_hash: int
    conversation_id: str
    msec: int


class Messages:
    """The `messages` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def states(self, msgids: Iterable[str]) -> dict[str, MessageState]:
        """msgid -> (status, content hash, conversation_id, msec) for the messages the ledger knows."""
        return {row.msgid: MessageState(row.status, row.content_hash, row.conversation_id, row.msec)
                for row in self.db.rows_where_in(messages, messages.c.msgid, msgids)}

    def parts_of(self, msgid: str) -> dict[str, MessageState]:
        """The attachment parts of a message (msgids `{msgid}#...`) the ledger knows: a message of attachments
        alone is known only by them."""
        query = sa.select(messages).where(messages.c.msgid.startswith(f"{msgid}#", autoescape=True))
        with self.db.engine.connect() as conn:
            return {row.msgid: MessageState(row.status, row.content_hash, row.conversation_id, row.msec)
                    for row in conn.execute(query)}

    def refusals(self, msgids: Iterable[str]) -> dict[str, str | None]:
        """msgid -> what the ledger kept of amoCRM's refusal (`last_error`), for these messages refused for their
        data (`rejected`)."""
        return {row.msgid: row.last_error for row in self.db.rows_where_in(messages, messages.c.msgid, msgids)
                if row.status == MessageStatus.REJECTED}

    def register(self, rows: list[dict[str, Any]]) -> None:
        """Record messages as `pending` unless the ledger already knows them (whatever their status)."""
        if not rows:
            return
        now = time.time()
        rows = [{**r, "status": MessageStatus.PENDING.value, "attempts": 0, "updated_at": now} for r in rows]
        insert = self.db.insert_ignoring_known(messages)
        with self.db.engine.begin() as conn:
            for part in slices(rows, 10_000):
                conn.execute(insert, part)

    def place(self, rows: list[dict[str, Any]]) -> None:
        """Put messages nothing of which was sent (`MOVABLE`) where the source has them now: their conversation,
        time and content, `pending` (a `deleted` one came back). A message another run has begun to send
        meanwhile keeps its place: the update is conditional on its status, so exactly one of the two wins."""
        if not rows:
            return
        update = (messages.update()
                  .where(messages.c.msgid == sa.bindparam("m_msgid"),
                         sa.or_(*(messages.c.status == s.value for s in sorted(MOVABLE))))  # no IN: executemany
                  .values(conversation_id=sa.bindparam("m_conversation_id"), msec=sa.bindparam("m_msec"),
                          content_hash=sa.bindparam("m_content_hash"), text_hash=sa.bindparam("m_text_hash"),
                          status=MessageStatus.PENDING.value, updated_at=sa.bindparam("m_updated_at")))
        self._update_places(update, rows)

    def _update_places(self, update: sa.Update, rows: list[dict[str, Any]]) -> None:
        """Run `update` once per row (an executemany in slices), bound to the row's place and hashes (`m_…`)."""
        now = time.time()
        with self.db.engine.begin() as conn:
            for part in slices(rows, 10_000):
                conn.execute(update, [{"m_msgid": r["msgid"], "m_conversation_id": r["conversation_id"],
                                       "m_msec": r["msec"], "m_content_hash": r["content_hash"],
                                       "m_text_hash": r.get("text_hash"), "m_updated_at": now} for r in part])

    def begin_sending(self, rows: list[dict[str, Any]]) -> set[str]:
        """Mark a conversation's messages `sending` before its first request, each only where it still is (its
        conversation and time, not `deleted`): another run may have moved an unsent one since it was planned.
        Returns the msgids marked; the others are not this conversation's to send."""
        if not rows:
            return set()
        update = (messages.update()
                  .where(messages.c.msgid == sa.bindparam("m_msgid"),
                         messages.c.conversation_id == sa.bindparam("m_conversation_id"),
                         messages.c.msec == sa.bindparam("m_msec"),
                         messages.c.status != MessageStatus.DELETED.value)
                  .values(status=MessageStatus.SENDING.value, content_hash=sa.bindparam("m_content_hash"),
                          text_hash=sa.bindparam("m_text_hash"), updated_at=sa.bindparam("m_updated_at")))
        self._update_places(update, rows)
        places = {r["msgid"]: (r["conversation_id"], int(r["msec"])) for r in rows}
        return {msgid for msgid, state in self.states(places).items()
                if state.status == MessageStatus.SENDING and (state.conversation_id, int(state.msec)) == places[msgid]}

    def pending(self, msgids: Iterable[str]) -> set[str]:
        """Those of these messages the ledger holds as `pending`."""
        return {row.msgid for row in self.db.rows_where_in(messages, messages.c.msgid, msgids)
                if row.status == MessageStatus.PENDING}

    def pending_between(self, start_ms: int, end_ms: int) -> set[str]:
        """The `pending` messages of [start_ms, end_ms)."""
        query = sa.select(messages.c.msgid).where(messages.c.msec >= start_ms, messages.c.msec < end_ms,
                                                  messages.c.status == MessageStatus.PENDING.value)
        with self.db.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def withdraw(self, msgids: Iterable[str]) -> int:
        """Mark these messages `deleted` where they are still `pending`: the source no longer has them, and nothing of
        them was sent, so amoCRM is not expected to hold them. Returns how many."""
        withdrawn = 0
        with self.db.engine.begin() as conn:
            for part in slices(msgids):
                withdrawn += conn.execute(messages.update().where(
                    messages.c.msgid.in_(part), messages.c.status == MessageStatus.PENDING.value)
                    .values(status=MessageStatus.DELETED.value, updated_at=time.time())).rowcount
        return withdrawn

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Batch write of message states (one transaction for the batch); a column a row leaves out is kept.

        A message stays in the conversation and at the time it was first recorded with: amoCRM cannot move it.
        """
        now = time.time()
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            stored = {**row, "updated_at": now}
            if "status" in stored:
                stored["status"] = str(stored["status"])  # a MessageStatus is stored as its plain value
            by_shape.setdefault(tuple(sorted(row)), []).append(stored)
        with self.db.engine.begin() as conn:
            for batch in by_shape.values():
                self.db.upsert(conn, messages, batch, ["msgid"], kept=("conversation_id", "msec"))


    def mark(self, msgids: list[str], status: MessageStatus) -> int:
        """Move these messages to `status` (reconcile's repair marks the missing ones `failed`, to be sent again);
        a message whose status may not move there (`status.TRANSITIONS`) keeps its own. Returns how many moved."""
        sources = [s.value for s in MessageStatus if allowed(s, status)]
        moved = 0
        with self.db.engine.begin() as conn:
            for part in slices(msgids):
                moved += conn.execute(messages.update().where(messages.c.msgid.in_(part),
                                                              messages.c.status.in_(sources))
                                      .values(status=MessageStatus(status).value, updated_at=time.time())).rowcount
        return moved

    def mark_needs_edit(self, msgids: list[str]) -> None:
        """Say that amoCRM holds other content for these sent messages (reconcile's repair): the next run edits
        them to the source's."""
        with self.db.engine.begin() as conn:
            for part in slices(msgids):
                conn.execute(messages.update().where(messages.c.msgid.in_(part))
                             .values(content_hash=NEEDS_EDIT_HASH, updated_at=time.time()))

    def conversations_between(self, start_ms: int, end_ms: int) -> list[tuple[str, str | None]]:
        """(conversation_id, chat_id) of every conversation with a message of [start_ms, end_ms) in the ledger."""
        query = (sa.select(messages.c.conversation_id, chats.c.chat_id).distinct()
                 .select_from(messages.outerjoin(chats, messages.c.conversation_id == chats.c.conversation_id))
                 .where(messages.c.msec >= start_ms, messages.c.msec < end_ms)
                 .order_by(messages.c.conversation_id))
        with self.db.engine.connect() as conn:
            return [(row.conversation_id, row.chat_id) for row in conn.execute(query)]

    def between(self, conversation_ids: list[str], start_ms: int, end_ms: int) -> list[sa.Row]:
        """The ledger's rows for these conversations' messages of [start_ms, end_ms)."""
        rows: list[sa.Row] = []
        with self.db.engine.connect() as conn:
            for part in slices(conversation_ids):
                query = sa.select(messages).where(messages.c.conversation_id.in_(part),
                                                  messages.c.msec >= start_ms, messages.c.msec < end_ms)
                rows.extend(conn.execute(query))
        return rows

    def status_counts(self) -> dict[str, int]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status))
            return {status: count for status, count in rows}

    def earliest_unsent(self, conversation_ids: list[str], spans: list[tuple[int, int]]) -> dict[str, int]:
        """conversation_id -> msec of its earliest message not yet sent whose time lies in one of `spans`."""
        if not spans:
            return {}
        within = sa.or_(*(sa.and_(messages.c.msec >= start, messages.c.msec < end) for start, end in spans))
        found: dict[str, int] = {}
        with self.db.engine.connect() as conn:
            for part in slices(conversation_ids):
                query = (sa.select(messages.c.conversation_id, sa.func.min(messages.c.msec))
                         .where(messages.c.conversation_id.in_(part),
                                messages.c.status.in_(sorted(s.value for s in UNSENT)), within)
                         .group_by(messages.c.conversation_id))
                found.update({conversation: int(msec) for conversation, msec in conn.execute(query)})
        return found
