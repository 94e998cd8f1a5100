"""The ready Chatwoot mapping (data/examples/chatwoot/mapping.toml), end to end on PostgreSQL: a database with
Chatwoot's own tables, columns and enum values (those the mapping reads, as db/schema.rb and app/models define
them), filled with what a real installation holds, imported through the import flow into the emulator.

Every message a client saw arrives once and in order, attachments as their own messages after their message's
text (a caption once), replies quoted; private notes, activity rows and deleted messages never leave; email HTML
arrives as plain text; each inbox ties its chats to its own amoCRM source; one contact per person.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import etl_env

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]

MAPPING = Path(__file__).resolve().parent.parent / "data" / "examples" / "chatwoot" / "mapping.toml"
DAY_ONE, DAY_TWO = date(2026, 10, 5), date(2026, 10, 6)

# Chatwoot's tables as db/schema.rb creates them (Rails: string = varchar, float = double precision, datetime
# without precision = timestamp), only the columns the mapping reads and those a row cannot be written without.
SCHEMA = """
CREATE TABLE inboxes (id serial PRIMARY KEY, channel_id integer NOT NULL, account_id integer NOT NULL,
    name varchar NOT NULL, created_at timestamp NOT NULL, updated_at timestamp NOT NULL, channel_type varchar);
CREATE TABLE contacts (id serial PRIMARY KEY, name varchar DEFAULT '', email varchar, phone_number varchar,
    account_id integer NOT NULL, created_at timestamp NOT NULL, updated_at timestamp NOT NULL);
CREATE TABLE users (id serial PRIMARY KEY, name varchar NOT NULL, display_name varchar, email varchar,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL);
CREATE TABLE agent_bots (id bigserial PRIMARY KEY, name varchar, created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL, account_id bigint);
CREATE TABLE conversations (id serial PRIMARY KEY, account_id integer NOT NULL, inbox_id integer NOT NULL,
    status integer DEFAULT 0 NOT NULL, created_at timestamp NOT NULL, updated_at timestamp NOT NULL,
    contact_id bigint, display_id integer NOT NULL);
CREATE TABLE messages (id serial PRIMARY KEY, content text, account_id integer NOT NULL, inbox_id integer NOT NULL,
    conversation_id integer NOT NULL, message_type integer NOT NULL, created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL, private boolean DEFAULT false NOT NULL, status integer DEFAULT 0,
    content_type integer DEFAULT 0 NOT NULL, content_attributes json DEFAULT '{}', sender_type varchar,
    sender_id bigint);
CREATE INDEX index_messages_on_created_at ON messages (created_at);
CREATE TABLE attachments (id serial PRIMARY KEY, file_type integer DEFAULT 0, external_url varchar,
    coordinates_lat double precision DEFAULT 0.0, coordinates_long double precision DEFAULT 0.0,
    message_id integer NOT NULL, account_id integer NOT NULL, created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL, fallback_title varchar, extension varchar, meta jsonb DEFAULT '{}');
CREATE TABLE active_storage_attachments (id bigserial PRIMARY KEY, name varchar NOT NULL,
    record_type varchar NOT NULL, record_id bigint NOT NULL, blob_id bigint NOT NULL, created_at timestamp NOT NULL);
CREATE TABLE active_storage_blobs (id bigserial PRIMARY KEY, key varchar NOT NULL, filename varchar NOT NULL,
    content_type varchar, metadata text, byte_size bigint NOT NULL, checksum varchar, created_at timestamp NOT NULL,
    service_name varchar NOT NULL)
