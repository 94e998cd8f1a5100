"""Transform: one chunk of source rows -> conversations and messages ready to send, and every bad row -> a reject.

Everything here is column-wise over the chunk. The JSON payload of a message is built only when it is sent
(`message_payload`), where the API's pace, not Python, sets the speed.
"""

from __future__ import annotations

import hashlib
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

from etl.ledger import KEY_LENGTH
from etl.source import COMPOUND_TYPES, MESSAGE_COLUMNS, SourceFrames, as_text, compound_text, to_utc_ms

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
        self._duplicate_keys: Counter = Counter()

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

    def occurrence(self, keys: pd.Series) -> pd.Series:
        """How many times each key of duplicate rows came before in the interval (identical rows share a key)."""
        counts = []
        for key in keys:
            counts.append(self._duplicate_keys[key])
            self._duplicate_keys[key] += 1
        return pd.Series(counts, index=keys.index, dtype="int64")


def _text(values: pd.Series) -> pd.Series:
    """Any column as str values with None for missing, without touching columns that already are.

    Bytes (a BLOB where text belongs) are decoded as UTF-8, undecodable bytes kept as lone surrogates for the
    checks to reject; numbers become their text (`42`, not `42.0`, when a float holds an integer).
    """
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.where(values.notna(), None).astype(object)
    return values.map(as_text).astype(object)


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def _classify_text(value: Any) -> int:
    if not isinstance(value, str) or not value.strip():
        return _TEXT_BLANK
    if _TEXT_FLAW.search(value) is None:
        return _TEXT_OK
    if _SURROGATE.search(value):
        return _TEXT_INVALID
    return _TEXT_CONTROL if _CONTROL.sub("", value).strip() else _TEXT_BLANK  # control characters only: blank


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


def json_lines(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row. (Not `splitlines()`: JSON keeps U+2028, U+2029 and U+0085 as they are.)"""
    if not len(frame):
        return []
    return frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n").split("\n")


def _printable(value: Any) -> str | None:
    """A source value as text that can be written anywhere: undecodable bytes shown as escapes."""
    if isinstance(value, COMPOUND_TYPES):
        value = compound_text(value)
    elif value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


_SCALAR_KINDS = {"string", "empty", "integer", "floating", "mixed-integer-float", "decimal", "boolean", "datetime",
                 "datetime64", "date", "bytes", "integer-na", "timedelta", "time"}


def _scalars(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with JSON and array values (lists, dicts) as their JSON text, so that every check sees scalars."""
    compound = [c for c in frame.columns
                if pd.api.types.infer_dtype(frame[c], skipna=True) not in _SCALAR_KINDS
                and any(isinstance(v, COMPOUND_TYPES) for v in frame[c])]
    if not compound:
        return frame
    frame = frame.copy()
    for column in compound:
        frame[column] = frame[column].map(lambda v: compound_text(v) if isinstance(v, COMPOUND_TYPES) else v)
    return frame


def _digest(frame: pd.DataFrame | pd.Series) -> pd.Series:
    return pd.Series(pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64), index=frame.index)


def content_hash(frame: pd.DataFrame) -> pd.Series:
    """A stable 64-bit digest of what a message says, to tell an edited message from an unchanged one."""
    return _digest(frame[CONTENT_COLUMNS].astype(object).where(frame[CONTENT_COLUMNS].notna(), ""))


def text_hash(texts: pd.Series) -> pd.Series:
    """A 64-bit digest of the text as sent (blank counts as none), comparable with what the chat history returns."""
    texts = texts.astype(object).where(texts.notna(), "")
    return _digest(texts.where(texts.str.strip() != "", ""))


