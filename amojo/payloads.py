"""The bodies amoCRM takes, built from our rows: a chat's client (§3.3), a message and its edit (§3.4), a contact
(REST v4, §6.3) and the key that finds a contact again.

The rows are those a pipeline holds for conversations and messages (any object with the attributes below, such as
a data frame's `itertuples()` rows), so a missing value may be None, NaN or a data frame's NA. One message is built
per request sent, hundreds a second: plain dicts, no validation.
"""

from __future__ import annotations

import hashlib
from typing import NotRequired, Protocol, TypedDict

MESSAGE_TYPES = ("text", "picture", "video", "file", "voice", "audio", "sticker", "location", "contact")
MEDIA_TYPES = ("picture", "video", "file", "voice", "audio", "sticker")
NEEDS_FILE_META = ("picture", "video", "file")  # amojo requires file_name and file_size for these (§3.4)
TIMED_TYPES = ("video", "audio", "voice")  # media_duration, in seconds (§3.4)


class Conversation(Protocol):
    """A conversation's client as we hold it: our client id, name, and what we know of them."""

    client_id: str
    name: str
    avatar: str | None
    phone: str | None
    email: str | None
    profile_link: str | None
    source_external_id: str | None


class Message(Protocol):
    """A message as we hold it: our ids, its time, who sends it, and its content by type."""

    msgid: str
    conversation_id: str
    msec: int
    outgoing: bool
    sender_id: str
    sender_name: str
    ref_id: str | None
    type: str
    text: str | None
    media_url: str | None
    file_name: str | None
    file_size: int | None
    lat: float | None
    lon: float | None
    contact_name: str | None
    contact_phone: str | None
    duration: int | None  # seconds, of a video, audio or voice


class Profile(TypedDict, total=False):
    phone: str
    email: str


class Participant(TypedDict):
    id: str
    name: str
    avatar: NotRequired[str]
    profile: NotRequired[Profile]
    profile_link: NotRequired[str]


class Source(TypedDict):
    external_id: str


class ChatPayload(TypedDict):
    conversation_id: str
    user: Participant
    source: NotRequired[Source]


class Location(TypedDict):
    lat: float
    lon: float


class ContactCard(TypedDict):
    name: str | None
    phone: str | None


class MessageBody(TypedDict):
    type: str
    text: NotRequired[str]
    media: NotRequired[str | None]
    file_name: NotRequired[str]
    file_size: NotRequired[int]
    location: NotRequired[Location]
    contact: NotRequired[ContactCard]
    media_duration: NotRequired[int]


class Quote(TypedDict):
    msgid: str


class ReplyTo(TypedDict):
    message: Quote


class Sender(TypedDict):
    id: str
    name: str
    ref_id: str | None


class MessagePayload(TypedDict):
    timestamp: int
    msec_timestamp: int
    msgid: str
    conversation_id: str
    sender: Sender | Participant
    receiver: NotRequired[Participant]
    message: MessageBody
    silent: bool
    reply_to: NotRequired[ReplyTo]


class EditPayload(TypedDict):
    timestamp: int
    msec_timestamp: int
    msgid: str
    conversation_id: str
    message: MessageBody


class FieldValue(TypedDict):
    value: str
    enum_code: str


class ContactField(TypedDict):
    field_code: str
    values: list[FieldValue]


class ContactBody(TypedDict):
    name: str
    custom_fields_values: list[ContactField]


def _present(value: object) -> bool:
    """A row's value is there: not None, NaN or a data frame's NA."""
    if value is None:
        return False
    try:
        return bool(value == value)  # NaN is not equal to itself; a data frame's NA will not say (TypeError)
    except TypeError:
        return False


def client_participant(conversation: Conversation) -> Participant:
    """The client as a chat participant (§3.3): our id, name, and what we know of them."""
    participant: Participant = {"id": conversation.client_id, "name": conversation.name}
    if _present(conversation.avatar):
        participant["avatar"] = conversation.avatar
    profile: Profile = {}
    if _present(conversation.phone):
        profile["phone"] = conversation.phone
    if _present(conversation.email):
        profile["email"] = conversation.email
    if profile:
        participant["profile"] = profile
    if _present(conversation.profile_link):
        participant["profile_link"] = conversation.profile_link
    return participant


