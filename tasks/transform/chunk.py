"""Transform one chunk: source rows -> conversations and messages ready to send, and every bad row -> a reject.

Everything here is column-wise over the chunk. The JSON payload of a message is built only when it is sent
(`amojo.payloads.message_payload`), where the API's pace, not Python, sets the speed.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.payloads import MEDIA_TYPES, NEEDS_FILE_META
from etl.media import url_file_name
from etl.source import MESSAGE_COLUMNS, MESSAGE_OPTIONAL_COLUMNS, SourceFrames, to_utc_ms

from .attachments import PART_SEPARATOR, attachment_parts, read_attachments
from .batch import Batch, SeenIds, Senders
from .checks import WHOLE_MESSAGE, content_checks, id_checks
from .clients import chats
from .digests import content_hash, shown_hash
from .rejects import Rejects
from .text import key_part, printable_names, repair_text
from .values import as_numbers, as_texts, as_whole_numbers, per_value, scalars

TEXT_COLUMNS = ("id", "conversation_id", "manager_id", "media_url", "file_name", "contact_name", "contact_phone",
                "text", "reply_to_id")


def transform(frames: SourceFrames, senders: Senders, prefix: str, source_zone: ZoneInfo, *,
              seen: SeenIds | None = None, text_limit: int | None = None, now: datetime | None = None) -> Batch:
    """Valid rows become conversations and messages ready to send; the others become rejects with their reason.

    Every row of the chunk ends in exactly one of the two; no value of one row can fail another.
    """
    now = now or datetime.now(UTC)
    seen = SeenIds() if seen is None else seen
    frames = SourceFrames(*(scalars(f) for f in (frames.messages, frames.conversations, frames.clients,
                                                  frames.managers)), frames.rows_read, scalars(frames.attachments))
    m, raw = _read_messages(frames.messages, source_zone)
    rejects = Rejects(raw, m["id"], m["msec"], seen)
    m = _first_of_each_id(m, seen, rejects)
    a, raw_attachments = read_attachments(frames.attachments, m["id"])
    attachment_rejects = Rejects(raw_attachments, a["message_id"] + PART_SEPARATOR + a["id"].fillna(""),
                                 a["message_id"].map(m.drop_duplicates("id").set_index("id")["msec"]), seen,
                                 kind="attachment")
    m["has_attachments"] = m["id"].isin(set(a["message_id"]))
    conversations = _by_id(frames.conversations)
    fallen: dict[str, tuple[str, str]] = {}
    m = _valid(_read_numbers(m), conversations, frames.clients, prefix, now, text_limit, rejects, fallen)
    managers = frames.managers.assign(id=as_texts(frames.managers["id"])).drop_duplicates("id").set_index("id")
    m = _with_senders(m, managers, senders, rejects, fallen)
    parts = attachment_parts(a, raw_attachments, m, fallen, prefix, now, attachment_rejects)
    messages = _message_rows(m, parts, managers, senders, prefix)
    warnings: Counter = Counter()
    chunk_chats = chats(conversations.reset_index(drop=True), frames.clients, messages["conversation_id"].unique(),
                        prefix, source_zone, warnings)
    found = [f for f in (rejects.frame(), attachment_rejects.frame()) if len(f)]
    return Batch(chunk_chats, messages, pd.concat(found, ignore_index=True) if found else rejects.frame(), warnings)


def _read_messages(messages: pd.DataFrame, source_zone: ZoneInfo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The messages with their time as unix milliseconds (`msec`), ids and texts as text, type and direction in
    lower case, texts repaired (`blank_text`, `bad_utf8` where they cannot be); and the rows as read."""
    m = messages.reset_index(drop=True)
    m["msec"] = m["created_ms"] if "created_ms" in m.columns else to_utc_ms(m["created_at"], source_zone)
    raw = m[[c for c in MESSAGE_COLUMNS + MESSAGE_OPTIONAL_COLUMNS if c in m.columns]]
    if "reply_to_id" not in m.columns:
        m["reply_to_id"] = None
    for column in TEXT_COLUMNS:
        m[column] = as_texts(m[column])
    m["type"] = per_value(m["type"], lambda v: "text" if v is None or pd.isna(v) else str(v).strip().lower())
    m["direction"] = per_value(m["direction"], lambda v: None if v is None or pd.isna(v) else str(v).strip().lower())
    m["text"], m["blank_text"], m["bad_utf8"] = repair_text(m["text"])
    return m, raw


