"""Attachments: each one a part of its message, sent as its own amoCRM message right after the message's text.

A part's msgid is its message's followed by `#` and the attachment id (`amojoetl-42#7` for attachment 7 of message
42): derived from the source's ids alone, so it stays the same across runs and days, and the ledger sends each
part once, edits it when it changes and rejects it alone. Parts keep their message's time, conversation and sender;
within a message they follow its text in attachment id order (by number when the ids are numbers).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from amojo.payloads import MEDIA_TYPES, MESSAGE_TYPES
from etl.ledger import KEY_LENGTH

from .checks import WHOLE_MESSAGE, Check, content_checks
from .rejects import Rejects
from .text import unfit_ids
from .values import as_numbers, as_texts, as_whole_numbers, per_value

PART_SEPARATOR = "#"
ATTACHMENT_TYPES = tuple(t for t in MESSAGE_TYPES if t != "text")
TEXT_COLUMNS = ("message_id", "id", "media_url", "file_name", "contact_name", "contact_phone")


def read_attachments(attachments: pd.DataFrame, message_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The attachments of these messages, ids and texts as text, type in lower case, numbers read, in attachment id
    order within each message (`part` 1, 2, ...); and the same rows as read, for their rejects. Attachments of
    other messages (a duplicate row's, rejected before) are not this chunk's to send."""
    a = attachments.reset_index(drop=True)
    a["message_id"] = as_texts(a["message_id"])
    a = a[a["message_id"].isin(set(message_ids.dropna()))].reset_index(drop=True)
    raw = a.copy()
    for column in TEXT_COLUMNS:
        a[column] = as_texts(a[column])
    a["type"] = per_value(a["type"], lambda v: None if v is None or pd.isna(v) else str(v).strip().lower())
    media, location = a["type"].isin(MEDIA_TYPES), a["type"] == "location"
    a["file_bytes"] = as_whole_numbers(a["file_size"].where(media & a["file_size"].notna()))
    a["seconds"] = as_whole_numbers(a["duration"])
    a["latitude"], a["longitude"] = as_numbers(a["lat"].where(location)), as_numbers(a["lon"].where(location))
    number = pd.to_numeric(a["id"], errors="coerce")
    order = a.assign(_number=number.where(a["id"].str.fullmatch(r"\d+").fillna(False).astype(bool)))
    order = order.sort_values(["message_id", "_number", "id"], na_position="last", kind="stable").index
    a, raw = a.loc[order].reset_index(drop=True), raw.loc[order].reset_index(drop=True)
    a["part"] = a.groupby("message_id").cumcount() + 1
    return a, raw


def attachment_parts(a: pd.DataFrame, raw: pd.DataFrame, parents: pd.DataFrame, fallen: dict[str, tuple[str, str]],
                     prefix: str, now: datetime, rejects: Rejects) -> pd.DataFrame:
    """The attachments that can be sent, as parts of their message (`parents`: the messages that can be sent, by
    row), in the columns of a message; the others rejected alone, with their reason. An attachment of a message
    rejected as a whole (`fallen`: message id -> reason, detail) is rejected with its message's reason."""
    of_fallen = a["message_id"].isin(fallen.keys())
    why = a["message_id"].map({message_id: reason for message_id, (reason, _) in fallen.items()})
    for reason, detail in sorted(set(fallen.values())):
        rejects.add(of_fallen & (why == reason), reason, f"its message is rejected: {detail}")
    a, raw = a[~of_fallen], raw[~of_fallen]
    parent = parents.reset_index(names="row").drop_duplicates("id").set_index("id")
    a = a[a["message_id"].isin(parent.index)]
    shared = ["row", "conversation_id", "msec", "direction", "outgoing", "ref_id", "manager_id"]
    p = a.join(parent[shared], on="message_id")
    p = p.assign(text=None, blank_text=True, bad_utf8=False)
    bad = pd.Series(False, index=p.index)
    for mask, reason, detail in _checks(p, prefix, now):
        mask = mask.fillna(False).astype(bool) & ~bad
        # Attachments without an id, or with their message's id repeated, share one key: their digest tells them apart.
        rejects.add(mask, reason, detail, duplicate=reason in ("missing_id", "duplicate_id"))
        bad |= mask
    p = p[~bad]
    return p.assign(id=p["message_id"] + PART_SEPARATOR + p["id"], duration=p["seconds"])


def _checks(p: pd.DataFrame, prefix: str, now: datetime) -> list[Check]:
    """What an attachment must pass: an id fit for the ledger once joined to its message's, the first of its id,
    a type that is not text, and the content checks of a message of its type."""
    part_id = p["message_id"] + PART_SEPARATOR + p["id"]
    return [
        (p["id"].isna() | (p["id"] == ""), "missing_id", "the attachment has no id"),
        (unfit_ids(p["id"]), "bad_id", "the attachment id holds control characters or bytes that are not UTF-8"),
        ((len(prefix) + part_id.str.len()) > KEY_LENGTH, "id_too_long",
         f"the message id, `{PART_SEPARATOR}` and the attachment id are longer than {KEY_LENGTH - len(prefix)} "
         "characters"),
        (part_id.duplicated(keep="first"), "duplicate_id",
         "another attachment of the message has the same id; the first is kept"),
        (~p["type"].isin(ATTACHMENT_TYPES), "unknown_type",
         f"an attachment's type must be one of {', '.join(ATTACHMENT_TYPES)}"),
        *[check for check in content_checks(p.assign(file_size=p["file_size"].where(p["type"].isin(MEDIA_TYPES))),
                                            now, None) if check[1] not in WHOLE_MESSAGE],
        (p["duration"].notna() & p["seconds"].isna(), "bad_duration",
         "duration must be a whole number of seconds, 0 or more"),
    ]
