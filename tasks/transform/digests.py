"""Stable 64-bit digests: of what a message says (to tell an edit), of what the chat history shows of it (its text,
and a non-text message's type and file name), of a whole chunk (to tell a changed day), and of one string."""

from __future__ import annotations

import numpy as np
import pandas as pd

from amojo.payloads import MEDIA_TYPES, NEEDS_FILE_META

from .batch import Batch

CONTENT_COLUMNS = ["type", "text", "media_url", "file_name", "file_size", "lat", "lon", "contact_name",
                   "contact_phone"]


def digest(frame: pd.DataFrame | pd.Series) -> pd.Series:
    """A 64-bit digest of each row (as a signed integer, as the ledger keeps it)."""
    return pd.Series(pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64), index=frame.index)


def content_hash(frame: pd.DataFrame) -> pd.Series:
    """A stable 64-bit digest of what a message says, to tell an edited message from an unchanged one. A media
    duration counts where there is one (the digest of a message without one is the same as before durations)."""
    hashes = digest(frame[CONTENT_COLUMNS].astype(object).where(frame[CONTENT_COLUMNS].notna(), ""))
    if "duration" in frame.columns and frame["duration"].notna().any():
        timed = frame["duration"].notna()
        columns = CONTENT_COLUMNS + ["duration"]
        hashes[timed] = digest(frame.loc[timed, columns].astype(object).where(frame.loc[timed, columns].notna(), ""))
    return hashes


def text_hash(texts: pd.Series) -> pd.Series:
    """A 64-bit digest of the text as sent (blank counts as none), comparable with what the chat history returns."""
    texts = texts.astype(object).where(texts.notna(), "")
    return digest(texts.where(texts.str.strip() != "", ""))


def shown_hash(frame: pd.DataFrame) -> pd.Series:
    """A 64-bit digest of what the chat history shows of each message: a text message's text (its `text_hash`), and
    of any other its type, text and file name as sent (`file` for a picture, video or file without one)."""
    hashes = text_hash(frame["text"])
    other = frame["type"] != "text"
    if other.any():
        kinds, names = frame.loc[other, "type"], frame.loc[other, "file_name"]
        sent_names = names.where(names.notna(), kinds.map(_default_name)).where(kinds.isin(MEDIA_TYPES), "")
        hashes[other] = history_hash(kinds, frame.loc[other, "text"], sent_names)
    return hashes


def history_hash(types: pd.Series, texts: pd.Series, file_names: pd.Series) -> pd.Series:
    """The digest `shown_hash` gives a message that is not text, of the type, text and file name history shows."""
    texts = texts.astype(object).where(texts.notna(), "")
    shown = pd.DataFrame({"marker": "shown", "type": types.astype(object).where(types.notna(), ""),
                          "text": texts.where(texts.str.strip() != "", ""),
                          "file_name": file_names.astype(object).where(file_names.notna(), "")})
    return digest(shown)


def _default_name(kind: str) -> str:
    return "file" if kind in NEEDS_FILE_META else ""


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