def _first_of_each_id(m: pd.DataFrame, seen: SeenIds, rejects: Rejects) -> pd.DataFrame:
    """The first row of each message id in the interval; the later ones are rejected as duplicates."""
    has_id = (m["id"].notna() & (m["id"] != "")).astype(bool)  # rows without an id are rejected as such later
    duplicate = pd.Series(False, index=m.index)
    duplicate[has_id] = seen.split(m.loc[has_id, "id"])
    rejects.add(duplicate, "duplicate_id", "another row of the interval has the same message id; the first is kept",
                duplicate=True)
    return m[~duplicate]


def _by_id(conversations: pd.DataFrame) -> pd.DataFrame:
    """The chunk's conversations by id (the first row of each), ids, client ids and sources as text (an empty
    source is none)."""
    sources = as_texts(conversations["source_external_id"]) if "source_external_id" in conversations else None
    conversations = conversations.assign(id=as_texts(conversations["id"]),
                                         client_id=as_texts(conversations["client_id"]),
                                         source_external_id=None if sources is None else sources.where(sources != "",
                                                                                                       None))
    return conversations.drop_duplicates("id").set_index("id", drop=False)


def _read_numbers(m: pd.DataFrame) -> pd.DataFrame:
    """Media sizes and locations read as numbers (`file_bytes`, `latitude`, `longitude`), NA where they are not."""
    media_type = m["type"].isin(MEDIA_TYPES)
    location = m["type"] == "location"
    m["file_bytes"] = as_whole_numbers(m["file_size"].where(media_type & m["file_size"].notna()))
    m["latitude"], m["longitude"] = as_numbers(m["lat"].where(location)), as_numbers(m["lon"].where(location))
    return m


