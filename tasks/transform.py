"""Transform: one chunk of source rows -> conversations and messages ready to send, and every bad row -> a reject.

Everything here is column-wise over the chunk. The JSON payload of a message is built only when it is sent
(`message_payload`), where the API's pace, not Python, sets the speed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from etl.source import SourceFrames

MESSAGE_TYPES = ("text", "picture", "video", "file", "voice", "audio", "sticker", "location", "contact")
MEDIA_TYPES = ("picture", "video", "file", "voice", "audio", "sticker")
NEEDS_FILE_META = ("picture", "video", "file")  # amojo requires file_name and file_size for these (§3.4)
CONTENT_COLUMNS = ["type", "text", "media_url", "file_name", "file_size", "lat", "lon", "contact_name",
                   "contact_phone"]
REJECT_COLUMNS = ["source_key", "reason", "detail", "row"]
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Senders:
    """Who manager messages are sent as: the user's `amojo_id` by manager email, else the channel bot."""

    amojo_id_by_email: dict[str, str]
    bot_id: str | None
    bot_name: str = "amojo-etl bot"


@dataclass
class Batch:
    """A transformed chunk.

    `conversations` is indexed by our conversation_id and holds the chat's client; `messages` holds one row per
    valid message, sorted by conversation then time; `rejects` the rows that will not be sent, with the reason.
    """

    conversations: pd.DataFrame
    messages: pd.DataFrame
    rejects: pd.DataFrame
    warnings: Counter = field(default_factory=Counter)

    @property
    def message_count(self) -> int:
        return len(self.messages)


class SeenIds:
    """The first row of each message id, across the chunks of one interval.

    The source tells beforehand which ids occur more than once in the interval (`SourceStream.repeated_ids`), so
    only those are remembered: memory follows the number of repeated ids, not the size of the interval. Without
    that list every id is remembered.
    """

    def __init__(self, repeated: set[str] | None = None) -> None:
        self._repeated = repeated
        self._kept: set[str] = set()

    def __len__(self) -> int:
        return len(self._kept)

    def split(self, ids: pd.Series) -> pd.Series:
        """True where the id was met before (in an earlier chunk or earlier in this one); remembers the rest."""
        watched = ids.isin(self._repeated) if self._repeated is not None else pd.Series(True, index=ids.index)
        duplicate = pd.Series(False, index=ids.index)
        if watched.any():
            candidates = ids[watched]
            duplicate[watched] = candidates.isin(self._kept) | candidates.duplicated(keep="first")
            self._kept.update(candidates[~duplicate[watched]])
        return duplicate


def _text(values: pd.Series) -> pd.Series:
    """Any column as str values with None for missing, without touching columns that already are."""
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.where(values.notna(), None).astype(object)
    return values.map(lambda v: None if pd.isna(v) else str(v)).astype(object)


def _per_value(values: pd.Series, normalise: Callable[[Any], Any]) -> pd.Series:
    """Apply `normalise` once per distinct value: cheap on low-cardinality columns such as type or direction."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([normalise(u) for u in uniques] + [normalise(None)], dtype=object)
    return pd.Series(mapped[codes], index=values.index)


def normalise_phones(raw: pd.Series) -> pd.Series:
    """`+7 (915) 111-22-33`, `8 915 111 22 33` and `79151112233` are one phone: `+79151112233`; else None."""
    digits = raw.astype("string").str.replace(r"\D", "", regex=True)
    russian_trunk = (digits.str.len() == 11) & digits.str.startswith("8")
    digits = digits.mask(russian_trunk, "7" + digits.str[1:])
    local_mobile = (digits.str.len() == 10) & digits.str.startswith("9")
    digits = digits.mask(local_mobile, "7" + digits)
    valid = digits.str.len().between(10, 15).fillna(False).astype(bool)
    return ("+" + digits).where(valid).astype(object).where(valid, None)


def normalise_emails(raw: pd.Series) -> pd.Series:
    emails = raw.astype("string").str.strip().str.lower()
    valid = emails.str.match(EMAIL_RE).fillna(False).astype(bool)
    return emails.astype(object).where(valid, None)


_TEXT_OK, _TEXT_BLANK, _TEXT_INVALID, _TEXT_CONTROL = 0, 1, 2, 3
_TEXT_FLAW = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _classify_text(value: Any) -> int:
    if not isinstance(value, str) or not value.strip():
        return _TEXT_BLANK
    flaw = _TEXT_FLAW.search(value)
    if flaw is None:
        return _TEXT_OK
    return _TEXT_INVALID if "\ud800" <= flaw.group() <= "\udfff" else _TEXT_CONTROL


def repair_text(raw: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Texts without control characters; masks of blank texts and of those that are not valid UTF-8.

    Undecodable bytes arrive as lone surrogates (the source reads text with `surrogateescape`); those cannot be
    repaired without guessing, so they are rejected rather than sent garbled. One pass over the column.
    """
    kind = np.fromiter(map(_classify_text, raw), dtype=np.int8, count=len(raw))
    text = raw.astype(object).where(kind != _TEXT_BLANK, None)
    control = kind == _TEXT_CONTROL
    if control.any():
        text[control] = text[control].map(lambda s: _CONTROL.sub("", s))
    return text, pd.Series(kind == _TEXT_BLANK, index=raw.index), pd.Series(kind == _TEXT_INVALID, index=raw.index)