def source_digest(batch: Batch) -> tuple[int, int]:
    """The rows of a transformed chunk (valid and rejected) and an order-free 64-bit digest of them: each message's
    id, time and content, each reject's source key and reason. Chunks add up (rows and digests alike, modulo
    2**64), so a day's digest does not depend on how it was chunked; an unchanged digest means nothing to send."""
    messages = batch.messages[["msgid", "msec", "content_hash"]].astype(str)
    rejects = batch.rejects[["source_key", "reason"]].astype(str)
    total = sum(int(pd.util.hash_pandas_object(frame, index=False).to_numpy().sum(dtype=np.uint64))
                for frame in (messages, rejects) if len(frame))
    return len(messages) + len(rejects), total % 2**64


_UNFIT_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def transform(frames: SourceFrames, senders: Senders, prefix: str, source_zone: ZoneInfo, *,
              seen: SeenIds | None = None, text_limit: int | None = None, now: datetime | None = None) -> Batch:
    """Valid rows become conversations and messages ready to send; the others become rejects with their reason.

    Every row of the chunk ends in exactly one of the two; no value of one row can fail another.
    """
    now = now or datetime.now(UTC)
    seen = SeenIds() if seen is None else seen
    warnings: Counter = Counter()
    rejects: list[pd.DataFrame] = []
    frames = SourceFrames(*(_scalars(f) for f in (frames.messages, frames.conversations, frames.clients,
                                                   frames.managers)), frames.rows_read)
    m = frames.messages.reset_index(drop=True)
    m["msec"] = m["created_ms"] if "created_ms" in m.columns else to_utc_ms(m["created_at"], source_zone)
    raw = m[[c for c in MESSAGE_COLUMNS if c in m.columns]]
    for column in ("id", "conversation_id", "manager_id", "media_url", "file_name", "contact_name",
                   "contact_phone", "text"):
        m[column] = _text(m[column])
    m["type"] = _per_value(m["type"], lambda v: "text" if v is None or pd.isna(v) else str(v).strip().lower())
    m["direction"] = _per_value(m["direction"], lambda v: None if v is None or pd.isna(v) else str(v).strip().lower())
    m["text"], blank_text, bad_utf8 = repair_text(m["text"])

    def reject(mask: pd.Series, reason: str, detail: str | pd.Series, *, duplicate: bool = False) -> None:
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            rows = raw.loc[mask[mask].index]
            key = source_keys(m.loc[rows.index, "id"], m.loc[rows.index, "msec"], rows["created_at"], rows,
                              seen, always_digest=duplicate)
            rejects.append(pd.DataFrame({
                "source_key": key,
                "reason": reason,
                "detail": detail if isinstance(detail, str) else detail.loc[rows.index],
                "row": json_lines(rows.map(_printable)),
            }))

    has_id = (m["id"].notna() & (m["id"] != "")).astype(bool)  # rows without an id are rejected as such below
    duplicate = pd.Series(False, index=m.index)
    duplicate[has_id] = seen.split(m.loc[has_id, "id"])
    reject(duplicate, "duplicate_id", "another row of the interval has the same message id; the first is kept",
           duplicate=True)
    m = m[~duplicate]

    conversations = frames.conversations.assign(id=_text(frames.conversations["id"]),
                                                client_id=_text(frames.conversations["client_id"]))
    conversations = conversations.drop_duplicates("id").set_index("id", drop=False)
    client_ids = set(_text(frames.clients["id"]).dropna())
    client_of = _text(m["conversation_id"].map(conversations["client_id"]))
    media_type = m["type"].isin(MEDIA_TYPES)
    media_url_ok = pd.Series(False, index=m.index)
    media_url_ok[media_type] = m.loc[media_type, "media_url"].str.match(r"^https?://\S+$").fillna(False)
    location = m["type"] == "location"
    file_size = _whole_numbers(m["file_size"].where(media_type & m["file_size"].notna()))
    lat, lon = _numbers(m["lat"].where(location)), _numbers(m["lon"].where(location))
    checks = [
        (m["id"].isna() | (m["id"] == ""), "missing_id", "the message has no id"),
        (_unfit_id(m["id"]), "bad_id", "the message id holds control characters or bytes that are not UTF-8"),
        ((len(prefix) + m["id"].str.len()) > KEY_LENGTH, "id_too_long",
         f"the message id is longer than {KEY_LENGTH - len(prefix)} characters"),
        (m["conversation_id"].isna(), "missing_conversation", "the message has no conversation_id"),
        (_unfit_id(m["conversation_id"], few=True) | ((len(prefix) + m["conversation_id"].str.len()) > KEY_LENGTH),
         "bad_conversation_id",
         f"the conversation id holds control characters, bytes that are not UTF-8, or more than "
         f"{KEY_LENGTH - len(prefix)} characters"),
        (~m["conversation_id"].isin(conversations["id"]), "orphan_conversation",
         "the message's conversation does not exist in the source"),
        (client_of.isna(), "missing_client", "the message's conversation has no client_id"),
        (_unfit_id(client_of, few=True) | ((len(prefix) + client_of.str.len()) > KEY_LENGTH), "bad_client_id",
         f"the conversation's client id holds control characters, bytes that are not UTF-8, or more than "
         f"{KEY_LENGTH - len(prefix)} characters"),
        (~client_of.isin(client_ids), "orphan_client", "the conversation's client does not exist in the source"),
        (~m["direction"].isin(["in", "out"]), "unknown_direction", "direction must be 'in' or 'out'"),
        (~m["type"].isin(MESSAGE_TYPES), "unknown_type", f"type must be one of {', '.join(MESSAGE_TYPES)}"),
        (m["msec"].isna() | (m["msec"] < 0), "bad_timestamp",
         "created_at is missing, unreadable (ISO 8601 expected) or before 1970"),
        (m["msec"] > now.timestamp() * 1000, "future_timestamp", "created_at is in the future"),
        (bad_utf8.loc[m.index], "invalid_utf8", "the text is not valid UTF-8"),
        ((m["type"] == "text") & blank_text.loc[m.index], "empty_text",
         "a text message with NULL, empty or only control characters as text"),
        (media_type & ~media_url_ok, "bad_media_url", "a media message needs an http(s) media_url"),
        (media_type & m["file_size"].notna() & file_size.isna(), "bad_file_size",
         "file_size must be a whole number of bytes, 0 or more"),
        (location & (lat.isna() | lon.isna()), "bad_location",
         "a location message needs lat and lon as numbers"),
        (location & ~(lat.between(-90, 90) & lon.between(-180, 180)).fillna(False).astype(bool), "bad_location",
         "lat must lie within -90..90 and lon within -180..180"),
        ((m["type"] == "contact") & (m["contact_name"].isna() | m["contact_phone"].isna()), "bad_contact",
         "a contact message needs contact_name and contact_phone"),
        (_any_unfit_text(m, ("media_url", "file_name", "contact_name", "contact_phone")), "invalid_utf8",
         "media_url, file_name, contact_name or contact_phone is not valid UTF-8"),
    ]
    if text_limit is not None:
        checks.append((m["text"].str.len() > text_limit, "text_too_long",
                       f"the text is longer than {text_limit} characters (AMOJO_ETL_TEXT_LIMIT)"))
    bad = pd.Series(False, index=m.index)
    for mask, reason, detail in checks:
        mask = mask.fillna(False).astype(bool) & ~bad
        reject(mask, reason, detail)
        bad |= mask
    m, file_size, lat, lon = m[~bad], file_size[~bad], lat[~bad], lon[~bad]

    managers = frames.managers.assign(id=_text(frames.managers["id"])).drop_duplicates("id").set_index("id")
    manager_email = m["manager_id"].map(_per_value(managers["email"], lambda v: str(v).strip().lower()
                                                   if isinstance(v, str) else None))
    ref_id = manager_email.map(senders.amojo_id_by_email).astype(object)
    known_manager = ref_id.notna()
    if senders.bot_id:
        ref_id = ref_id.fillna(senders.bot_id)
    outgoing = m["direction"] == "out"
    no_sender = outgoing & ref_id.isna()
    reject(no_sender, "no_sender_ref",
           "the manager has no amoCRM user with an amojo_id, and AMOJO_ETL_BOT_ID is not set")
    keep = ~no_sender
    m, ref_id, known_manager, outgoing = m[keep], ref_id[keep], known_manager[keep], outgoing[keep]
    file_size, lat, lon = file_size[keep], lat[keep], lon[keep]

    as_manager = (outgoing & known_manager).to_numpy()
    manager_name = m["manager_id"].map(_printable_names(managers["name"]))
    messages = pd.DataFrame({
        "msgid": prefix + m["id"],
        "source_id": m["id"],
        "conversation_id": prefix + m["conversation_id"],
        "msec": m["msec"].astype("int64"),
        "outgoing": outgoing,
        "sender_id": np.where(as_manager, prefix + "manager-" + _per_value(m["manager_id"], _key_part).fillna(""),
                              prefix + "bot"),
        "sender_name": manager_name.where(as_manager, senders.bot_name).fillna(senders.bot_name),
        "ref_id": ref_id.where(outgoing, None),
        "type": m["type"],
        "text": m["text"],
        "media_url": m["media_url"],
        "file_name": m["file_name"],
        "file_size": file_size.where(m["type"].isin(MEDIA_TYPES)).astype("Int64"),
        "lat": lat.where(m["type"] == "location"),
        "lon": lon.where(m["type"] == "location"),
        "contact_name": m["contact_name"],
        "contact_phone": m["contact_phone"],
    })
    # One conversation's messages in time order, whatever order the source's text timestamps sorted in.
    messages = messages.sort_values(["conversation_id", "msec"], kind="stable").reset_index(drop=True)
    needs_name = messages["type"].isin(NEEDS_FILE_META) & messages["file_name"].isna()
    if needs_name.any():
        messages.loc[needs_name, "file_name"] = messages.loc[needs_name, "media_url"].str.rsplit("/", n=1).str[-1]
    messages["content_hash"] = content_hash(messages)
    messages["text_hash"] = text_hash(messages["text"])

    chats = _conversations(conversations.reset_index(drop=True), frames.clients,
                           messages["conversation_id"].unique(), prefix, source_zone, warnings)
    reject_frame = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    return Batch(chats, messages, reject_frame, warnings)


