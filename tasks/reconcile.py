"""Reconcile: read each touched chat back from amoCRM and compare it, by our msgid, with what the source holds.

History is newest first, 50 a page; reading stops once a page is older than the interval. A message that is not
there yet is read again with backoff before it is called missing, since amojo processes messages asynchronously.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from etl.api import Api
from etl.ledger import Ledger

from .transform import Conversation, Transformed


@dataclass
class Verdict:
    """What the read-back found: `complete` only when every expected message is there exactly once."""

    expected: int = 0
    confirmed: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unsent: int = 0  # expected but not sent (quarantined, failed)

    @property
    def verdict(self) -> str:
        clean = not (self.missing or self.duplicates or self.mismatched or self.unsent)
        return "complete" if clean else "incomplete"


async def _read_chat(api: Api, chat_id: str, since_ms: int) -> list[dict]:
    return [item async for item in api.chats.history(chat_id, older_than_ms=since_ms)]


async def reconcile(transformed: Transformed, api: Api, ledger: Ledger, since_ms: int, *,
                    skip: set[str] | None = None, rereads: int = 3, reread_delay: float = 0.5,
                    concurrency: int = 16) -> Verdict:
    """Compare every valid message of the interval with the chat history; mark the ones found `confirmed`."""
    verdict = Verdict()
    skip = skip or set()
    states = ledger.chat_states(c.conversation_id for c in transformed.conversations)
    msg_states = ledger.message_states(m.msgid for c in transformed.conversations for m in c.messages)
    semaphore = asyncio.Semaphore(concurrency)
    confirmed: list[dict] = []

    async def check(conversation: Conversation) -> None:
        expected = {m.msgid: m for m in conversation.messages
                    if msg_states.get(m.msgid, ("",))[0] != "rejected"}
        verdict.expected += len(expected)
        state = states.get(conversation.conversation_id)
        if conversation.conversation_id in skip or state is None or not state.chat_id:
            verdict.unsent += len(expected)
            return
        async with semaphore:
            for attempt in range(rereads + 1):
                history = await _read_chat(api, state.chat_id, since_ms)
                seen = Counter(item.get("message", {}).get("client_id") for item in history)
                missing = [msgid for msgid in expected if seen[msgid] == 0]
                if not missing or attempt == rereads:
                    break
                await asyncio.sleep(reread_delay * 2**attempt)
        texts = {item["message"].get("client_id"): item["message"].get("text", "") for item in history}
        for msgid, message in expected.items():
            if seen[msgid] == 0:
                verdict.missing.append(msgid)
                continue
            if seen[msgid] > 1:
                verdict.duplicates.append(msgid)
            if message.payload["message"].get("text", "") != texts.get(msgid, ""):
                verdict.mismatched.append(msgid)
            else:
                verdict.confirmed += 1
                confirmed.append({"msgid": msgid, "conversation_id": conversation.conversation_id,
                                  "msec": message.msec, "content_hash": message.content_hash,
                                  "status": "confirmed"})

    await asyncio.gather(*(check(c) for c in transformed.conversations))
    ledger.record_messages(confirmed)
    return verdict


@task(name="reconcile", task_run_name="reconcile-{label}", cache_policy=NO_CACHE)
async def reconcile_task(transformed: Transformed, api: Api, ledger: Ledger, since_ms: int, skip: set[str],
                         label: str) -> Verdict:
    return await reconcile(transformed, api, ledger, since_ms, skip=skip)
