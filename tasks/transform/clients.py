"""A chunk's chats and their clients: one row per conversation, with the client's phone and email normalised, so
that a contact is found by them, and fields amoCRM would refuse dropped."""

from __future__ import annotations

from collections import Counter
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from etl.source import to_utc_ms

from .text import printable_names, sendable_or_none
from .values import as_texts

EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


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
    """`Anna@Example.COM ` is `anna@example.com`; anything that is not an email address is None."""
    emails = raw.astype("string").str.strip().str.lower()
    valid = emails.str.match(EMAIL_RE).fillna(False).astype(bool)
    return emails.astype(object).where(valid, None)


def chats(conversations: pd.DataFrame, clients: pd.DataFrame, used: np.ndarray, prefix: str,
          source_zone: ZoneInfo, warnings: Counter) -> pd.DataFrame:
    """One row per conversation with messages in the chunk: its client, with phone and email normalised."""
    conv = conversations.assign(conversation_id=prefix + conversations["id"])
    conv = conv[conv["conversation_id"].isin(used)]
    clients = clients.assign(id=as_texts(clients["id"])).drop_duplicates("id").rename(columns={"id": "client_id"})
    chat = conv.merge(clients, on="client_id", how="left")
    phone = normalise_phones(as_texts(chat["phone"]).map(sendable_or_none).astype(object))
    email = normalise_emails(as_texts(chat["email"]).map(sendable_or_none).astype(object))
    warnings["invalid_phone_dropped"] += int((chat["phone"].notna() & phone.isna()).sum())
    warnings["invalid_email_dropped"] += int((chat["email"].notna() & email.isna()).sum())
    name = printable_names(as_texts(chat["name"])).str.strip()
    avatar = as_texts(chat["avatar_url"]).map(sendable_or_none).astype(object)
    profile = as_texts(chat["profile_url"]).map(sendable_or_none).astype(object)
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
        # The amoCRM source the chat is tied to when it is created (never after: amoCRM cannot untie it).
        "source_external_id": chat["source_external_id"],
        # When the conversation opened: none of its messages is older, so runs of earlier days matter to it only
        # back to here. Unreadable: from the beginning of time.
        "opened_ms": to_utc_ms(chat["created_at"], source_zone).fillna(0).astype("int64"),
    }).set_index("conversation_id")

