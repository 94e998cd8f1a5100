"""The emulated account's state in SQLite: in memory by default, or in a file that survives a restart.

Ids are derived (uuid5) from what the client sent, so a restarted emulator answers with the same ids.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .schema import SCHEMA, TABLES, chat_row, contact_row, message_row

_NS = uuid.UUID("0b6a3f7e-5c1d-4e8a-9f2b-7d4c1e0a9b35")

CONTACT_ID_START = 3_100_000


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


def digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def field_values(body: dict) -> list[str]:
    """Every filled custom field value of a contact, as text: what amoCRM's contact search looks in."""
    values: list[str] = []
    custom_fields = body.get("custom_fields_values")
    for custom_field in custom_fields if isinstance(custom_fields, list) else []:
        if not isinstance(custom_field, dict):
            continue
        entries = custom_field.get("values")
        for value in entries if isinstance(entries, list) else []:
            if isinstance(value, dict) and value.get("value") not in (None, ""):
                values.append(str(value["value"]))
    return values


class Store:
    """Chats, messages, contacts, links, leads and notifications of one emulated account."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or ":memory:"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if path:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        """Bring a state file written by an older emulator up to this schema."""
        columns = {row["name"] for row in self._all("PRAGMA table_info(contacts)")}
        if "field_values" not in columns:  # before issue 12: derive the searchable values from the stored bodies
            with self.transaction() as db:
                db.execute("ALTER TABLE contacts ADD COLUMN field_values TEXT NOT NULL DEFAULT '[]'")
                for row in db.execute("SELECT id, body_json FROM contacts").fetchall():
                    db.execute("UPDATE contacts SET field_values = ? WHERE id = ?",
                               (json.dumps(field_values(json.loads(row["body_json"]))), row["id"]))
        columns = {row["name"] for row in self._all("PRAGMA table_info(messages)")}
        if "sender_amojo_id" not in columns:  # before issue 15: history derives them from the stored payload
            with self.transaction() as db:
                db.execute("ALTER TABLE messages ADD COLUMN sender_amojo_id TEXT")
                db.execute("ALTER TABLE messages ADD COLUMN receiver_amojo_id TEXT")
        if "reply_to" not in columns:  # before issue 26: no quote was kept
            with self.transaction() as db:
                db.execute("ALTER TABLE messages ADD COLUMN reply_to TEXT")
        columns = {row["name"] for row in self._all("PRAGMA table_info(chats)")}
        if "source_external_id" not in columns:  # before issue 26: no chat was tied to a source
            with self.transaction() as db:
                db.execute("ALTER TABLE chats ADD COLUMN source_external_id TEXT")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def reset(self) -> None:
        with self.transaction() as db:
            for table in TABLES:
                db.execute(f"DELETE FROM {table}")

    # -- scopes
    def connect(self, scope_id: str, account_id: str, title: str, hook_api_version: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO scopes VALUES (?, ?, ?, ?, 1) ON CONFLICT (scope_id) DO UPDATE SET connected = 1, "
                "title = excluded.title, hook_api_version = excluded.hook_api_version",
                (scope_id, account_id, title, hook_api_version),
            )

    def disconnect(self, scope_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE scopes SET connected = 0 WHERE scope_id = ?", (scope_id,))

    def is_connected(self, scope_id: str) -> bool:
        row = self._one("SELECT connected FROM scopes WHERE scope_id = ?", scope_id)
        return bool(row and row["connected"])

    # -- chats
    def chat_by_conversation(self, scope_id: str, conversation_id: str) -> dict | None:
        """The chat `conversation_id` names: the one created for it, or the one it was bound to by
        `conversation_ref_id`."""
        row = self._one("SELECT * FROM chats WHERE scope_id = ? AND conversation_id = ?", scope_id, conversation_id)
        if row is None:
            row = self._one("SELECT chats.* FROM conversation_aliases a JOIN chats ON chats.id = a.chat_id "
                            "WHERE a.scope_id = ? AND a.conversation_id = ?", scope_id, conversation_id)
        return chat_row(row)

    def bind_conversation(self, scope_id: str, conversation_id: str, chat_id: str) -> None:
        """Make `conversation_id` another name of the chat `chat_id` (a reply to a chat amoCRM started, §4.4)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO conversation_aliases VALUES (?, ?, ?)",
                       (scope_id, conversation_id, chat_id))

    def conversation_aliases(self) -> list[dict]:
        return [dict(row) for row in self._all("SELECT * FROM conversation_aliases ORDER BY rowid")]

    def chat(self, chat_id: str) -> dict | None:
        return chat_row(self._one("SELECT * FROM chats WHERE id = ?", chat_id))

    def create_chat(self, scope_id: str, conversation_id: str, user: dict) -> tuple[dict, bool]:
        """The chat for `conversation_id`, created if new; True when it was created now."""
        with self.transaction() as db:
            existing = db.execute(
                "SELECT * FROM chats WHERE scope_id = ? AND conversation_id = ?", (scope_id, conversation_id)
            ).fetchone() or db.execute(
                "SELECT chats.* FROM conversation_aliases a JOIN chats ON chats.id = a.chat_id "
                "WHERE a.scope_id = ? AND a.conversation_id = ?", (scope_id, conversation_id)
            ).fetchone()
            if existing:
                return chat_row(existing), False  # type: ignore[return-value]
            chat_id = derived_id("chat", scope_id, conversation_id)
            db.execute(
                "INSERT INTO chats (id, scope_id, conversation_id, user_id, user_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (chat_id, scope_id, conversation_id, user.get("id"), json.dumps(user), time.time()),
            )
        return self.chat(chat_id), True  # type: ignore[return-value]

    def tie_source(self, chat_id: str, external_id: str) -> None:
        """Tie the chat to a source, unless it is tied already: amoCRM never unties a chat (§8, sources)."""
        with self.transaction() as db:
            db.execute("UPDATE chats SET source_external_id = ? WHERE id = ? AND source_external_id IS NULL",
                       (external_id, chat_id))

    def chats(self) -> list[dict]:
        return [chat_row(row) for row in self._all("SELECT * FROM chats ORDER BY rowid")]  # type: ignore[misc]

    def chat_overview(self, offset: int = 0, limit: int = 100) -> list[dict]:
        """A page of chats in creation order, each with its message count, its last message's msec timestamp and
        the contact it is linked to (None): what a list of the chats shows, read in one query."""
        rows = self._all(
            "SELECT chats.*, COUNT(m.seq) AS message_count, MAX(m.msec_timestamp) AS last_msec, "
            "links.contact_id AS contact_id FROM chats LEFT JOIN messages m ON m.chat_id = chats.id "
            "LEFT JOIN links ON links.chat_id = chats.id GROUP BY chats.id ORDER BY chats.rowid LIMIT ? OFFSET ?",
            limit, offset)
        return [{**chat_row(row), "message_count": row["message_count"], "last_msec": row["last_msec"],  # type: ignore[dict-item]
                 "contact_id": row["contact_id"]} for row in rows]

    def counts(self) -> dict[str, int]:
        """Rows per table of the account's data (chats, messages, contacts, links, leads, notifications)."""
        tables = ("chats", "messages", "contacts", "links", "leads", "notifications")
        return {table: int(self._one(f"SELECT COUNT(*) FROM {table}")[0]) for table in tables}  # type: ignore[index]

    # -- messages
    def message_by_msgid(self, scope_id: str, msgid: str) -> dict | None:
        return message_row(self._one("SELECT * FROM messages WHERE scope_id = ? AND msgid = ?", scope_id, msgid))

    def message(self, message_id: str) -> dict | None:
        return message_row(self._one("SELECT * FROM messages WHERE id = ?", message_id))

    def add_message(self, scope_id: str, chat_id: str, payload: dict, *, unlinked: bool,
                    sender_amojo_id: str | None = None, receiver_amojo_id: str | None = None,
                    reply_to: str | None = None) -> dict:
        """Store a new message; `reply_to` is the amojo id of the message it quotes, kept for inspection only (the
        documented history does not carry it)."""
        message_id = derived_id("message", scope_id, payload["msgid"])
        msec = payload.get("msec_timestamp")
        if msec is None:
            msec = int(payload["timestamp"]) * 1000
        with self.transaction() as db:
            db.execute(
                "INSERT INTO messages (id, scope_id, chat_id, msgid, timestamp, msec_timestamp, sender_json, "
                "receiver_json, message_json, silent, unlinked, stored_at, sender_amojo_id, receiver_amojo_id, "
                "reply_to) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    message_id,
                    scope_id,
                    chat_id,
                    payload["msgid"],
                    int(payload["timestamp"]),
                    int(msec),
                    json.dumps(payload.get("sender") or {}),
                    json.dumps(payload["receiver"]) if payload.get("receiver") else None,
                    json.dumps(payload["message"]),
                    int(bool(payload.get("silent", False))),
                    int(unlinked),
                    time.time(),
                    sender_amojo_id,
                    receiver_amojo_id,
                    reply_to,
                ),
            )
        return self.message(message_id)  # type: ignore[return-value]

    def edit_message(self, message_id: str, message: dict) -> dict:
        current = self.message(message_id)
        assert current is not None
        merged = dict(current["message"])
        merged.update(message)
        with self.transaction() as db:
            db.execute(
                "UPDATE messages SET message_json = ?, edited_at = ? WHERE id = ?",
                (json.dumps(merged), time.time(), message_id),
            )
        return self.message(message_id)  # type: ignore[return-value]

    def drop_message(self, msgid: str) -> None:
        """Lose a message, as a test of what reconciliation finds (amoCRM has no such call)."""
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE msgid = ?", (msgid,))

    def chat_messages(self, chat_id: str, visible_before: float | None = None) -> list[dict]:
        """Messages of a chat in arrival order; with `visible_before`, only those stored before that moment."""
        sql = "SELECT * FROM messages WHERE chat_id = ?"
        args: list[Any] = [chat_id]
        if visible_before is not None:
            sql += " AND stored_at <= ?"
            args.append(visible_before)
        return [message_row(row) for row in self._all(sql + " ORDER BY seq", *args)]  # type: ignore[misc]

    def messages(self) -> list[dict]:
        return [message_row(row) for row in self._all("SELECT * FROM messages ORDER BY seq")]  # type: ignore[misc]

    # -- participants: one record per amojo user, what history shows for every message of that user
    def participant(self, scope_id: str, amojo_id: str) -> dict | None:
        row = self._one("SELECT record_json FROM participants WHERE scope_id = ? AND amojo_id = ?", scope_id, amojo_id)
        return json.loads(row["record_json"]) if row else None

    def put_participant(self, scope_id: str, amojo_id: str, record: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO participants VALUES (?, ?, ?)", (scope_id, amojo_id, json.dumps(record)))

    def participants(self) -> list[dict]:
        rows = self._all("SELECT record_json FROM participants ORDER BY rowid")
        return [json.loads(row["record_json"]) for row in rows]

    # -- reactions (§3.8): one per user and message
    def react(self, message_id: str, user_id: str, emoji: str | None) -> None:
        """Set the user's reaction to a message; None takes it back."""
        with self.transaction() as db:
            db.execute("DELETE FROM reactions WHERE message_id = ? AND user_id = ?", (message_id, user_id))
            if emoji is not None:
                db.execute("INSERT INTO reactions VALUES (?, ?, ?)", (message_id, user_id, emoji))

    def reactions(self) -> list[dict]:
        return [dict(row) for row in self._all("SELECT * FROM reactions ORDER BY rowid")]

    # -- contacts and links
    def create_contact(self, body: dict, name: str, phones: list[str], emails: list[str]) -> int:
        """A new contact, with an id no contact ever had: amoCRM never reuses the id of one deleted or merged
        (amojo-api.md §6.3)."""
        with self.transaction() as db:
            row = db.execute("SELECT MAX(COALESCE((SELECT last FROM sequences WHERE name = 'contacts'), ?), "
                             "COALESCE((SELECT MAX(id) FROM contacts), ?)) + 1",
                             (CONTACT_ID_START, CONTACT_ID_START)).fetchone()
            contact_id = int(row[0])
            db.execute("INSERT INTO sequences VALUES ('contacts', ?) ON CONFLICT (name) DO UPDATE SET last = "
                       "excluded.last", (contact_id,))
            db.execute(
                "INSERT INTO contacts (id, name, phones, emails, body_json, created_at, field_values) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (contact_id, name, json.dumps(phones), json.dumps(emails), json.dumps(body), time.time(),
                 json.dumps(field_values(body))),
            )
        return contact_id

    def contacts(self) -> list[dict]:
        return [contact_row(row) for row in self._all("SELECT * FROM contacts ORDER BY id")]

    def contact(self, contact_id: int) -> dict | None:
        row = self._one("SELECT * FROM contacts WHERE id = ?", contact_id)
        return contact_row(row) if row else None

    def drop_contact(self, contact_id: int) -> bool:
        """Delete a contact, as a person tidying duplicates in amoCRM would: its chats are left unlinked. False when
        there is no such contact."""
        with self.transaction() as db:
            db.execute("DELETE FROM links WHERE contact_id = ?", (contact_id,))
            return db.execute("DELETE FROM contacts WHERE id = ?", (contact_id,)).rowcount == 1

    def merge_contacts(self, survivor: int, merged: int) -> bool:
        """Merge `merged` into `survivor`, as amoCRM's merge of duplicates does: the survivor keeps its own values
        and gains the other's phones, emails and field values; the other's chats move to it (new link ids, Q15);
        the other id is gone. False when either contact does not exist or they are one."""
        with self.transaction() as db:
            rows = {row["id"]: row for row in db.execute("SELECT * FROM contacts WHERE id IN (?, ?)",
                                                         (survivor, merged)).fetchall()}
            if survivor == merged or len(rows) != 2:
                return False
            keep, gone = rows[survivor], rows[merged]
            body = json.loads(keep["body_json"])
            body["custom_fields_values"] = (body.get("custom_fields_values") or []) + \
                (json.loads(gone["body_json"]).get("custom_fields_values") or [])
            union = {column: json.dumps(list(dict.fromkeys(json.loads(keep[column]) + json.loads(gone[column]))))
                     for column in ("phones", "emails", "field_values")}
            db.execute("UPDATE contacts SET phones = ?, emails = ?, field_values = ?, body_json = ? WHERE id = ?",
                       (union["phones"], union["emails"], union["field_values"], json.dumps(body), survivor))
            chats = [row["chat_id"] for row in db.execute("SELECT chat_id FROM links WHERE contact_id = ?",
                                                          (merged,)).fetchall()]
            db.execute("DELETE FROM links WHERE contact_id = ?", (merged,))
            db.executemany("INSERT INTO links (chat_id, contact_id) VALUES (?, ?)", [(c, survivor) for c in chats])
            db.execute("DELETE FROM contacts WHERE id = ?", (merged,))
        return True

    def link(self, chat_id: str, contact_id: int) -> int:
        """Link a chat to a contact; a chat already linked elsewhere moves, with a new link id (Q15)."""
        with self.transaction() as db:
            row = db.execute("SELECT id, contact_id FROM links WHERE chat_id = ?", (chat_id,)).fetchone()
            if row and row["contact_id"] == contact_id:
                return int(row["id"])
            if row:
                db.execute("DELETE FROM links WHERE chat_id = ?", (chat_id,))
            cursor = db.execute("INSERT INTO links (chat_id, contact_id) VALUES (?, ?)", (chat_id, contact_id))
            return int(cursor.lastrowid)  # type: ignore[arg-type]

    def links(self, chat_ids: list[str] | None = None, contact_ids: list[int] | None = None) -> list[dict]:
        rows = [dict(row) for row in self._all("SELECT * FROM links ORDER BY id")]
        if chat_ids:
            rows = [r for r in rows if r["chat_id"] in set(chat_ids)]
        if contact_ids:
            rows = [r for r in rows if r["contact_id"] in set(contact_ids)]
        return rows

    def is_linked(self, chat_id: str) -> bool:
        return self._one("SELECT 1 FROM links WHERE chat_id = ?", chat_id) is not None

    # -- amoCRM's side effects
    def add_lead(self, chat_id: str, message_id: str) -> None:
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM leads WHERE chat_id = ?", (chat_id,)).fetchone():
                db.execute(
                    "INSERT INTO leads (chat_id, message_id, status, created_at) VALUES (?, ?, 'unsorted', ?)",
                    (chat_id, message_id, time.time()),
                )

    def add_notification(self, chat_id: str, message_id: str, kind: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO notifications (chat_id, message_id, kind, created_at) VALUES (?, ?, ?, ?)",
                (chat_id, message_id, kind, time.time()),
            )

    def leads(self) -> list[dict]:
        return [dict(row) for row in self._all("SELECT * FROM leads ORDER BY id")]

    def notifications(self) -> list[dict]:
        return [dict(row) for row in self._all("SELECT * FROM notifications ORDER BY id")]

    # -- OAuth tokens
    def token_state(self, token: str) -> tuple[str, bool] | None:
        """(kind, usable): an access token past its expiry is no longer usable."""
        row = self._one("SELECT kind, valid, expires_at FROM tokens WHERE token = ?", token)
        if not row:
            return None
        return row["kind"], bool(row["valid"]) and (row["expires_at"] is None or row["expires_at"] > time.time())

    def put_token(self, token: str, kind: str, ttl_s: float | None = None) -> None:
        expires_at = time.time() + ttl_s if ttl_s else None
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?, 1, ?)", (token, kind, expires_at))

    def spend_refresh_token(self, token: str) -> bool:
        """Single use: True the first time a valid refresh token is spent, False ever after."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE tokens SET valid = 0 WHERE token = ? AND kind = 'refresh' AND valid = 1", (token,)
            )
            return cursor.rowcount == 1
