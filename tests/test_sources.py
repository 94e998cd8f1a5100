"""Sources: a conversation's `source_external_id` ties its chat to an amoCRM source when the chat is created;
a bad one (amoCRM takes at most 40 printable ASCII characters) rejects the conversation's rows with the reason."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd

from amojo.payloads import chat_payload
from etl.source import SourceFrames
from tasks.transform import Senders, transform

UTC = ZoneInfo("UTC")
SOURCES = {"v-wa": "whatsapp inbox 3", "v-none": None, "v-blank": "", "v-long": "x" * 41, "v-cyrillic": "телеграм",
           "v-tab": "web\tchat", "v-40": "~" * 40, "v-number": 7}


def _frames() -> SourceFrames:
    messages = pd.DataFrame([
        {"id": f"{conversation}-{n}", "conversation_id": conversation, "created_at": f"2026-10-05 12:00:0{n}",
         "updated_at": None, "direction": "in", "manager_id": None, "type": "text", "text": "hello",
         "media_url": None, "file_name": None, "file_size": None, "lat": None, "lon": None, "contact_name": None,
         "contact_phone": None} for conversation in SOURCES for n in (1, 2)], dtype=object)
    conversations = pd.DataFrame([(c, "c1", "2026-10-01 00:00:00", s) for c, s in SOURCES.items()],
                                 columns=["id", "client_id", "created_at", "source_external_id"], dtype=object)
    clients = pd.DataFrame([("c1", "Client", None, None, None, None)],
                           columns=["id", "name", "phone", "email", "avatar_url", "profile_url"], dtype=object)
    return SourceFrames(messages, conversations, clients, pd.DataFrame(columns=["id", "name", "email"], dtype=object))


def test_a_chat_is_created_with_its_source_and_a_bad_source_rejects_the_conversations_rows():
    batch = transform(_frames(), Senders({}, None), "s-", UTC)
    rejected = batch.rejects.set_index("source_key")["reason"]
    assert sorted(rejected.index) == sorted(f"message:{c}-{n}@2026-10-05T12:00:0{n}Z"
                                            for c in ("v-long", "v-cyrillic", "v-tab") for n in (1, 2))
    assert set(rejected) == {"bad_source_external_id"}
    assert set(batch.rejects["detail"]) == {"the conversation's source_external_id is not at most 40 printable "
                                            "ASCII characters (amoCRM's source.external_id)"}
    chats = {c: chat_payload(c, row) for c, row in zip(batch.conversations.index,
                                                        batch.conversations.itertuples(), strict=True)}
    assert {c: p.get("source") for c, p in chats.items()} == {
        "s-v-wa": {"external_id": "whatsapp inbox 3"}, "s-v-none": None, "s-v-blank": None,
        "s-v-40": {"external_id": "~" * 40}, "s-v-number": {"external_id": "7"}}


def test_the_emulator_ties_a_chat_to_its_first_source_for_good(emulator):
    from test_emulator_api import Amojo

    amojo = Amojo(emulator)
    assert amojo.connect().status_code == 200
    user = {"id": "u1", "name": "Client"}
    assert amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c1", "user": user,
                                                      "source": {"external_id": "telegram"}}).status_code == 200
    # Created again with another source, or with none: the chat stays tied to the first (§8, sources).
    for again in ({"source": {"external_id": "web"}}, {}):
        assert amojo.call("POST", f"{amojo.scope}/chats",
                          {"conversation_id": "c1", "user": user, **again}).status_code == 200
    assert amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c2", "user": user}).status_code == 200
    tied = {chat["conversation_id"]: chat["source_external_id"] for chat in emulator.emulator.store.chats()}
    assert tied == {"c1": "telegram", "c2": None}


def test_an_emulator_state_file_from_before_sources_opens(tmp_path):
    import sqlite3

    from amojo.emulator.store import Store

    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE chats (id TEXT PRIMARY KEY, scope_id TEXT, conversation_id TEXT, user_id TEXT, "
                "user_json TEXT, created_at REAL, UNIQUE (scope_id, conversation_id))")
    old.execute("INSERT INTO chats VALUES ('chat-1', 's', 'c1', 'u1', '{\"id\": \"u1\"}', 0)")
    old.commit()
    old.close()
    store = Store(str(path))
    try:
        store.tie_source("chat-1", "web")
        assert [(c["conversation_id"], c["source_external_id"]) for c in store.chats()] == [("c1", "web")]
    finally:
        store.close()
