"""Transform: source rows of one interval -> amojo chat and message payloads, and every bad row -> a reject.

Checks run column-wise on the whole frame; only the final payload dicts are built per message.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from prefect import task

from etl.source import SourceFrames

MESSAGE_TYPES = {"text", "picture", "video", "file", "voice", "audio", "sticker", "location", "contact"}
MEDIA_TYPES = {"picture", "video", "file", "voice", "audio", "sticker"}
NEEDS_FILE_META = {"picture", "video", "file"}
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Message:
    """One message ready to send: our msgid, its place in time and the `payload` of new_message."""

    msgid: str
    source_id: str
    msec: int
    payload: dict[str, Any]
    content_hash: str


@dataclass
class Conversation:
    """One conversation's chat, its client's contact data, and its messages in time order."""

    conversation_id: str
    source_id: str
    client_key: str
    chat: dict[str, Any]
    contact: dict[str, Any]
    phone: str | None
    email: str | None
    messages: list[Message] = field(default_factory=list)


@dataclass
class Transformed:
    conversations: list[Conversation]
    rejects: pd.DataFrame  # source_key, reason, detail

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.conversations)


@dataclass(frozen=True)
class Senders:
    """Who manager messages are sent as: user `amojo_id` by manager email, else the channel bot."""

    amojo_id_by_email: dict[str, str]
    bot_id: str | None
    bot_name: str = "amojo-etl bot"


REJECT_COLUMNS = ["source_key", "reason", "detail"]


def normalise_phone(raw: Any) -> str | None:
    """`+7 (915) 111-22-33`, `8 915 111 22 33` and `79151112233` are one phone: `+79151112233`."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return None
    digits = re.sub(r"\D", "", str(raw))
    if len(digits) == 11 and digits[0] == "8":
        digits = "7" + digits[1:]
    elif len(digits) == 10 and digits[0] == "9":
        digits = "7" + digits
    if not 10 <= len(digits) <= 15:
        return None
    return "+" + digits


def normalise_email(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return None
    email = str(raw).strip().lower()
    return email if EMAIL_RE.match(email) else None


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype("string").str.strip() == "")


def _reject(rejects: list[pd.DataFrame], frame: pd.DataFrame, mask: pd.Series, reason: str, detail: str) -> None:
    if mask.any():
        rejects.append(pd.DataFrame({"source_key": "message:" + frame.loc[mask, "id"].astype(str),
                                     "reason": reason, "detail": detail}))