def unplaced_rejects(messages: pd.DataFrame, source_zone: ZoneInfo) -> pd.DataFrame:
    """Rejects for the source's messages no interval can send: created_at NULL or not a time (`no_timestamp`),
    before 1970, or stored in a form the database cannot compare with an interval (`bad_timestamp`)."""
    messages = _scalars(messages).reset_index(drop=True)
    msec = to_utc_ms(messages["created_at"], source_zone)
    readable = msec.notna().to_numpy(dtype=bool)
    before_1970 = (msec < 0).fillna(False).to_numpy(dtype=bool)
    return pd.DataFrame({
        "source_key": source_keys(_text(messages["id"]), msec, messages["created_at"], messages),
        "reason": np.where(readable, "bad_timestamp", "no_timestamp"),
        "detail": np.where(before_1970, "created_at is before 1970, which amoCRM cannot hold",
                           np.where(readable, "created_at is stored in a form the database cannot compare with an "
                                              "interval; store it as YYYY-MM-DD HH:MM:SS",
                                    "created_at is NULL or not an ISO 8601 time, so no interval selects the row; "
                                    "fix it at the source")),
        "row": json_lines(messages.map(_printable)),
    }, columns=REJECT_COLUMNS)


def source_keys(ids: pd.Series, msec: pd.Series, created_at: pd.Series | None, rows: pd.DataFrame,
                seen: SeenIds | None = None, *, always_digest: bool = False) -> pd.Series:
    """`message:{id}@{created_at in UTC}`: which source row a reject is, the same across chunks, runs and days.

    Rows that this cannot tell apart (a repeated id, no id, no readable time) get a digest of what they hold,
    and identical rows a count of the copies before them in the interval (they are interchangeable).
    """
    shown = ids.map(_key_part)
    when = pd.Series(_utc_text(msec), index=ids.index, dtype=object)
    unreadable = msec.isna()
    if created_at is not None and unreadable.any():
        when[unreadable] = created_at[unreadable].map(_key_part)
    keys = "message:" + shown.fillna("<null id>") + "@" + when.fillna("<null time>")
    ambiguous = shown.isna() | (ids == "") | unreadable if not always_digest else pd.Series(True, index=ids.index)
    if ambiguous.any():
        digest = _digest(rows.loc[ambiguous[ambiguous].index].map(_printable).astype(str))
        keys[ambiguous] = keys[ambiguous] + "#" + digest.map(lambda h: f"{h & 0xFFFFFFFF:08x}")
        repeat = (seen or SeenIds()).occurrence(keys[ambiguous])
        keys[ambiguous] = keys[ambiguous].where(repeat == 0, keys[ambiguous] + "~" + repeat.astype(str))
    return keys


