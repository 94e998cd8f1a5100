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
from etl.source import MESSAGE_COLUMNS, SourceFrames, to_utc_ms

from .batch import Batch, SeenIds, Senders
from .checks import content_checks, id_checks
from .clients import chats
from .digests import content_hash, text_hash
from .rejects import Rejects
from .text import key_part, printable_names, repair_text
from .values import as_numbers, as_texts, as_whole_numbers, per_value, scalars

TEXT_COLUMNS = ("id", "conversation_id", "manager_id", "media_url", "file_name", "contact_name", "contact_phone",
                "text")


def transform(frames: SourceFrames, senders: Senders, prefix: str, source_zone: ZoneInfo, *,
              seen: SeenIds | None = None, text_limit: int | None = None, now: datetime | None = None) -> Batch:
    """Valid rows become conversations and messages ready to send; the others become rejects with their reason.

    Every row of the chunk ends in exactly one of the two; no value of one row can fail another.
    """
    now = now or datetime.now(UTC)
    seen = SeenIds() if seen is None else seen
    frames = SourceFrames(*(scalars(f) for f in (frames.messages, frames.conversations, frames.clients,
                                                  frames.managers)), frames.rows_read)
    m, raw = _read_messages(frames.messages, source_zone)
    rejects = Rejects(raw, m["id"], m["msec"], seen)
    m = _first_of_each_id(m, seen, rejects)
    conversations = _by_id(frames.conversations)
    m = _valid(_read_numbers(m), conversations, frames.clients, prefix, now, text_limit, rejects)
    managers = frames.managers.assign(id=as_texts(frames.managers["id"])).drop_duplicates("id").set_index("id")
    m = _with_senders(m, managers, senders, rejects)
    messages = _message_rows(m, managers, senders, prefix)
    warnings: Counter = Counter()
    chunk_chats = chats(conversations.reset_index(drop=True), frames.clients, messages["conversation_id"].unique(),
                        prefix, source_zone, warnings)
    return Batch(chunk_chats, messages, rejects.frame(), warnings)