def _valid(m: pd.DataFrame, conversations: pd.DataFrame, clients: pd.DataFrame, prefix: str, now: datetime,
           text_limit: int | None, rejects: Rejects, fallen: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The messages with something to send: each other one is rejected for the first check it fails.

    A message whose own content fails (`own_part` False) still sends its attachments; one that fails a check of
    the message as a whole (`WHOLE_MESSAGE`: where, when, as whom) is gone with them, noted in `fallen` (message id
    -> reason, detail). A blank text with attachments is no fault: only the attachments are sent.
    """
    client_ids = set(as_texts(clients["id"]).dropna())
    checks = id_checks(m, conversations, client_ids, prefix) + content_checks(m, now, text_limit)
    bad = pd.Series(False, index=m.index)
    whole = pd.Series(False, index=m.index)
    for mask, reason, detail in checks:
        mask = mask.fillna(False).astype(bool)
        rejects.add(mask & ~bad, reason, detail)
        bad |= mask
        if reason in WHOLE_MESSAGE:
            _fall(m, mask & ~whole, reason, detail, fallen)
            whole |= mask
    m["own_part"] = ~bad & ~((m["type"] == "text") & m["blank_text"] & m["has_attachments"])
    return m[~whole & (~bad | m["has_attachments"])]


def _fall(m: pd.DataFrame, mask: pd.Series, reason: str, detail: str, fallen: dict[str, tuple[str, str]]) -> None:
    """Note the messages rejected as a whole, whose attachments go with them."""
    for message_id in m.loc[mask & m["has_attachments"], "id"]:
        fallen.setdefault(message_id, (reason, detail))


def _with_senders(m: pd.DataFrame, managers: pd.DataFrame, senders: Senders, rejects: Rejects,
                  fallen: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Who each manager message is sent as (`ref_id`): the manager's amoCRM user, found by email, else the
    channel bot; those with neither are rejected, with their attachments."""
    manager_email = m["manager_id"].map(per_value(managers["email"], lambda v: str(v).strip().lower()
                                                  if isinstance(v, str) else None))
    ref_id = manager_email.map(senders.amojo_id_by_email).astype(object)
    m["ref_id"] = ref_id.fillna(senders.bot_id) if senders.bot_id else ref_id
    m["outgoing"] = m["direction"] == "out"
    no_sender = m["outgoing"] & m["ref_id"].isna()
    detail = "the manager has no amoCRM user with an amojo_id, and AMOJO_ETL_BOT_ID is not set"
    rejects.add(no_sender & m["own_part"], "no_sender_ref", detail)
    _fall(m, no_sender, "no_sender_ref", detail, fallen)
    return m[~no_sender]


def _message_rows(m: pd.DataFrame, parts: pd.DataFrame, managers: pd.DataFrame, senders: Senders,
                  prefix: str) -> pd.DataFrame:
    """The messages ready to send, in our ids, one conversation's in time order, each message's attachments right
    after its text (`parts`), with their content digests. A reply quotes (`reply_to`, our msgid of the message it
    answers) from the first part of the message that is sent.

    A manager message goes as the manager (our id for them, their name); one whose manager has no amoCRM user goes
    as the channel bot (`ref_id`) under the manager's own name, so the name is not lost; without a manager, or a
    name, it goes as the bot."""
    own = m[m["own_part"]]
    rows = pd.concat([own.assign(row=own.index, part=0, message_id=own["id"], duration=pd.NA),
                      parts.assign(reply_to_id=parts["message_id"].map(m.drop_duplicates("id")
                                                                        .set_index("id")["reply_to_id"]))],
                     ignore_index=True)
    # One conversation's messages in time order, whatever order the source's text timestamps sorted in; a
    # message's parts in order after it.
    rows = rows.sort_values(["conversation_id", "msec", "row", "part"], kind="stable").reset_index(drop=True)
    as_manager = (rows["outgoing"].astype(bool) & rows["manager_id"].notna()).to_numpy(dtype=bool)
    manager_name = rows["manager_id"].map(printable_names(managers["name"]))
    first_part = ~rows["row"].duplicated(keep="first")
    messages = pd.DataFrame({
        "msgid": prefix + rows["id"],
        "source_id": rows["id"],
        "conversation_id": prefix + rows["conversation_id"],
        "msec": rows["msec"].astype("int64"),
        "outgoing": rows["outgoing"].astype(bool),
        "sender_id": np.where(as_manager, prefix + "manager-" + per_value(rows["manager_id"], key_part).fillna(""),
                              prefix + "bot"),
        "sender_name": manager_name.where(as_manager, senders.bot_name).fillna(senders.bot_name),
        "ref_id": rows["ref_id"].where(rows["outgoing"].astype(bool), None),
        "type": rows["type"],
        "text": rows["text"],
        "media_url": rows["media_url"],
        "file_name": rows["file_name"],
        "file_size": pd.array(rows["file_bytes"].where(rows["type"].isin(MEDIA_TYPES)), dtype="Int64"),
        "lat": rows["latitude"].where(rows["type"] == "location"),
        "lon": rows["longitude"].where(rows["type"] == "location"),
        "contact_name": rows["contact_name"],
        "contact_phone": rows["contact_phone"],
        "duration": pd.array(rows["duration"], dtype="Int64"),
        "reply_to": (prefix + rows["reply_to_id"]).where(first_part & rows["reply_to_id"].notna(), None),
    })
    # An empty or blank name is no name (amojo refuses it): named from the URL as a missing one is.
    needs_name = messages["type"].isin(NEEDS_FILE_META) & ~_named(messages["file_name"])
    if needs_name.any():
        messages.loc[needs_name, "file_name"] = messages.loc[needs_name, "media_url"].map(url_file_name)
    messages["content_hash"] = content_hash(messages)
    messages["text_hash"] = shown_hash(messages)
    return messages


def _named(names: pd.Series) -> pd.Series:
    """Where a file name is there: not missing, and not empty or blank."""
    return names.map(lambda name: isinstance(name, str) and bool(name.strip())).astype(bool)


@task(name="transform", task_run_name="transform-{label}", cache_policy=NO_CACHE)
def transform_task(frames: SourceFrames, senders: Senders, prefix: str, source_zone: str, seen: SeenIds,
                   text_limit: int | None, label: str) -> Batch:
    """`transform` as a Prefect task: one chunk of the interval named by `label`."""
    return transform(frames, senders, prefix, ZoneInfo(source_zone), seen=seen, text_limit=text_limit)
