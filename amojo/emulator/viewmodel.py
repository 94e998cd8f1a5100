"""What amoCRM's view of the emulated account shows, read from the store: each chat with its contact, each message
as a manager sees it (who wrote it, when, silent or not, what it quotes, what it carries), the contact card, the
unsorted leads and notifications, and the account's faults and counters.

Plain values only: the pages (`views`, `templates/`) lay them out and escape them; nothing here is HTML.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .config import Faults
from .inputs import MEDIA_TYPES
from .participants import record_from_payload

if TYPE_CHECKING:
    from .app import Emulator

CHATS_PER_PAGE = 100
QUOTE_CHARS = 200  # a quote shows the start of its original, as a messenger does


@dataclass(frozen=True)
class Sender:
    """Who wrote a message, as amoCRM labels it: a manager by name, the channel's bot, or the client."""

    kind: str  # "manager", "bot" or "client"
    name: str


@dataclass(frozen=True)
class Attachment:
    """What a message carries besides its text. `url` is an http(s) address or None: anything else a hostile
    message sends (`javascript:`, `data:`) is never made a link."""

    kind: str  # "picture", "file" (also video, voice, audio), "sticker", "location" or "contact"
    type: str
    url: str | None = None
    name: str = ""
    size: str = ""
    lat: float | None = None
    lon: float | None = None
    phone: str = ""


@dataclass(frozen=True)
class Quote:
    """The message a reply quotes: its sender, the start of its text, and its id, the anchor it is shown at."""

    sender: Sender
    summary: str
    anchor: str


@dataclass(frozen=True)
class MessageView:
    id: str
    msgid: str
    time: str
    sender: Sender
    text: str
    silent: bool
    edited: bool
    unlinked: bool
    quote: Quote | None
    attachment: Attachment | None
    fetch_failed: str | None  # why amoCRM could not download its media (with --fetch-media), else None


@dataclass(frozen=True)
class ChatLine:
    """One chat in the list: its client, its contact, how many messages and the last one's time."""

    id: str
    conversation_id: str
    client: str
    contact_id: int | None
    contact_name: str
    message_count: int
    last: str


@dataclass
class Glance:
    """The account at a glance: what it holds, what it was asked, which faults are on."""

    counts: dict[str, int]
    requests: list[tuple[str, int]]
    unhandled: list[str]
    faults: dict[str, Any]
    script_left: list[dict]
    users: list[dict]
    identity: dict[str, str]
    media: dict[str, Any]  # the media fetches (`mediafetch`): enabled, fetched, failed, pending, failures