def _read_messages(messages: pd.DataFrame, source_zone: ZoneInfo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The messages with their time as unix milliseconds (`msec`), ids and texts as text, type and direction in
    lower case, texts repaired (`blank_text`, `bad_utf8` where they cannot be); and the rows as read."""
    m = messages.reset_index(drop=True)
    m["msec"] = m["created_ms"] if "created_ms" in m.columns else to_utc_ms(m["created_at"], source_zone)
    raw = m[[c for c in MESSAGE_COLUMNS if c in m.columns]]
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
    """The chunk's conversations by id (the first row of each), ids and client ids as text."""
    conversations = conversations.assign(id=as_texts(conversations["id"]),
                                         client_id=as_texts(conversations["client_id"]))
    return conversations.drop_duplicates("id").set_index("id", drop=False)


def _read_numbers(m: pd.DataFrame) -> pd.DataFrame:
    """Media sizes and locations read as numbers (`file_bytes`, `latitude`, `longitude`), NA where they are not."""
    media_type = m["type"].isin(MEDIA_TYPES)
    location = m["type"] == "location"
    m["file_bytes"] = as_whole_numbers(m["file_size"].where(media_type & m["file_size"].notna()))
    m["latitude"], m["longitude"] = as_numbers(m["lat"].where(location)), as_numbers(m["lon"].where(location))
    return m


def _valid(m: pd.DataFrame, conversations: pd.DataFrame, clients: pd.DataFrame, prefix: str, now: datetime,
           text_limit: int | None, rejects: Rejects) -> pd.DataFrame:
    """The messages that pass every check; each other one is rejected for the first check it fails."""
    client_ids = set(as_texts(clients["id"]).dropna())
    checks = id_checks(m, conversations, client_ids, prefix) + content_checks(m, now, text_limit)
    bad = pd.Series(False, index=m.index)
    for mask, reason, detail in checks:
        mask = mask.fillna(False).astype(bool) & ~bad
        rejects.add(mask, reason, detail)
        bad |= mask
    return m[~bad]


def _with_senders(m: pd.DataFrame, managers: pd.DataFrame, senders: Senders, rejects: Rejects) -> pd.DataFrame:
    """Who each manager message is sent as (`ref_id`): the manager's amoCRM user, found by email, else the
    channel bot; those with neither are rejected."""
    manager_email = m["manager_id"].map(per_value(managers["email"], lambda v: str(v).strip().lower()
                                                  if isinstance(v, str) else None))
    ref_id = manager_email.map(senders.amojo_id_by_email).astype(object)
    m["ref_id"] = ref_id.fillna(senders.bot_id) if senders.bot_id else ref_id
    m["outgoing"] = m["direction"] == "out"
    no_sender = m["outgoing"] & m["ref_id"].isna()
    rejects.add(no_sender, "no_sender_ref",
                "the manager has no amoCRM user with an amojo_id, and AMOJO_ETL_BOT_ID is not set")
    return m[~no_sender]


def _message_rows(m: pd.DataFrame, managers: pd.DataFrame, senders: Senders, prefix: str) -> pd.DataFrame:
    """The messages ready to send, in our ids, one conversation's in time order, with their content digests.

    A manager message goes as the manager (our id for them, their name); one whose manager has no amoCRM user goes
    as the channel bot (`ref_id`) under the manager's own name, so the name is not lost; without a manager, or a
    name, it goes as the bot."""
    as_manager = (m["outgoing"] & m["manager_id"].notna()).to_numpy()
    manager_name = m["manager_id"].map(printable_names(managers["name"]))
    messages = pd.DataFrame({
        "msgid": prefix + m["id"],
        "source_id": m["id"],
        "conversation_id": prefix + m["conversation_id"],
        "msec": m["msec"].astype("int64"),
        "outgoing": m["outgoing"],
        "sender_id": np.where(as_manager, prefix + "manager-" + per_value(m["manager_id"], key_part).fillna(""),
                              prefix + "bot"),
        "sender_name": manager_name.where(as_manager, senders.bot_name).fillna(senders.bot_name),
        "ref_id": m["ref_id"].where(m["outgoing"], None),
        "type": m["type"],
        "text": m["text"],
        "media_url": m["media_url"],
        "file_name": m["file_name"],
        "file_size": m["file_bytes"].where(m["type"].isin(MEDIA_TYPES)).astype("Int64"),
        "lat": m["latitude"].where(m["type"] == "location"),
        "lon": m["longitude"].where(m["type"] == "location"),
        "contact_name": m["contact_name"],
        "contact_phone": m["contact_phone"],
    })
    # One conversation's messages in time order, whatever order the source's text timestamps sorted in.
    messages = messages.sort_values(["conversation_id", "msec"], kind="stable").reset_index(drop=True)
    # An empty or blank name is no name (amojo refuses it): named from the URL as a missing one is.
    needs_name = messages["type"].isin(NEEDS_FILE_META) & ~_named(messages["file_name"])
    if needs_name.any():
        messages.loc[needs_name, "file_name"] = messages.loc[needs_name, "media_url"].map(url_file_name)
    messages["content_hash"] = content_hash(messages)
    messages["text_hash"] = text_hash(messages["text"])
    return messages


def _named(names: pd.Series) -> pd.Series:
    """Where a file name is there: not missing, and not empty or blank."""
    return names.map(lambda name: isinstance(name, str) and bool(name.strip())).astype(bool)


@task(name="transform", task_run_name="transform-{label}", cache_policy=NO_CACHE)
def transform_task(frames: SourceFrames, senders: Senders, prefix: str, source_zone: str, seen: SeenIds,
                   text_limit: int | None, label: str) -> Batch:
    """`transform` as a Prefect task: one chunk of the interval named by `label`."""
    return transform(frames, senders, prefix, ZoneInfo(source_zone), seen=seen, text_limit=text_limit)