"""

INCOMING, OUTGOING, ACTIVITY, TEMPLATE = 0, 1, 2, 3  # Message.message_type
TEXT, INCOMING_EMAIL = 0, 8  # Message.content_type
IMAGE, AUDIO, VIDEO, FILE, LOCATION, CONTACT = 0, 1, 2, 3, 4, 8  # Attachment.file_type

INBOXES = [(1, "Channel::Whatsapp"), (2, "Channel::Telegram"), (3, "Channel::WebWidget"), (4, "Channel::Email")]
CONTACTS = [  # the first two are one person, her phone spelled two ways
    (1, "Ольга Петрова", None, "+79161234567"), (2, "Olga P.", None, "8 (916) 123-45-67"),
    (3, "Ivan", "ivan@example.com", None), (4, "", None, None),
]
USERS = [(1, "Anna Smirnova", "Анна", "anna@example.com"),  # an amoCRM user of the emulator
         (2, "Zoe Agent", None, "zoe@example.com")]  # no amoCRM user
CONVERSATIONS = [(10, 1, 1), (11, 2, 2), (12, 3, 4), (13, 4, 3)]  # id, inbox, contact
EMAIL_HTML = ("<div><p>Hello&nbsp;team,</p><p>Invoice <b>#42</b> is attached &amp; paid.<br>Thanks</p>"
              "<style>p { color: red }</style></div>")

# id, conversation, minute of DAY_ONE 09:00, message_type, private, content, content_attributes, sender, content_type
MESSAGES = [
    (101, 10, 0, INCOMING, False, "Здравствуйте! Где мой заказ?", {}, ("Contact", 1), TEXT),
    (102, 10, 1, ACTIVITY, False, "Conversation was assigned to Anna Smirnova", {}, (None, None), TEXT),
    (103, 10, 2, OUTGOING, False, "Добрый день! Уже в пути.", {"in_reply_to": 101}, ("User", 1), TEXT),
    (104, 10, 3, OUTGOING, True, "PRIVATE: VIP client, no discount talk", {}, ("User", 1), TEXT),
    (105, 10, 4, INCOMING, False, None, {}, ("Contact", 1), TEXT),
    (106, 10, 5, INCOMING, False, "Вот фото и голосовое", {}, ("Contact", 1), TEXT),
    (107, 10, 6, OUTGOING, False, "Zoe here, checking", {}, ("User", 2), TEXT),
    (108, 10, 7, INCOMING, False, "This message was deleted", {"deleted": True}, ("Contact", 1), TEXT),
    (109, 10, 8, INCOMING, False, None, {}, ("Contact", 1), TEXT),
    (110, 10, 9, INCOMING, False, None, {}, ("Contact", 1), TEXT),
    (111, 10, 10, OUTGOING, False, "as my note says", {"in_reply_to": 104}, ("User", 1), TEXT),
    (112, 10, 11, INCOMING, False, "I ordered 2 items", {}, ("Contact", 1), TEXT),
    (114, 10, 12, OUTGOING, False, "Got both files", {"in_reply_to": 105}, ("User", 1), TEXT),
    (115, 10, 13, ACTIVITY, False, "Conversation was resolved by Anna Smirnova", {}, (None, None), TEXT),
    (201, 11, 60, INCOMING, False, "Hi from Telegram", {}, ("Contact", 2), TEXT),
    (202, 11, 61, OUTGOING, False, "Bot: we will answer soon", {}, ("AgentBot", 1), TEXT),
    (203, 11, 62, TEMPLATE, False, "Please rate the conversation", {}, (None, None), TEXT),
    (204, 11, 63, OUTGOING, True, "PRIVATE: bot handed over", {}, ("AgentBot", 1), TEXT),
    (301, 12, 120, INCOMING, False, "Hello from the website", {}, ("Contact", 4), TEXT),
    (302, 12, 121, OUTGOING, False, "Hi! How can I help?", {}, ("User", 1), TEXT),
    (401, 13, 180, INCOMING, False, EMAIL_HTML, {}, ("Contact", 3), INCOMING_EMAIL),
    (402, 13, 185, OUTGOING, False, "Thank you, received.", {}, ("User", 1), TEXT),
]
# id, message, file_type, blob (key, filename, bytes, service, metadata) or None, external_url, lat, lon,
# fallback_title, meta
ATTACHMENTS = [
    (1001, 105, IMAGE, ("ab12cd34photo", "photo.jpg", 2048, "local", None), None, 0, 0, None, {}),
    (1002, 105, FILE, ("s3keyinvoice01", "invoice.pdf", 4096, "amazon", None), None, 0, 0, None, {}),
    (1003, 106, IMAGE, ("s3keyphoto0002", "cat.png", 1000, "amazon", None), None, 0, 0, None, {}),
    (1004, 106, AUDIO, ("s3keyvoice0003", "voice.ogg", 900, "amazon", '{"analyzed":true,"duration":7.4}'),
     None, 0, 0, None, {"is_recorded_audio": True}),
    (1005, 106, VIDEO, ("s3keyvideo0004", "clip.mp4", 90000, "amazon", None), None, 0, 0, None, {}),
    (1006, 109, LOCATION, None, "https://maps.example/?q=55.75,37.61", 55.7539, 37.6208, "Red Square", {}),
    (1007, 110, CONTACT, None, None, 0, 0, "+79990001122", {"firstName": "Courier", "lastName": "Ivanov"}),
    (1008, 104, IMAGE, ("s3keysecret005", "secret.png", 10, "amazon", None), None, 0, 0, None, {}),
    (1009, 401, FILE, ("s3keyemail0006", "invoice-42.pdf", 5000, "amazon", None), None, 0, 0, None, {}),
]


def _chatwoot(url: str) -> None:
    """Chatwoot's tables, filled as an installation fills them on DAY_ONE."""
    engine = sa.create_engine(url)
    stamp = f"{DAY_ONE.isoformat()} 08:00:00"
    with engine.begin() as conn:
        for statement in SCHEMA.split(";"):
            conn.exec_driver_sql(statement)
        for id_, channel_type in INBOXES:
            conn.execute(sa.text("INSERT INTO inboxes VALUES (:id, :id, 1, :name, :t, :t, :kind)"),
                         {"id": id_, "name": channel_type.removeprefix("Channel::"), "t": stamp, "kind": channel_type})
        for id_, name, email, phone in CONTACTS:
            conn.execute(sa.text("INSERT INTO contacts VALUES (:id, :name, :email, :phone, 1, :t, :t)"),
                         {"id": id_, "name": name, "email": email, "phone": phone, "t": stamp})
        for id_, name, display, email in USERS:
            conn.execute(sa.text("INSERT INTO users VALUES (:id, :name, :display, :email, :t, :t)"),
                         {"id": id_, "name": name, "display": display, "email": email, "t": stamp})
        conn.execute(sa.text("INSERT INTO agent_bots VALUES (1, 'Helpdesk Bot', :t, :t, 1)"), {"t": stamp})
        for id_, inbox, contact in CONVERSATIONS:
            conn.execute(sa.text("INSERT INTO conversations VALUES (:id, 1, :inbox, 0, :t, :t, :contact, :id)"),
                         {"id": id_, "inbox": inbox, "contact": contact, "t": stamp})
        for id_, conversation, minute, kind, private, content, attributes, sender, content_type in MESSAGES:
            _message(conn, id_, conversation, f"{DAY_ONE.isoformat()} {9 + minute // 60:02d}:{minute % 60:02d}:00",
                     kind, private, content, attributes, sender, content_type)
        for id_, message, file_type, blob, external, lat, lon, title, meta in ATTACHMENTS:
            conn.execute(sa.text(
                "INSERT INTO attachments VALUES (:id, :type, :external, :lat, :lon, :message, 1, :t, :t, :title, "
                "NULL, CAST(:meta AS jsonb))"),
                {"id": id_, "type": file_type, "external": external, "lat": lat, "lon": lon, "message": message,
                 "t": stamp, "title": title, "meta": _json(meta)})
            if blob is not None:
                key, filename, size, service, metadata = blob
                conn.execute(sa.text("INSERT INTO active_storage_blobs VALUES (:id, :key, :name, NULL, :metadata, "
                                     ":size, NULL, :t, :service)"),
                             {"id": id_, "key": key, "name": filename, "metadata": metadata, "size": size, "t": stamp,
                              "service": service})
                conn.execute(sa.text("INSERT INTO active_storage_attachments VALUES (:id, 'file', 'Attachment', :id, "
                                     ":id, :t)"), {"id": id_, "t": stamp})
    engine.dispose()