def moment(msec: int | float | None) -> str:
    """A message time as a person reads it, in UTC to the second."""
    if msec is None:
        return ""
    return datetime.fromtimestamp(msec / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def file_size(size: Any) -> str:
    """A byte count as amoCRM shows a file's size (245 120 -> "239.4 KB"); "" when none was sent."""
    if not isinstance(size, int | float) or isinstance(size, bool) or size <= 0:
        return ""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def web_url(value: Any) -> str | None:
    """`value` if it is an http(s) URL, else None: only such addresses become links or images."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")) and not any(
            ch.isspace() or ord(ch) < 32 for ch in value):
        return value
    return None


def attachment(message: dict) -> Attachment | None:
    """The attachment of a message body (§3.4), None for a text."""
    kind = message.get("type")
    if kind == "location" and isinstance(message.get("location"), dict):
        where = message["location"]
        lat, lon = where.get("lat"), where.get("lon")
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon))
        return Attachment("location", "location", lat=lat if numbers else None, lon=lon if numbers else None)
    if kind == "contact" and isinstance(message.get("contact"), dict):
        shared = message["contact"]
        return Attachment("contact", "contact", name=str(shared.get("name") or ""),
                          phone=str(shared.get("phone") or ""))
    if kind in MEDIA_TYPES:
        shown = "picture" if kind == "picture" else "sticker" if kind == "sticker" else "file"
        return Attachment(shown, kind, url=web_url(message.get("media")), name=str(message.get("file_name") or ""),
                          size=file_size(message.get("file_size")))
    return None


def summary(message: dict) -> str:
    """A message in a line, as a quote shows it: the start of its text, else what it carries."""
    text = message.get("text")
    if isinstance(text, str) and text.strip():
        return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…"
    carried = attachment(message)
    if carried is None:
        return f"[{message.get('type') or 'message'}]"
    return f"[{carried.type}{' ' + carried.name if carried.name else ''}]"


class AccountView:
    """Reads one emulated account for its pages."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.store = emulator.store
        self.config = emulator.config

    # -- the chats
    def chat_lines(self, page: int) -> list[ChatLine]:
        """A page (from 1) of the chats, oldest first."""
        rows = self.store.chat_overview(offset=(page - 1) * CHATS_PER_PAGE, limit=CHATS_PER_PAGE)
        names = self._contact_names([row["contact_id"] for row in rows if row["contact_id"] is not None])
        return [ChatLine(row["id"], row["conversation_id"], _client_name(row), row["contact_id"],
                         names.get(row["contact_id"], ""), row["message_count"], moment(row["last_msec"]))
                for row in rows]

    def chat(self, chat_id: str) -> dict | None:
        """A chat with its client, its contact and its messages in the order amoCRM shows them (by time)."""
        chat = self.store.chat(chat_id)
        if chat is None:
            return None
        stored = self.store.chat_messages(chat_id)
        # amoCRM orders a chat by the messages' times; arrival breaks ties, as history does
        stored = [m for _, m in sorted(enumerate(stored), key=lambda im: (im[1]["msec_timestamp"], im[0]))]
        cache: dict[str, dict | None] = {}
        failed = {f["msgid"]: f["why"] for f in self.emulator.media.snapshot()["failures"] if f["chat_id"] == chat_id}
        messages = [self._message(chat, m, cache, failed.get(m["msgid"])) for m in stored]
        links = self.store.links(chat_ids=[chat_id])
        contact = _as_sent(self.store.contact(links[0]["contact_id"])) if links else None
        return {"id": chat["id"], "conversation_id": chat["conversation_id"], "client": _client_name(chat),
                "contact": contact, "messages": messages}

    def contact(self, contact_id: int) -> dict | None:
        """A contact card: its name, phones, emails, other fields, and the chats linked to it."""
        contact = self.store.contact(contact_id)
        if contact is None:
            return None
        chats = []
        for link in self.store.links(contact_ids=[contact_id]):
            chat = self.store.chat(link["chat_id"])
            if chat is not None:
                messages = self.store.chat_messages(chat["id"])
                chats.append({"id": chat["id"], "conversation_id": chat["conversation_id"],
                              "client": _client_name(chat), "message_count": len(messages),
                              "last": moment(max((m["msec_timestamp"] for m in messages), default=None))})
        return {**_as_sent(contact), "chats": chats}

    # -- what amoCRM did on its own
    def unsorted(self) -> dict[str, list[dict]]:
        """The unsorted leads and notifications, each with its chat: an import of old history leaves both empty."""
        chats: dict[str, dict | None] = {}

        def with_chat(row: dict) -> dict:
            if row["chat_id"] not in chats:
                chats[row["chat_id"]] = self.store.chat(row["chat_id"])
            chat = chats[row["chat_id"]]
            message = self.store.message(row["message_id"]) if row.get("message_id") else None
            return {**row, "client": _client_name(chat) if chat else "", "when": moment(row["created_at"] * 1000),
                    "summary": summary(message["message"]) if message else ""}

        return {"leads": [with_chat(r) for r in self.store.leads()],
                "notifications": [with_chat(r) for r in self.store.notifications()]}

    def glance(self) -> Glance:
        """Counters, requests by endpoint and status, the faults that differ from none (and the account block when
        it is on), the users, and the media amoCRM could not fetch (when it fetches them)."""
        injector, defaults = self.emulator.injector, asdict(Faults())
        faults = {k: v for k, v in asdict(injector.faults).items() if k != "script" and v != defaults[k]}
        if self.config.rest_block_after:  # the account block is a switch of the config, not a fault, but as harsh
            faults |= {name: getattr(self.config, name)
                       for name in ("rest_block_after", "rest_block_window_s", "rest_block_s")}
        users = [{"id": u.id, "name": u.name, "email": u.email, "amojo_id": u.amojo_id or ""}
                 for u in self.config.users]
        identity = {"channel": self.config.channel_id, "account": self.config.account_id, "bot": self.config.bot_id,
                    "scope": self.emulator.scope_id, "users from": self.config.users_path or "the demo's"}
        return Glance(self.store.counts(), sorted(self.emulator.request_counts().items()),
                      list(self.emulator.requests.unhandled), faults, injector.script_left(), users, identity,
                      self.emulator.media.snapshot())

    # -- one message
    def _message(self, chat: dict, stored: dict, cache: dict[str, dict | None],
                 fetch_failed: str | None = None) -> MessageView:
        body = stored["message"]
        text = body.get("text") if isinstance(body.get("text"), str) else ""
        return MessageView(stored["id"], stored["msgid"], moment(stored["msec_timestamp"]),
                           self._sender(chat["scope_id"], stored, cache), text, stored["silent"],
                           stored["edited_at"] is not None, stored["unlinked"],
                           self._quote(chat, stored.get("reply_to"), cache), attachment(body), fetch_failed)

    def _sender(self, scope_id: str, stored: dict, cache: dict[str, dict | None]) -> Sender:
        """Who wrote `stored`: the client (incoming), the bot, or a manager by the name amoCRM has for the user."""
        sender_id, _ = self.emulator.participants.amojo_ids(scope_id, stored)
        record = self._record(scope_id, sender_id, cache) or record_from_payload(scope_id, stored["sender"])
        if stored["receiver"] is None:
            return Sender("client", record.get("name") or "client")
        if sender_id == self.config.bot_id:
            return Sender("bot", record.get("name") or "bot")
        user = next((u for u in self.config.users if u.amojo_id == sender_id), None)
        return Sender("manager", user.name if user else record.get("name") or sender_id)

    def _record(self, scope_id: str, amojo_id: str, cache: dict[str, dict | None]) -> dict | None:
        if amojo_id not in cache:
            cache[amojo_id] = self.store.participant(scope_id, amojo_id)
        return cache[amojo_id]

    def _quote(self, chat: dict, quoted_id: str | None, cache: dict[str, dict | None]) -> Quote | None:
        """What a reply quotes: the message of the chat whose amojo id the store kept for its accepted `reply_to`
        (§3.4; a message quoted in full, with no id, is not kept, so it shows no quote)."""
        original = self.store.message(quoted_id) if quoted_id else None
        if original is None or original["chat_id"] != chat["id"]:
            return None
        return Quote(self._sender(chat["scope_id"], original, cache), summary(original["message"]), original["id"])

    def _contact_names(self, ids: list[int]) -> dict[int, str]:
        return {i: c["name"] for i in set(ids) if (c := self.store.contact(i)) is not None}


def _client_name(chat: dict) -> str:
    user = chat.get("user") or {}
    return str(user.get("name") or user.get("id") or "")


def _as_sent(contact: dict | None) -> dict | None:
    """A contact with its phones and emails as they were sent (amoCRM shows them so, the store keeps them
    normalised for search), and its other fields as (label, values)."""
    if contact is None:
        return None
    fields = _custom_fields(contact["body"])
    shown = {code: values for code, _, values in fields if code in ("PHONE", "EMAIL")}
    return {**contact, "phones": shown.get("PHONE") or contact["phones"],
            "emails": shown.get("EMAIL") or contact["emails"],
            "fields": [(label, ", ".join(values)) for code, label, values in fields if code not in ("PHONE", "EMAIL")]}


def _custom_fields(body: dict) -> list[tuple[str, str, list[str]]]:
    """A contact's filled custom fields as (field_code, label, values), in the order they were sent."""
    out = []
    fields_given = body.get("custom_fields_values")
    for custom in fields_given if isinstance(fields_given, list) else []:
        if not isinstance(custom, dict):
            continue
        code = str(custom.get("field_code") or "")
        label = custom.get("field_name") or code or f"field {custom.get('field_id', '')}"
        values = custom.get("values") if isinstance(custom.get("values"), list) else []
        shown = [str(v.get("value")) for v in values if isinstance(v, dict) and v.get("value") not in (None, "")]
        if shown:
            out.append((code, str(label), shown))
    return out