def to_utc_ms(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Naive source timestamps, read in the source zone, as unix milliseconds (NaN where unreadable)."""
    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
    utc = parsed.dt.tz_convert("UTC")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    return ((utc - epoch) // pd.Timedelta(milliseconds=1)).astype("Float64")


def transform(frames: SourceFrames, senders: Senders, prefix: str, source_zone: ZoneInfo,
              now: datetime | None = None) -> Transformed:
    """Valid rows become `Conversation`s with payloads; the others become rejects with their reason."""
    now = now or datetime.now(UTC)
    rejects: list[pd.DataFrame] = []
    m = frames.messages.copy()
    m["id"] = m["id"].astype(str)
    m["conversation_id"] = m["conversation_id"].astype(str)
    m["type"] = m["type"].fillna("text").astype(str).str.strip().str.lower()
    m["direction"] = m["direction"].astype("string").str.strip().str.lower()
    m["msec"] = to_utc_ms(m["created_at"], source_zone)

    duplicate = m["id"].duplicated(keep="first")
    _reject(rejects, m, duplicate, "duplicate_id", "another row has the same message id; the first is kept")
    m = m[~duplicate]

    conversations = frames.conversations.astype({"id": str, "client_id": str}).drop_duplicates("id")
    clients = frames.clients.astype({"id": str}).drop_duplicates("id").set_index("id")
    known_conv = m["conversation_id"].isin(conversations["id"])
    checks = [
        (~known_conv, "orphan_conversation", "the message's conversation does not exist in the source"),
        (~m["direction"].isin(["in", "out"]).fillna(False), "unknown_direction", "direction must be 'in' or 'out'"),
        (~m["type"].isin(MESSAGE_TYPES), "unknown_type", f"type must be one of {sorted(MESSAGE_TYPES)}"),
        (m["msec"].isna() | (m["msec"] < 0), "bad_timestamp", "created_at is missing, unreadable or before 1970"),
        (m["msec"] > now.timestamp() * 1000, "future_timestamp", "created_at is in the future"),
        ((m["type"] == "text") & _blank(m["text"]), "empty_text", "a text message with NULL or empty text"),
        (m["type"].isin(MEDIA_TYPES) & ~m["media_url"].astype("string").str.match(r"^https?://").fillna(False),
         "bad_media_url", "a media message needs an http(s) media_url"),
        ((m["type"] == "location") & (m["lat"].isna() | m["lon"].isna()), "bad_location",
         "a location message needs lat and lon"),
        ((m["type"] == "contact") & (_blank(m["contact_name"]) | _blank(m["contact_phone"])), "bad_contact",
         "a contact message needs contact_name and contact_phone"),
    ]
    bad = pd.Series(False, index=m.index)
    for mask, reason, detail in checks:
        mask = mask.fillna(False).astype(bool) & ~bad
        _reject(rejects, m, mask, reason, detail)
        bad |= mask
    m = m[~bad]

    managers = frames.managers.astype({"id": str}).drop_duplicates("id").set_index("id")
    out = m["direction"] == "out"
    manager_email = m["manager_id"].astype("string").map(managers["email"].astype("string").str.lower())
    ref_id = manager_email.map(senders.amojo_id_by_email)
    if senders.bot_id:
        ref_id = ref_id.fillna(senders.bot_id)
    no_sender = out & ref_id.isna()
    _reject(rejects, m, no_sender, "no_sender_ref",
            "the manager has no amoCRM amojo_id and AMOJO_ETL_BOT_ID is not set")
    m = m[~no_sender].assign(ref_id=ref_id[~no_sender])
    m["manager_name"] = m["manager_id"].astype("string").map(managers["name"].astype("string"))
    m = m.sort_values(["conversation_id", "msec", "id"], kind="stable")

    result: list[Conversation] = []
    conv_by_id = conversations.set_index("id")
    for conv_id, group in m.groupby("conversation_id", sort=False):
        client_key = str(conv_by_id.at[conv_id, "client_id"])
        client = clients.loc[client_key] if client_key in clients.index else None
        participant, phone, email = _client_participant(client_key, client, prefix)
        conversation = Conversation(
            conversation_id=f"{prefix}{conv_id}",
            source_id=str(conv_id),
            client_key=client_key,
            chat={"conversation_id": f"{prefix}{conv_id}", "user": participant},
            contact=_contact_body(participant["name"], phone, email),
            phone=phone,
            email=email,
        )
        for row in group.to_dict("records"):
            conversation.messages.append(_message(row, conversation, participant, senders, prefix))
        result.append(conversation)

    reject_frame = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    return Transformed(result, reject_frame)


def _client_participant(key: str, client: pd.Series | None, prefix: str) -> tuple[dict, str | None, str | None]:
    name = str(client["name"]).strip() if client is not None and pd.notna(client["name"]) else ""
    participant: dict[str, Any] = {"id": f"{prefix}{key}", "name": name or f"Client {key}"}
    phone = normalise_phone(client["phone"]) if client is not None else None
    email = normalise_email(client["email"]) if client is not None else None
    profile = {k: v for k, v in (("phone", phone), ("email", email)) if v}
    if client is not None and pd.notna(client["avatar_url"]) and str(client["avatar_url"]).startswith("http"):
        participant["avatar"] = str(client["avatar_url"])
    if profile:
        participant["profile"] = profile
    if client is not None and pd.notna(client["profile_url"]):
        participant["profile_link"] = str(client["profile_url"])
    return participant, phone, email


def _contact_body(name: str, phone: str | None, email: str | None) -> dict[str, Any]:
    fields = []
    if phone:
        fields.append({"field_code": "PHONE", "values": [{"value": phone, "enum_code": "WORK"}]})
    if email:
        fields.append({"field_code": "EMAIL", "values": [{"value": email, "enum_code": "WORK"}]})
    body: dict[str, Any] = {"name": name}
    if fields:
        body["custom_fields_values"] = fields
    return body


def _message(row: dict, conversation: Conversation, client: dict, senders: Senders, prefix: str) -> Message:
    msec = int(row["msec"])
    body = _message_body(row)
    payload: dict[str, Any] = {
        "timestamp": msec // 1000,
        "msec_timestamp": msec,
        "msgid": f"{prefix}{row['id']}",
        "conversation_id": conversation.conversation_id,
    }
    if row["direction"] == "in":
        payload["sender"] = client
    else:
        manager_id = row["manager_id"]
        if pd.notna(manager_id) and row["ref_id"] != senders.bot_id:
            sender = {"id": f"{prefix}manager-{manager_id}", "name": str(row["manager_name"] or manager_id)}
        else:
            sender = {"id": f"{prefix}bot", "name": senders.bot_name}
        payload["sender"] = {**sender, "ref_id": row["ref_id"]}
        payload["receiver"] = client
    payload["message"] = body
    payload["silent"] = True
    content = json.dumps(body, ensure_ascii=False, sort_keys=True).encode()
    return Message(payload["msgid"], str(row["id"]), msec, payload, hashlib.sha1(content).hexdigest())


def _message_body(row: dict) -> dict[str, Any]:
    kind = row["type"]
    body: dict[str, Any] = {"type": kind}
    if pd.notna(row["text"]) and str(row["text"]).strip():
        body["text"] = str(row["text"])
    if kind in MEDIA_TYPES:
        body["media"] = str(row["media_url"])
        name = row["file_name"] if pd.notna(row["file_name"]) else str(row["media_url"]).rsplit("/", 1)[-1]
        if kind in NEEDS_FILE_META or pd.notna(row["file_name"]):
            body["file_name"] = str(name) or "file"
            body["file_size"] = int(row["file_size"]) if pd.notna(row["file_size"]) else 0
    elif kind == "location":
        body["location"] = {"lat": float(row["lat"]), "lon": float(row["lon"])}
    elif kind == "contact":
        body["contact"] = {"name": str(row["contact_name"]), "phone": str(row["contact_phone"])}
    return body


@task(name="transform", task_run_name="transform-{label}")
def transform_task(frames: SourceFrames, senders: Senders, prefix: str, source_zone: str, label: str) -> Transformed:
    return transform(frames, senders, prefix, ZoneInfo(source_zone))
