"""The state file's tables, and their rows as the dicts the handlers work with."""

from __future__ import annotations

import json
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS scopes (scope_id TEXT PRIMARY KEY, account_id TEXT, title TEXT, hook_api_version TEXT,
    connected INTEGER);
CREATE TABLE IF NOT EXISTS chats (id TEXT PRIMARY KEY, scope_id TEXT, conversation_id TEXT, user_id TEXT,
    user_json TEXT, created_at REAL, source_external_id TEXT, UNIQUE (scope_id, conversation_id));
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, scope_id TEXT,
    chat_id TEXT, msgid TEXT, timestamp INTEGER, msec_timestamp INTEGER, sender_json TEXT, receiver_json TEXT,
    message_json TEXT, silent INTEGER, unlinked INTEGER, stored_at REAL, edited_at REAL, sender_amojo_id TEXT,
    receiver_amojo_id TEXT, reply_to TEXT, UNIQUE (scope_id, msgid));
CREATE INDEX IF NOT EXISTS messages_chat ON messages (chat_id, msec_timestamp);
CREATE TABLE IF NOT EXISTS contacts (id INTEGER PRIMARY KEY, name TEXT, phones TEXT, emails TEXT, body_json TEXT,
    created_at REAL, field_values TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS links (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT UNIQUE, contact_id INTEGER);
CREATE TABLE IF NOT EXISTS leads (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT, message_id TEXT,
    status TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS notifications (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT, message_id TEXT,
    kind TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, kind TEXT, valid INTEGER, expires_at REAL);
CREATE TABLE IF NOT EXISTS participants (scope_id TEXT, amojo_id TEXT, record_json TEXT,
    PRIMARY KEY (scope_id, amojo_id));
CREATE TABLE IF NOT EXISTS conversation_aliases (scope_id TEXT, conversation_id TEXT, chat_id TEXT,
    PRIMARY KEY (scope_id, conversation_id));
CREATE TABLE IF NOT EXISTS reactions (message_id TEXT, user_id TEXT, emoji TEXT, PRIMARY KEY (message_id, user_id));
CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, last INTEGER NOT NULL);
"""
TABLES = ("scopes", "chats", "messages", "contacts", "links", "leads", "notifications", "tokens", "participants",
          "conversation_aliases", "reactions", "sequences")


def chat_row(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    return {"id": row["id"], "scope_id": row["scope_id"], "conversation_id": row["conversation_id"],
            "user": json.loads(row["user_json"]), "source_external_id": row["source_external_id"]}


def message_row(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    return {
        "id": row["id"],
        "chat_id": row["chat_id"],
        "msgid": row["msgid"],
        "timestamp": row["timestamp"],
        "msec_timestamp": row["msec_timestamp"],
        "sender": json.loads(row["sender_json"]),
        "receiver": json.loads(row["receiver_json"]) if row["receiver_json"] else None,
        "message": json.loads(row["message_json"]),
        "silent": bool(row["silent"]),
        "unlinked": bool(row["unlinked"]),
        "stored_at": row["stored_at"],
        "edited_at": row["edited_at"],
        "reply_to": row["reply_to"],  # the quoted message's amojo id, as accepted; history does not show it
        "sender_amojo_id": row["sender_amojo_id"],
        "receiver_amojo_id": row["receiver_amojo_id"],
    }


def contact_row(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "phones": json.loads(row["phones"]),
        "emails": json.loads(row["emails"]),
        "values": json.loads(row["field_values"]),  # every custom field value, for search
        "body": json.loads(row["body_json"]),
    }