def _utc_text(msec: pd.Series) -> np.ndarray:
    """Unix milliseconds as `2026-10-05T12:00:00Z` (with `.250` when there are milliseconds); None where NA."""
    known = msec.notna().to_numpy(dtype=bool)
    text = np.full(len(msec), None, dtype=object)
    if known.any():
        stamps = np.datetime_as_string(msec[known].to_numpy(dtype="int64").astype("datetime64[ms]"), unit="ms")
        text[known] = [t.removesuffix(".000") + "Z" for t in stamps]
    return text


_ESCAPED = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


def _key_part(value: Any, limit: int = 200) -> str | None:
    """A value as it can be written into any ledger column: control characters, bad bytes and backslashes
    escaped (so that no two values meet), and cut, with a digest of the whole, past `limit` characters."""
    text = value if isinstance(value, str) else _printable(value)
    if text is None:
        return None
    if _ESCAPED.search(text):
        text = _ESCAPED.sub(lambda c: "\\\\" if c.group() == "\\" else f"\\x{ord(c.group()):02x}"
                            if ord(c.group()) < 256 else f"\\u{ord(c.group()):04x}", text)
    if len(text) > limit:
        text = f"{text[:limit]}…{hash_text(text):016x}"
    return text


def hash_text(text: str) -> int:
    """A stable 64-bit digest of one string."""
    return int(pd.util.hash_array(np.array([text], dtype=object))[0])