def to_utc_ms(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Naive source timestamps, read in the source zone, as unix milliseconds (NA where unreadable).

    A wall time that does not exist (the hour skipped by DST) is moved forward; one that exists twice is read as
    the first of the two: the source cannot say which it meant, and either keeps the message's place in order.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:  # text (SQLite) or datetime objects (drivers)
        parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize(zone, ambiguous=np.ones(len(parsed), dtype=bool),
                                       nonexistent="shift_forward")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    return ((parsed.dt.tz_convert("UTC") - epoch) // pd.Timedelta(milliseconds=1)).astype("Int64")


def _printable(value: Any) -> str | None:
    """A source value as text that can be written anywhere: undecodable bytes shown as escapes."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _digest(frame: pd.DataFrame | pd.Series) -> pd.Series:
    return pd.Series(pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64), index=frame.index)


def content_hash(frame: pd.DataFrame) -> pd.Series:
    """A stable 64-bit digest of what a message says, to tell an edited message from an unchanged one."""
    return _digest(frame[CONTENT_COLUMNS].astype(object).where(frame[CONTENT_COLUMNS].notna(), ""))


def text_hash(texts: pd.Series) -> pd.Series:
    """A 64-bit digest of the text as sent (blank counts as none), comparable with what the chat history returns."""
    texts = texts.astype(object).where(texts.notna(), "")
    return _digest(texts.where(texts.str.strip() != "", ""))


def transform(frames: SourceFrames, senders: Senders, prefix: str, source_zone: ZoneInfo, *,
              seen: SeenIds | None = None, text_limit: int | None = None, now: datetime | None = None) -> Batch:
    """Valid rows become conversations and messages ready to send; the others become rejects with their reason."""
    now = now or datetime.now(UTC)
    seen = SeenIds() if seen is None else seen
    warnings: Counter = Counter()
    rejects: list[pd.DataFrame] = []
    m = frames.messages.reset_index(drop=True)
    raw = m.copy()
    m["id"] = _text(m["id"])
    m["conversation_id"] = _text(m["conversation_id"])
    m["manager_id"] = _text(m["manager_id"])
    m["type"] = _per_value(m["type"], lambda v: "text" if v is None or pd.isna(v) else str(v).strip().lower())
    m["direction"] = _per_value(m["direction"], lambda v: None if v is None or pd.isna(v) else str(v).strip().lower())
    m["msec"] = to_utc_ms(m["created_at"], source_zone)
    m["text"], blank_text, bad_utf8 = repair_text(m["text"])
    m["media_url"] = _text(m["media_url"])

    def reject(mask: pd.Series, reason: str, detail: str) -> None:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            rows = raw.loc[mask[mask].index]
            rejects.append(pd.DataFrame({
                "source_key": "message:" + m.loc[rows.index, "id"].fillna("<null id>"),
                "reason": reason,
                "detail": detail,
                "row": rows.map(_printable).to_json(orient="records", lines=True, force_ascii=False).splitlines(),
            }))

    duplicate = seen.split(m["id"].fillna(""))
    reject(duplicate, "duplicate_id", "another row has the same message id; the first is kept")
    m = m[~duplicate]

    conversations = frames.conversations.assign(id=_text(frames.conversations["id"]),
                                                client_id=_text(frames.conversations["client_id"]))
    conversations = conversations.drop_duplicates("id")
    media_type = m["type"].isin(MEDIA_TYPES)
    media_url_ok = pd.Series(False, index=m.index)
    media_url_ok[media_type] = m.loc[media_type, "media_url"].str.match(r"^https?://\S+$").fillna(False)
    checks = [
        (m["id"].isna() | (m["id"] == ""), "missing_id", "the message has no id"),
        (~m["conversation_id"].isin(conversations["id"]), "orphan_conversation",
         "the message's conversation does not exist in the source"),
        (~m["direction"].isin(["in", "out"]), "unknown_direction", "direction must be 'in' or 'out'"),
        (~m["type"].isin(MESSAGE_TYPES), "unknown_type", f"type must be one of {', '.join(MESSAGE_TYPES)}"),
        (m["msec"].isna() | (m["msec"] < 0), "bad_timestamp", "created_at is missing, unreadable or before 1970"),
        (m["msec"] > now.timestamp() * 1000, "future_timestamp", "created_at is in the future"),
        (bad_utf8.loc[m.index], "invalid_utf8", "the text is not valid UTF-8"),
        ((m["type"] == "text") & blank_text.loc[m.index], "empty_text", "a text message with NULL or empty text"),
        (media_type & ~media_url_ok, "bad_media_url", "a media message needs an http(s) media_url"),
        ((m["type"] == "location") & (m["lat"].isna() | m["lon"].isna()), "bad_location",
         "a location message needs lat and lon"),
        ((m["type"] == "contact") & (m["contact_name"].isna() | m["contact_phone"].isna()), "bad_contact",
         "a contact message needs contact_name and contact_phone"),
    ]
    if text_limit is not None:
        checks.append((m["text"].str.len() > text_limit, "text_too_long",
                       f"the text is longer than {text_limit} characters (AMOJO_ETL_TEXT_LIMIT)"))
    bad = pd.Series(False, index=m.index)
    for mask, reason, detail in checks:
        mask = mask.fillna(False).astype(bool) & ~bad
        reject(mask, reason, detail)
        bad |= mask
    m = m[~bad]

    managers = frames.managers.assign(id=_text(frames.managers["id"])).drop_duplicates("id").set_index("id")
    manager_email = m["manager_id"].map(_per_value(managers["email"], lambda v: str(v).strip().lower()
                                                   if isinstance(v, str) else None))
    ref_id = manager_email.map(senders.amojo_id_by_email)
    known_manager = ref_id.notna()
    if senders.bot_id:
        ref_id = ref_id.fillna(senders.bot_id)
    outgoing = m["direction"] == "out"
    no_sender = outgoing & ref_id.isna()
    reject(no_sender, "no_sender_ref",
           "the manager has no amoCRM user with an amojo_id, and AMOJO_ETL_BOT_ID is not set")
    keep = ~no_sender
    m, ref_id, known_manager, outgoing = m[keep], ref_id[keep], known_manager[keep], outgoing[keep]

    as_manager = (outgoing & known_manager).to_numpy()
    manager_name = m["manager_id"].map(managers["name"])
    messages = pd.DataFrame({
        "msgid": prefix + m["id"],
        "source_id": m["id"],
        "conversation_id": prefix + m["conversation_id"],
        "msec": m["msec"].astype("int64"),
        "outgoing": outgoing,
        "sender_id": np.where(as_manager, prefix + "manager-" + m["manager_id"].fillna(""), prefix + "bot"),
        "sender_name": manager_name.where(as_manager, senders.bot_name).fillna(senders.bot_name),
        "ref_id": ref_id.where(outgoing, None),
        "type": m["type"],
        "text": m["text"],
        "media_url": m["media_url"],
        "file_name": _text(m["file_name"]),
        "file_size": pd.to_numeric(m["file_size"], errors="coerce").astype("Int64"),
        "lat": pd.to_numeric(m["lat"], errors="coerce"),
        "lon": pd.to_numeric(m["lon"], errors="coerce"),
        "contact_name": _text(m["contact_name"]),
        "contact_phone": _text(m["contact_phone"]),
    }).reset_index(drop=True)
    needs_name = messages["type"].isin(NEEDS_FILE_META) & messages["file_name"].isna()
    if needs_name.any():
        messages.loc[needs_name, "file_name"] = messages.loc[needs_name, "media_url"].str.rsplit("/", n=1).str[-1]
    messages["content_hash"] = content_hash(messages)
    messages["text_hash"] = text_hash(messages["text"])

    chats = _conversations(conversations, frames.clients, messages["conversation_id"].unique(), prefix, source_zone,
                           warnings)
    reject_frame = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    repeat = reject_frame.groupby("source_key").cumcount()  # duplicates share an id: keep each row's key apart
    reject_frame["source_key"] = reject_frame["source_key"].where(
        repeat == 0, reject_frame["source_key"] + "#" + repeat.astype(str))
    return Batch(chats, messages, reject_frame, warnings)


def _conversations(conversations: pd.DataFrame, clients: pd.DataFrame, used: np.ndarray, prefix: str,
                   source_zone: ZoneInfo, warnings: Counter) -> pd.DataFrame:
    """One row per conversation with messages in the chunk: its client, with phone and email normalised."""
    conv = conversations.assign(conversation_id=prefix + conversations["id"])
    conv = conv[conv["conversation_id"].isin(used)]
    clients = clients.assign(id=_text(clients["id"])).drop_duplicates("id").rename(columns={"id": "client_id"})
    chat = conv.merge(clients, on="client_id", how="left")
    phone = normalise_phones(chat["phone"])
    email = normalise_emails(chat["email"])
    warnings["invalid_phone_dropped"] += int((chat["phone"].notna() & phone.isna()).sum())
    warnings["invalid_email_dropped"] += int((chat["email"].notna() & email.isna()).sum())
    name = _text(chat["name"]).str.strip()
    avatar = _text(chat["avatar_url"])
    return pd.DataFrame({
        "conversation_id": chat["conversation_id"],
        "source_id": chat["id"],
        "client_key": chat["client_id"],
        "client_id": prefix + chat["client_id"],
        "name": name.where(name.fillna("") != "", "Client " + chat["client_id"]),
        "phone": phone,
        "email": email,
        "avatar": avatar.where(avatar.str.match(r"^https?://").fillna(False).astype(bool), None),
        "profile_link": _text(chat["profile_url"]),
        # When the conversation opened: none of its messages is older, so runs of earlier days matter to it only
        # back to here. Unreadable: from the beginning of time.
        "opened_ms": to_utc_ms(chat["created_at"], source_zone).fillna(0).astype("int64"),
    }).set_index("conversation_id")


def _present(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value))


def client_participant(conversation: Any) -> dict[str, Any]:
    """The client as a chat participant (§3.3): our id, name, and what we know of them."""
    participant: dict[str, Any] = {"id": conversation.client_id, "name": conversation.name}
    if _present(conversation.avatar):
        participant["avatar"] = conversation.avatar
    profile = {k: v for k in ("phone", "email") if _present(v := getattr(conversation, k))}
    if profile:
        participant["profile"] = profile
    if _present(conversation.profile_link):
        participant["profile_link"] = conversation.profile_link
    return participant


def chat_payload(conversation_id: str, conversation: Any) -> dict[str, Any]:
    """The create-chat body for a conversation (a row of `Batch.conversations`)."""
    return {"conversation_id": conversation_id, "user": client_participant(conversation)}


def contact_body(conversation: Any) -> dict[str, Any]:
    """The REST v4 contact for a conversation's client, with phone and email as amoCRM fields."""
    fields = []
    if _present(conversation.phone):
        fields.append({"field_code": "PHONE", "values": [{"value": conversation.phone, "enum_code": "WORK"}]})
    if _present(conversation.email):
        fields.append({"field_code": "EMAIL", "values": [{"value": conversation.email, "enum_code": "WORK"}]})
    body: dict[str, Any] = {"name": conversation.name}
    if fields:
        body["custom_fields_values"] = fields
    return body


def message_body(message: Any) -> dict[str, Any]:
    """The `message` object of new_message for one row of `Batch.messages`, with its type's required fields."""
    body: dict[str, Any] = {"type": message.type}
    if _present(message.text) and message.text.strip():
        body["text"] = message.text
    if message.type in MEDIA_TYPES:
        body["media"] = message.media_url
        if message.type in NEEDS_FILE_META or _present(message.file_name):
            body["file_name"] = message.file_name if _present(message.file_name) else "file"
            body["file_size"] = int(message.file_size) if _present(message.file_size) else 0
    elif message.type == "location":
        body["location"] = {"lat": float(message.lat), "lon": float(message.lon)}
    elif message.type == "contact":
        body["contact"] = {"name": message.contact_name, "phone": message.contact_phone}
    return body


def message_payload(message: Any, client: dict[str, Any]) -> dict[str, Any]:
    """The new_message payload (§3.4): client messages without `receiver`; manager messages to the client."""
    payload: dict[str, Any] = {
        "timestamp": message.msec // 1000,
        "msec_timestamp": message.msec,
        "msgid": message.msgid,
        "conversation_id": message.conversation_id,
    }
    if message.outgoing:
        payload["sender"] = {"id": message.sender_id, "name": message.sender_name, "ref_id": message.ref_id}
        payload["receiver"] = client
    else:
        payload["sender"] = client
    payload["message"] = message_body(message)
    payload["silent"] = True
    return payload


def edit_payload(message: Any) -> dict[str, Any]:
    """The edit_message payload: the message identified by our msgid, with its new content."""
    return {"timestamp": message.msec // 1000, "msec_timestamp": message.msec, "msgid": message.msgid,
            "conversation_id": message.conversation_id, "message": message_body(message)}


@task(name="transform", task_run_name="transform-{label}", cache_policy=NO_CACHE)
def transform_task(frames: SourceFrames, senders: Senders, prefix: str, source_zone: str, seen: SeenIds,
                   text_limit: int | None, label: str) -> Batch:
    return transform(frames, senders, prefix, ZoneInfo(source_zone), seen=seen, text_limit=text_limit)
