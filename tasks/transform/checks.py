"""The checks a message must pass to be sent, in the order they are tried: the first that fails is its reason."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from amojo.payloads import MEDIA_TYPES, MESSAGE_TYPES
from etl.ledger import KEY_LENGTH
from etl.media import MEDIA_URL

from .text import any_undecodable, unfit_ids
from .values import as_texts

Check = tuple[pd.Series, str, str]
"""Where rows fail, the reason, and the detail for people."""

WHOLE_MESSAGE = frozenset({
    "missing_id", "bad_id", "id_too_long", "missing_conversation", "bad_conversation_id", "orphan_conversation",
    "missing_client", "bad_client_id", "orphan_client", "unknown_direction", "bad_timestamp", "future_timestamp",
    "no_sender_ref",
})
"""Reasons that concern the message as a whole (where and when it goes, and as whom): they reject its attachments
too. The others concern its own content alone, and its attachments go without it."""

NOT_YET = frozenset({"future_timestamp", "media_no_answer"})
"""Reasons that say "not yet" rather than "bad": a row dated after this worker's clock (the source's clock may be
ahead of it), or whose media URL failed for the moment (a 503, a timeout), is held back, and its interval is not
complete, so a later run takes it again."""


def id_checks(m: pd.DataFrame, conversations: pd.DataFrame, client_ids: set[str], prefix: str) -> list[Check]:
    """The message's id, and its conversation's and client's: present, fit for the ledger and for JSON, short
    enough with our prefix, and of a conversation and a client the source has."""
    client_of = as_texts(m["conversation_id"].map(conversations["client_id"]))
    return [
        (m["id"].isna() | (m["id"] == ""), "missing_id", "the message has no id"),
        (unfit_ids(m["id"]), "bad_id", "the message id holds control characters or bytes that are not UTF-8"),
        ((len(prefix) + m["id"].str.len()) > KEY_LENGTH, "id_too_long",
         f"the message id is longer than {KEY_LENGTH - len(prefix)} characters"),
        (m["conversation_id"].isna(), "missing_conversation", "the message has no conversation_id"),
        (unfit_ids(m["conversation_id"], few=True) | ((len(prefix) + m["conversation_id"].str.len()) > KEY_LENGTH),
         "bad_conversation_id",
         f"the conversation id holds control characters, bytes that are not UTF-8, or more than "
         f"{KEY_LENGTH - len(prefix)} characters"),
        (~m["conversation_id"].isin(conversations["id"]), "orphan_conversation",
         "the message's conversation does not exist in the source"),
        (client_of.isna(), "missing_client", "the message's conversation has no client_id"),
        (unfit_ids(client_of, few=True) | ((len(prefix) + client_of.str.len()) > KEY_LENGTH), "bad_client_id",
         f"the conversation's client id holds control characters, bytes that are not UTF-8, or more than "
         f"{KEY_LENGTH - len(prefix)} characters"),
        (~client_of.isin(client_ids), "orphan_client", "the conversation's client does not exist in the source"),
        (~fit_sources(m["conversation_id"].map(conversations["source_external_id"])), "bad_source_external_id",
         "the conversation's source_external_id is not at most 40 printable ASCII characters (amoCRM's "
         "source.external_id)"),
    ]


def _with_attachments(m: pd.DataFrame) -> pd.Series:
    """Where a message has attachments: its text, blank, is then no fault (nothing of it is sent)."""
    if "has_attachments" not in m.columns:
        return pd.Series(False, index=m.index)
    return m["has_attachments"].fillna(False).astype(bool)
def fit_sources(sources: pd.Series) -> pd.Series:
    """Where a source id is none, or one amoCRM takes as `source.external_id`: 1-40 printable ASCII characters
    (space included)."""
    return (sources.isna() | sources.astype("string").str.fullmatch(r"[ -~]{1,40}")).fillna(False).astype(bool)


def content_checks(m: pd.DataFrame, now: datetime, text_limit: int | None) -> list[Check]:
    """What the message says: its direction, type and time, and the fields its type needs, as amojo takes them.

    `m` holds the texts repaired (`blank_text`, `bad_utf8`) and the numbers read (`file_bytes`, `latitude`,
    `longitude`).
    """
    media_type = m["type"].isin(MEDIA_TYPES)
    media_url_ok = pd.Series(False, index=m.index)
    media_url_ok[media_type] = m.loc[media_type, "media_url"].str.match(MEDIA_URL).fillna(False)
    location = m["type"] == "location"
    lat, lon = m["latitude"], m["longitude"]
    checks = [
        (~m["direction"].isin(["in", "out"]), "unknown_direction", "direction must be 'in' or 'out'"),
        (~m["type"].isin(MESSAGE_TYPES), "unknown_type", f"type must be one of {', '.join(MESSAGE_TYPES)}"),
        (m["msec"].isna() | (m["msec"] < 0), "bad_timestamp",
         "created_at is missing, unreadable (ISO 8601 expected) or before 1970"),
        (m["msec"] > now.timestamp() * 1000, "future_timestamp",
         "created_at is after this worker's clock: held back; a later run sends it once it is due"),
        (m["bad_utf8"], "invalid_utf8", "the text is not valid UTF-8"),
        ((m["type"] == "text") & m["blank_text"] & ~_with_attachments(m), "empty_text",
         "a text message with NULL, empty or only control characters as text, and no attachments"),
        (media_type & ~media_url_ok, "bad_media_url",
         "a media message needs a media_url amoCRM can fetch: http(s)://..., or s3://bucket/key (presigned)"),
        (media_type & m["file_size"].notna() & m["file_bytes"].isna(), "bad_file_size",
         "file_size must be a whole number of bytes, 0 or more"),
        (location & (lat.isna() | lon.isna()), "bad_location",
         "a location message needs lat and lon as numbers"),
        (location & ~(lat.between(-90, 90) & lon.between(-180, 180)).fillna(False).astype(bool), "bad_location",
         "lat must lie within -90..90 and lon within -180..180"),
        ((m["type"] == "contact") & (m["contact_name"].isna() | m["contact_phone"].isna()), "bad_contact",
         "a contact message needs contact_name and contact_phone"),
        (any_undecodable(m, ("media_url", "file_name", "contact_name", "contact_phone")), "invalid_utf8",
         "media_url, file_name, contact_name or contact_phone is not valid UTF-8"),
    ]
    if text_limit is not None:
        checks.append((m["text"].str.len() > text_limit, "text_too_long",
                       f"the text is longer than {text_limit} characters (AMOJO_ETL_TEXT_LIMIT)"))
    return checks
