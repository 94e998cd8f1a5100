"""Reconcile: read each chat of the interval back from amoCRM and compare it, by our msgid, with the ledger: each
message's text, and each attachment's (any message not text) type and file name.

The ledger holds every valid message of the interval (from `pending` on), so the comparison needs no second
read of the source. History is newest first, 50 a page; reading stops once a page is
older than the interval. A message not there yet is read again with backoff before it is called missing: amojo
processes asynchronously. One with other text or twice is read again, with the ledger, until two reads agree:
another run may be editing it. Each read is stable while other runs write into the chat (ChatsClient.history).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.errors import FATAL, AmojoError
from etl.api import Api
from etl.ledger import Ledger, MessageStatus

from .transform import history_hash, text_hash

CONVERSATIONS_PER_BATCH = 200
NOT_EXPECTED = frozenset({MessageStatus.REJECTED, MessageStatus.DELETED})


@dataclass
class Verdict:
    """What the read-back found: `complete` only when every expected message is there exactly once, unchanged."""

    expected: int = 0
    confirmed: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    surplus: list[str] = field(default_factory=list)  # in the chat with our kind of id, unknown to the ledger
    unread: dict[str, str] = field(default_factory=dict)  # chat_id -> why its history could not be read

    @property
    def verdict(self) -> str:
        return "incomplete" if self.missing or self.duplicates or self.mismatched else "complete"

    def count_unread(self, expected: list) -> list[dict]:
        """A chat not read (none yet, or its history did not answer): its messages count as missing."""
        self.expected += len(expected)
        self.missing.extend(row.msgid for row in expected)
        return []

    def count(self, read: _Reading, expected: list, known: set[str], start_ms: int, end_ms: int) -> list[dict]:
        """Count a chat's read against the ledger's rows; the rows it confirms (there once, with the same text)."""
        self.expected += len(expected)
        self.surplus.extend(
            client_id for client_id, item in zip(read.ids, read.history, strict=True)
            if client_id and client_id not in known and start_ms <= _msec(item) < end_ms)
        confirmed = []
        for row in expected:
            if not read.seen[row.msgid]:
                self.missing.append(row.msgid)
                continue
            if read.seen[row.msgid] > 1:
                self.duplicates.append(row.msgid)
            if read.other_text(row):
                self.mismatched.append(row.msgid)
            elif read.seen[row.msgid] == 1:
                confirmed.append({"msgid": row.msgid, "conversation_id": row.conversation_id, "msec": row.msec,
                                  "content_hash": row.content_hash, "status": MessageStatus.CONFIRMED})
        return confirmed


def _msec(item: dict) -> int:
    return int(item.get("msec_timestamp") or int(item.get("timestamp", 0)) * 1000)


async def _history(api: Api, chat_id: str, since_ms: int) -> list[dict]:
    return [item async for item in api.chats.history(chat_id, older_than_ms=since_ms)]


def _expected(rows: list) -> tuple[list, set[str]]:
    """A conversation's ledger rows that its chat must hold, and the msgids the ledger knows. Every valid message
    is expected, except those amoCRM refused for their data (rejects with the API's reason) and those deleted at the
    source before anything of them was sent; one amoCRM would not take for its own reasons is `failed`, and
    expected."""
    return [row for row in rows if row.status not in NOT_EXPECTED], {row.msgid for row in rows}


@dataclass
class _Reading:
    """One read of a chat's history, by our msgid (`client_id`): how often each is there, and the digests of what
    it shows (`shown_hash`: its text; and the type and file name of a message that is not text, such as an
    attachment), with the digest of its text alone beside it (`texts`), which the ledger kept for a media message
    sent before attachments were compared."""

    history: list[dict]
    ids: list[str | None]
    seen: Counter
    hashes: dict
    texts: dict

    @classmethod
    def of(cls, history: list[dict]) -> _Reading:
        messages = [item.get("message", {}) for item in history]
        ids = [message.get("client_id") for message in messages]
        shown = pd.DataFrame({"type": [m.get("type") or "text" for m in messages],
                              "text": [m.get("text", "") for m in messages],
                              "file_name": [m.get("file_name") or "" for m in messages]}, dtype=object)
        texts = text_hash(shown["text"])
        hashes = texts.copy()
        other = shown["type"] != "text"
        if other.any():
            hashes[other] = history_hash(shown.loc[other, "type"], shown.loc[other, "text"],
                                         shown.loc[other, "file_name"])
        return cls(history, ids, Counter(ids), dict(zip(ids, hashes, strict=True)),
                   dict(zip(ids, texts, strict=True)))

    def other_text(self, row) -> bool:
        """The chat shows other than the ledger's: other text, or another type or file name."""
        return row.text_hash is not None and row.text_hash not in (self.hashes.get(row.msgid),
                                                                   self._legacy(row.msgid))

    def _legacy(self, msgid: str) -> int | None:
        """A media message's text digest, as the ledger kept it before attachments: still its match."""
        return self.texts.get(msgid) if self.texts.get(msgid) != self.hashes.get(msgid) else None

    def differing(self, expected: list) -> set[str]:
        """The expected messages the chat holds other than once, or with other text than the ledger's."""
        return {row.msgid for row in expected
                if self.seen[row.msgid] > 1 or (self.seen[row.msgid] and self.other_text(row))}


async def reconcile(api: Api, ledger: Ledger, start_ms: int, end_ms: int, *, rereads: int = 3,
                    reread_delay: float = 0.5, concurrency: int = 16) -> Verdict:
    """Compare every message the ledger expects in [start_ms, end_ms) with its chat; confirm what is there."""
    verdict = Verdict()
    semaphore = asyncio.Semaphore(concurrency)
    conversations = ledger.messages.conversations_between(start_ms, end_ms)

    async def check(conversation_id: str, chat_id: str | None, expected: list, known: set[str]) -> list[dict]:
        if not chat_id:
            return verdict.count_unread(expected)
        async with semaphore:
            try:
                differing: set[str] | None = None
                for attempt in range(rereads + 1):
                    read = _Reading.of(await _history(api, chat_id, start_ms))
                    # Read again while a message is missing (amojo stores them asynchronously), and while what
                    # differs is not what differed in the read before: another run may be editing these messages.
                    missing, before, differing = (any(not read.seen[row.msgid] for row in expected), differing,
                                                  read.differing(expected))
                    if not missing and (not differing or differing == before) or attempt == rereads:
                        break
                    await asyncio.sleep(reread_delay * 2**attempt)
                    # What that run sent or edited meanwhile, it recorded: the ledger is read again too.
                    expected, known = _expected(ledger.messages.between([conversation_id], start_ms, end_ms))
            except AmojoError as exc:
                if isinstance(exc, FATAL):
                    raise
                # Unread is unconfirmed: the chat's messages count as missing, and the next read tells.
                verdict.unread[chat_id] = str(exc)
                return verdict.count_unread(expected)
        return verdict.count(read, expected, known, start_ms, end_ms)

    for first in range(0, len(conversations), CONVERSATIONS_PER_BATCH):
        part = conversations[first:first + CONVERSATIONS_PER_BATCH]
        rows = ledger.messages.between([c for c, _ in part], start_ms, end_ms)
        by_conversation: dict[str, list] = {}
        for row in rows:
            by_conversation.setdefault(row.conversation_id, []).append(row)
        results = await asyncio.gather(*(check(c, chat_id, *_expected(by_conversation.get(c, [])))
                                         for c, chat_id in part))
        confirmed = [row for result in results for row in result]
        ledger.messages.record(confirmed)
        verdict.confirmed += len(confirmed)
    return verdict


@task(name="reconcile", task_run_name="reconcile-{label}", cache_policy=NO_CACHE)
async def reconcile_task(api: Api, ledger: Ledger, start_ms: int, end_ms: int, label: str) -> Verdict:
    return await reconcile(api, ledger, start_ms, end_ms)