def _json(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _message(conn: sa.Connection, id_: int, conversation: int, at: str, kind: int, private: bool,
             content: str | None, attributes: dict, sender: tuple, content_type: int) -> None:
    inbox = next(inbox for c, inbox, _ in CONVERSATIONS if c == conversation)
    conn.execute(sa.text(
        "INSERT INTO messages (id, content, account_id, inbox_id, conversation_id, message_type, created_at, "
        "updated_at, private, content_type, content_attributes, sender_type, sender_id) VALUES (:id, :content, 1, "
        ":inbox, :conversation, :kind, :at, :at, :private, :content_type, CAST(:attributes AS json), :sender_type, "
        ":sender_id)"),
        {"id": id_, "content": content, "inbox": inbox, "conversation": conversation, "kind": kind, "at": at,
         "private": private, "content_type": content_type, "attributes": _json(attributes),
         "sender_type": sender[0], "sender_id": sender[1]})


def _day_two(url: str) -> None:
    """DAY_TWO: the client edits her message of DAY_ONE and writes one more; an agent deletes a message already
    imported (Chatwoot keeps the row, marked deleted)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET content = 'I ordered 3 items', updated_at = :t WHERE id = 112"),
                     {"t": f"{DAY_TWO.isoformat()} 08:00:00"})
        conn.execute(sa.text("UPDATE messages SET content = 'This message was deleted', "
                             "content_attributes = CAST('{\"deleted\": true}' AS json), updated_at = :t "
                             "WHERE id = 301"), {"t": f"{DAY_TWO.isoformat()} 08:30:00"})
        _message(conn, 113, 10, f"{DAY_TWO.isoformat()} 09:00:00", INCOMING, False, "One more thing", {},
                 ("Contact", 1), TEXT)
    engine.dispose()


async def test_a_chatwoot_installation_arrives_as_its_clients_saw_it(emulator, postgres_url, tmp_path, monkeypatch):
    from flows.import_chats import import_chats

    _chatwoot(postgres_url)
    # The API settings, the source and the mapping: nothing else (the ledger goes to this test's directory).
    env = {**etl_env(emulator, postgres_url, f"sqlite:///{tmp_path / 'ledger.db'}"), "AMOJO_ETL_MAPPING": str(MAPPING)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    first = await import_chats(start=DAY_ONE, end=DAY_TWO)
    assert first["verdict"] == "complete", first
    assert first["rejected"] == 0, first["rejects_by_reason"]
    _day_two(postgres_url)
    second = await import_chats(start=DAY_TWO, end=date(2026, 10, 7))
    assert second["verdict"] == "complete", second
    assert second["messages_edited"] == 1 and second["rejected"] == 0, second

    snapshot = emulator.emulator.snapshot()
    chats = {chat["conversation_id"]: chat for chat in snapshot["chats"]}
    in_chat = {conversation: snapshot["messages"][chat["id"]] for conversation, chat in chats.items()}
    every = [m for messages in in_chat.values() for m in messages]

    def shown(m: dict) -> tuple:
        body = m["message"]
        what = {"text": body.get("text"), "location": body.get("location"), "contact": body.get("contact")}
        return (m["msgid"], body["type"], *(v for v in what.values() if v is not None))

    # Every client-visible item once, in order: a message's text, then its attachments in their order.
    assert Counter(m["msgid"] for m in every).most_common(1)[0][1] == 1
    assert [shown(m) for m in in_chat["ae-10"]] == [
        ("ae-101", "text", "Здравствуйте! Где мой заказ?"),
        ("ae-103", "text", "Добрый день! Уже в пути."),
        ("ae-105#1001", "picture"), ("ae-105#1002", "file"),  # attachments alone: no empty text
        ("ae-106", "text", "Вот фото и голосовое"),  # the caption, once, before its attachments
        ("ae-106#1003", "picture"), ("ae-106#1004", "voice"), ("ae-106#1005", "video"),
        ("ae-107", "text", "Zoe here, checking"),
        ("ae-109#1006", "location", {"lat": 55.7539, "lon": 37.6208}),
        ("ae-110#1007", "contact", {"name": "Courier Ivanov", "phone": "+79990001122"}),
        ("ae-111", "text", "as my note says"),
        ("ae-112", "text", "I ordered 3 items"),  # edited on DAY_TWO
        ("ae-114", "text", "Got both files"),
        ("ae-113", "text", "One more thing"),
    ]
    assert [shown(m) for m in in_chat["ae-11"]] == [
        ("ae-201", "text", "Hi from Telegram"), ("ae-202", "text", "Bot: we will answer soon"),
        ("ae-203", "text", "Please rate the conversation")]
    # Deleted at the source after it was sent: amoCRM keeps it (an import never deletes).
    assert [shown(m) for m in in_chat["ae-12"]] == [
        ("ae-301", "text", "Hello from the website"), ("ae-302", "text", "Hi! How can I help?")]
    assert [shown(m) for m in in_chat["ae-13"]] == [
        ("ae-401", "text", "Hello team,\nInvoice #42 is attached & paid.\nThanks"),  # email HTML as plain text
        ("ae-401#1009", "file"), ("ae-402", "text", "Thank you, received.")]
    assert set(in_chat) == {"ae-10", "ae-11", "ae-12", "ae-13"} and len(every) == 23

    # Nothing private, no activity row, no message deleted before it was imported, no attachment of those.
    sent_ids = {m["msgid"].split("#")[0] for m in every}
    assert not sent_ids & {"ae-102", "ae-104", "ae-108", "ae-115", "ae-204"}
    assert not any("PRIVATE" in (m["message"].get("text") or "") for m in every)
    assert not any("secret" in (m["message"].get("file_name") or "") for m in every)

    # Replies: quoted when the answered message is in the chat (an attachment-only one by its first attachment);
    # a reply to a private note goes without the quote.
    quoted = {m["msgid"]: m["reply_to"] for m in every if m.get("reply_to")}
    msgid_of = {m["id"]: m["msgid"] for m in every}
    assert {msgid: msgid_of[amojo_id] for msgid, amojo_id in quoted.items()} == {
        "ae-103": "ae-101", "ae-114": "ae-105#1001"}

    # Files: Chatwoot's ActiveStorage blobs under the default base, the local disk service's layout for its own.
    media = {m["msgid"]: m["message"] for m in every if m["message"].get("media")}
    assert media["ae-105#1001"]["media"] == "http://localhost:3000/storage/ab/12/ab12cd34photo"
    assert media["ae-105#1002"]["media"] == "http://localhost:3000/storage/s3keyinvoice01"
    assert (media["ae-105#1002"]["file_name"], media["ae-105#1002"]["file_size"]) == ("invoice.pdf", 4096)

    # Agents by email; an agent without an amoCRM user, a bot and a template go as the channel bot, under their
    # own name where they have one.
    users = {u.email: u.amojo_id for u in emulator.emulator.config.users}
    bot = emulator.emulator.config.bot_id
    by_msgid = {m["msgid"]: m for m in every}
    assert by_msgid["ae-103"]["sender_amojo_id"] == users["anna@example.com"]
    assert [(by_msgid[i]["sender_amojo_id"], by_msgid[i]["sender"]["name"]) for i in ("ae-107", "ae-202")] == [
        (bot, "Zoe Agent"), (bot, "Helpdesk Bot")]
    assert by_msgid["ae-203"]["sender_amojo_id"] == bot

    # Each inbox's chats tied to its own amoCRM source; one contact for the person behind two spellings of a phone.
    assert {c: chat["source_external_id"] for c, chat in chats.items()} == {
        "ae-10": "chatwoot-whatsapp-1", "ae-11": "chatwoot-telegram-2", "ae-12": "chatwoot-webwidget-3",
        "ae-13": "chatwoot-email-4"}
    contact_of = {link["chat_id"]: link["contact_id"] for link in snapshot["links"]}
    assert contact_of[chats["ae-10"]["id"]] == contact_of[chats["ae-11"]["id"]]
    assert len(snapshot["contacts"]) == 3
    assert snapshot["leads"] == [] and snapshot["notifications"] == []