def _unfit_id(ids: pd.Series, few: bool = False) -> pd.Series:
    """Ids no ledger column and no JSON body can hold as they are: control characters or undecodable bytes.
    With `few` (conversation and client ids repeat across a chunk's messages), each distinct id is looked at once."""
    if few:
        return _per_value(ids, lambda v: isinstance(v, str) and _UNFIT_ID.search(v) is not None).astype(bool)
    return ids.str.contains(_UNFIT_ID).fillna(False).astype(bool)


def _any_unfit_text(m: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    unfit = pd.Series(False, index=m.index)
    for column in columns:
        unfit |= m[column].str.contains(_SURROGATE).fillna(False).astype(bool)
    return unfit


def _numbers(values: pd.Series) -> pd.Series:
    """Finite floats; NaN for anything else (text, ±inf, NaN itself, numbers no float holds)."""
    try:
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    except (TypeError, ValueError, OverflowError):
        numbers = pd.Series([_number(v) for v in values], index=values.index, dtype="float64")
    return numbers.where(np.isfinite(numbers))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def _whole_numbers(values: pd.Series) -> pd.Series:
    """Whole numbers of 0 or more (`10`, `10.0`, `"10"`) as Int64; NA for anything else (`1.5`, -1, `abc`)."""
    numbers = _numbers(values)
    whole = (numbers >= 0) & (numbers < 2.0**63) & (numbers == np.floor(numbers))
    return numbers.where(whole).astype("Int64")


def _printable_names(names: pd.Series) -> pd.Series:
    """Display names as JSON can carry them: text (a number or bytes as their text), undecodable bytes replaced,
    control characters dropped."""
    def clean(value: Any) -> Any:
        value = as_text(value)
        if value is None:
            return None
        value = value.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(value) else value
        return _CONTROL.sub("", value)

    return names.map(clean).astype(object)


def _conversations(conversations: pd.DataFrame, clients: pd.DataFrame, used: np.ndarray, prefix: str,
                   source_zone: ZoneInfo, warnings: Counter) -> pd.DataFrame:
    """One row per conversation with messages in the chunk: its client, with phone and email normalised."""
    conv = conversations.assign(conversation_id=prefix + conversations["id"])
    conv = conv[conv["conversation_id"].isin(used)]
    clients = clients.assign(id=_text(clients["id"])).drop_duplicates("id").rename(columns={"id": "client_id"})
    chat = conv.merge(clients, on="client_id", how="left")
    phone = normalise_phones(_text(chat["phone"]).map(_valid_or_none).astype(object))
    email = normalise_emails(_text(chat["email"]).map(_valid_or_none).astype(object))
    warnings["invalid_phone_dropped"] += int((chat["phone"].notna() & phone.isna()).sum())
    warnings["invalid_email_dropped"] += int((chat["email"].notna() & email.isna()).sum())
    name = _printable_names(_text(chat["name"])).str.strip()
    avatar = _text(chat["avatar_url"]).map(_valid_or_none).astype(object)
    profile = _text(chat["profile_url"]).map(_valid_or_none).astype(object)
    return pd.DataFrame({
        "conversation_id": chat["conversation_id"],
        "source_id": chat["id"],
        "client_key": chat["client_id"],
        "client_id": prefix + chat["client_id"],
        "name": name.where(name.fillna("") != "", "Client " + chat["client_id"]),
        "phone": phone,
        "email": email,
        "avatar": avatar.where(avatar.str.match(r"^https?://\S+$").fillna(False).astype(bool), None),
        "profile_link": profile.where(profile.str.match(r"^https?://\S+$").fillna(False).astype(bool), None),
        # When the conversation opened: none of its messages is older, so runs of earlier days matter to it only
        # back to here. Unreadable: from the beginning of time.
        "opened_ms": to_utc_ms(chat["created_at"], source_zone).fillna(0).astype("int64"),
    }).set_index("conversation_id")


def _valid_or_none(value: Any) -> Any:
    """A client's optional field, dropped when it could not be sent as JSON (undecodable bytes)."""
    return None if isinstance(value, str) and _SURROGATE.search(value) else value


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


def contact_key(client_id: str) -> str:
    """The key written into every contact we create, by which a create whose answer was lost is found again
    (for a client without phone or email too): one per client and id prefix, letters and digits only, so that
    amoCRM's search matches it whole."""
    return "amojoetl" + hashlib.blake2b(client_id.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def contact_body(conversation: Any) -> dict[str, Any]:
    """The REST v4 contact for a conversation's client: phone and email as amoCRM fields, and our key in the
    system IM field (⚠️ amojo-api.md §6.3 names only PHONE and EMAIL field codes; IM is a system field of every
    account's contacts, and `query` searches every filled field)."""
    fields = []
    if _present(conversation.phone):
        fields.append({"field_code": "PHONE", "values": [{"value": conversation.phone, "enum_code": "WORK"}]})
    if _present(conversation.email):
        fields.append({"field_code": "EMAIL", "values": [{"value": conversation.email, "enum_code": "WORK"}]})
    fields.append({"field_code": "IM", "values": [{"value": contact_key(conversation.client_id),
                                                   "enum_code": "OTHER"}]})
    return {"name": conversation.name, "custom_fields_values": fields}


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
