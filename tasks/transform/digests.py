"""Stable 64-bit digests: of what a message says (to tell an edit), of its text as sent (to compare with the chat
history), of a whole chunk (to tell a changed day), and of one string."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .batch import Batch

CONTENT_COLUMNS = ["type", "text", "media_url", "file_name", "file_size", "lat", "lon", "contact_name",
                   "contact_phone"]


def digest(frame: pd.DataFrame | pd.Series) -> pd.Series:
    """A 64-bit digest of each row (as a signed integer, as the ledger keeps it)."""
    return pd.Series(pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64), index=frame.index)


def content_hash(frame: pd.DataFrame) -> pd.Series:
    """A stable 64-bit digest of what a message says, to tell an edited message from an unchanged one."""
    return digest(frame[CONTENT_COLUMNS].astype(object).where(frame[CONTENT_COLUMNS].notna(), ""))


def text_hash(texts: pd.Series) -> pd.Series:
    """A 64-bit digest of the text as sent (blank counts as none), comparable with what the chat history returns."""
    texts = texts.astype(object).where(texts.notna(), "")
    return digest(texts.where(texts.str.strip() != "", ""))


def source_digest(batch: Batch) -> tuple[int, int]:
    """The rows of a transformed chunk (valid and rejected) and an order-free 64-bit digest of them: each message's
    id, time and content, each reject's source key and reason. Chunks add up (rows and digests alike, modulo
    2**64), so a day's digest does not depend on how it was chunked; an unchanged digest means nothing to send."""
    messages = batch.messages[["msgid", "msec", "content_hash"]].astype(str)
    rejects = batch.rejects[["source_key", "reason"]].astype(str)
    total = sum(int(pd.util.hash_pandas_object(frame, index=False).to_numpy().sum(dtype=np.uint64))
                for frame in (messages, rejects) if len(frame))
    return len(messages) + len(rejects), total % 2**64


def hash_text(text: str) -> int:
    """A stable 64-bit digest of one string."""
    return int(pd.util.hash_array(np.array([text], dtype=object))[0])