def chat_payload(conversation_id: str, conversation: Conversation) -> ChatPayload:
    """The create-chat body for a conversation, tied to its amoCRM source when it has one (§3.3)."""
    chat: ChatPayload = {"conversation_id": conversation_id, "user": client_participant(conversation)}
    if _present(conversation.source_external_id):
        chat["source"] = {"external_id": conversation.source_external_id}
    return chat


def contact_key(client_id: str) -> str:
    """The key written into every contact we create, by which a create whose answer was lost is found again
    (for a client without phone or email too): one per client and id prefix, letters and digits only, so that
    amoCRM's search matches it whole."""
    return "amojoetl" + hashlib.blake2b(client_id.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def contact_body(conversation: Conversation) -> ContactBody:
    """The REST v4 contact for a conversation's client: phone and email as amoCRM fields, and our key in the
    system IM field (⚠️ amojo-api.md §6.3 names only PHONE and EMAIL field codes; IM is a system field of every
    account's contacts, and `query` searches every filled field)."""
    fields: list[ContactField] = []
    if _present(conversation.phone):
        fields.append({"field_code": "PHONE", "values": [{"value": conversation.phone, "enum_code": "WORK"}]})
    if _present(conversation.email):
        fields.append({"field_code": "EMAIL", "values": [{"value": conversation.email, "enum_code": "WORK"}]})
    fields.append({"field_code": "IM", "values": [{"value": contact_key(conversation.client_id),
                                                   "enum_code": "OTHER"}]})
    return {"name": conversation.name, "custom_fields_values": fields}


def message_body(message: Message) -> MessageBody:
    """The `message` object of new_message for one message, with its type's required fields."""
    body: MessageBody = {"type": message.type}
    if _present(message.text) and message.text.strip():
        body["text"] = message.text
    if message.type in MEDIA_TYPES:
        body["media"] = message.media_url
        if message.type in NEEDS_FILE_META or _present(message.file_name):
            named = _present(message.file_name) and str(message.file_name).strip()
            body["file_name"] = message.file_name if named else "file"  # amojo refuses an empty name
            body["file_size"] = int(message.file_size) if _present(message.file_size) else 0
        duration = getattr(message, "duration", None)
        if message.type in TIMED_TYPES and _present(duration):
            body["media_duration"] = int(duration)
    elif message.type == "location":
        body["location"] = {"lat": float(message.lat), "lon": float(message.lon)}
    elif message.type == "contact":
        body["contact"] = {"name": message.contact_name, "phone": message.contact_phone}
    return body


def message_payload(message: Message, client: Participant, reply_to: str | None = None) -> MessagePayload:
    """The new_message payload (§3.4): client messages without `receiver`; manager messages to the client. With
    `reply_to` (our msgid of a message already in the same chat), it quotes that message (§3.4, §4.7)."""
    msec = message.msec
    payload: MessagePayload
    if message.outgoing:
        payload = {"timestamp": msec // 1000, "msec_timestamp": msec, "msgid": message.msgid,
                   "conversation_id": message.conversation_id,
                   "sender": {"id": message.sender_id, "name": message.sender_name, "ref_id": message.ref_id},
                   "receiver": client, "message": message_body(message), "silent": True}
    else:
        payload = {"timestamp": msec // 1000, "msec_timestamp": msec, "msgid": message.msgid,
                   "conversation_id": message.conversation_id, "sender": client, "message": message_body(message),
                   "silent": True}
    if reply_to is not None:
        payload["reply_to"] = {"message": {"msgid": reply_to}}
    return payload


def edit_payload(message: Message) -> EditPayload:
    """The edit_message payload: the message identified by our msgid, with its new content."""
    return {"timestamp": message.msec // 1000, "msec_timestamp": message.msec, "msgid": message.msgid,
            "conversation_id": message.conversation_id, "message": message_body(message)}
