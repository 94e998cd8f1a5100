"""Load: the seed's sequence for every conversation, recorded in the ledger so that nothing is sent twice.

Chat created once -> contact found (phone, then email) or created in batches -> chat linked before its first
message -> messages in time order with `silent: true`. Conversations run concurrently; one conversation's
messages go one after the other.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.errors import FATAL, AmojoError, InvalidRequest
from amojo.rest import ChatLink
from etl.api import Api
from etl.ledger import DONE, Ledger

from .transform import Conversation, Message, Senders, Transformed


@dataclass
class LoadReport:
    chats_created: int = 0
    contacts_created: int = 0
    contacts_matched: int = 0
    links_created: int = 0
    messages_sent: int = 0
    messages_skipped: int = 0
    messages_edited: int = 0
    api_rejected: Counter = field(default_factory=Counter)
    failed: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # conversation_id -> reason


async def resolve_senders(api: Api, bot_id: str | None) -> Senders:
    """Manager email -> the amoCRM user's amojo_id (users without one fall back to the bot)."""
    users = await api.rest.users()
    return Senders({u.email.lower(): u.amojo_id for u in users if u.email and u.amojo_id}, bot_id)


async def _gather_bounded(limit: int, coroutines: list) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def run(coroutine):
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))


async def load(transformed: Transformed, api: Api, ledger: Ledger, concurrency: int = 16) -> LoadReport:
    """Send what the ledger has not yet seen sent; returns what was done."""
    report = LoadReport()
    conversations = transformed.conversations
    msg_states = ledger.message_states(m.msgid for c in conversations for m in c.messages)
    todo: dict[str, list[Message]] = {}
    edits: dict[str, list[Message]] = {}
    for conversation in conversations:
        todo[conversation.conversation_id] = []
        edits[conversation.conversation_id] = []
        for message in conversation.messages:
            status, content_hash = msg_states.get(message.msgid, (None, None))
            if status in DONE:
                if content_hash != message.content_hash:
                    edits[conversation.conversation_id].append(message)
                else:
                    report.messages_skipped += 1
            elif status == "rejected" and content_hash == message.content_hash:
                report.messages_skipped += 1
            else:
                todo[conversation.conversation_id].append(message)
    active = [c for c in conversations if todo[c.conversation_id] or edits[c.conversation_id]]
    if not active:
        return report

    states = ledger.chat_states(c.conversation_id for c in active)
    await _create_chats(active, states, api, ledger, concurrency, report)
    states = ledger.chat_states(c.conversation_id for c in active)
    await _resolve_contacts(active, states, api, ledger, report)
    states = ledger.chat_states(c.conversation_id for c in active)
    await _link_chats(active, states, api, ledger, report)
    states = ledger.chat_states(c.conversation_id for c in active)

    ready = []
    for c in active:
        state = states[c.conversation_id]
        if state.quarantine:
            report.quarantined[c.conversation_id] = state.quarantine
        elif state.linked:
            ready.append(c)
    await _gather_bounded(
        concurrency,
        [_send_conversation(c, todo[c.conversation_id], edits[c.conversation_id], api, ledger, report)
         for c in ready],
    )
    return report


async def _create_chats(active: list[Conversation], states: dict, api: Api, ledger: Ledger, concurrency: int,
                        report: LoadReport) -> None:
    missing = [c for c in active if not (states.get(c.conversation_id) and states[c.conversation_id].chat_id)]

    async def create(conversation: Conversation) -> dict[str, Any]:
        chat_id = await api.chats.create_chat(conversation.chat)
        return {"conversation_id": conversation.conversation_id, "chat_id": chat_id,
                "client_key": conversation.client_key, "linked": False}

    rows = await _gather_bounded(concurrency, [create(c) for c in missing])
    ledger.save_chats(rows)
    report.chats_created += len(rows)


async def _resolve_contacts(active: list[Conversation], states: dict, api: Api, ledger: Ledger,
                            report: LoadReport) -> None:
    """Find each client's contact by normalised phone, then email; create the rest in batches."""
    needing = [c for c in active
               if states[c.conversation_id].contact_id is None or states[c.conversation_id].quarantine]
    by_client: dict[str, Conversation] = {}
    for conversation in needing:
        by_client.setdefault(conversation.client_key, conversation)
    known = ledger.contact_ids(by_client)
    to_create: list[Conversation] = []
    ambiguous: dict[str, str] = {}
    for client_key, conversation in by_client.items():
        if client_key in known:
            continue
        found: list[int] = []
        for query in (conversation.phone.lstrip("+") if conversation.phone else None, conversation.email):
            if query:
                found = await api.rest.search_contacts(query)
                if found:
                    break
        if len(found) == 1:
            known[client_key] = found[0]
            ledger.save_contacts([{"client_key": client_key, "contact_id": found[0], "created": False}])
            report.contacts_matched += 1
        elif len(found) > 1:
            ambiguous[client_key] = f"ambiguous contact: {len(found)} contacts match ({', '.join(map(str, found))})"
        else:
            to_create.append(conversation)
    if to_create:
        ids = await api.rest.create_contacts([c.contact for c in to_create])
        rows = [{"client_key": c.client_key, "contact_id": i, "created": True} for c, i in zip(to_create, ids,
                                                                                                 strict=True)]
        ledger.save_contacts(rows)
        known.update({r["client_key"]: r["contact_id"] for r in rows})
        report.contacts_created += len(rows)
    ledger.save_chats([
        {"conversation_id": c.conversation_id, "contact_id": known.get(c.client_key),
         "quarantine": ambiguous.get(c.client_key)}
        for c in needing
    ])


async def _link_chats(active: list[Conversation], states: dict, api: Api, ledger: Ledger, report: LoadReport) -> None:
    """Link before the first message, so amoCRM makes no unsorted lead; a link that already exists is kept."""
    unlinked = [states[c.conversation_id] for c in active
                if not states[c.conversation_id].linked and not states[c.conversation_id].quarantine]
    if not unlinked:
        return
    existing = {link.chat_id: link for link in await api.rest.chat_links([s.chat_id for s in unlinked])}
    to_link = [ChatLink(s.chat_id, s.contact_id) for s in unlinked if s.chat_id not in existing]
    made = {link.chat_id: link for link in await api.rest.link_chats(to_link)} if to_link else {}
    report.links_created += len(made)
    links = {**existing, **made}
    ledger.save_chats([
        {"conversation_id": s.conversation_id, "contact_id": links[s.chat_id].contact_id, "linked": True}
        for s in unlinked if s.chat_id in links
    ])


async def _send_conversation(conversation: Conversation, pending: list[Message], edits: list[Message], api: Api,
                             ledger: Ledger, report: LoadReport) -> None:
    """Send one conversation's messages in time order; stop it at the first message that cannot be sent."""
    base = {"conversation_id": conversation.conversation_id}
    if pending:
        ledger.record_messages([{**base, "msgid": m.msgid, "msec": m.msec, "content_hash": m.content_hash,
                                 "status": "sending", "attempts": 1} for m in pending])
    outcomes: list[dict[str, Any]] = []
    try:
        for message in pending:
            row = {**base, "msgid": message.msgid, "msec": message.msec, "content_hash": message.content_hash,
                   "attempts": 1}
            try:
                sent = await api.chats.new_message(message.payload)
            except InvalidRequest as exc:
                outcomes.append({**row, "status": "rejected", "last_error": str(exc)})
                report.api_rejected[f"api_{exc.code or exc.status}"] += 1
                continue
            except FATAL:
                raise
            except AmojoError as exc:
                outcomes.append({**row, "status": "failed", "last_error": str(exc)})
                report.failed += 1
                break  # later messages would land out of order; the next run resumes from here
            outcomes.append({**row, "status": "sent", "amojo_id": sent.amojo_id, "last_error": None})
            report.messages_sent += 1
        for message in edits:
            edit = {k: message.payload[k] for k in ("timestamp", "msec_timestamp", "msgid", "conversation_id",
                                                     "message")}
            try:
                await api.chats.edit_message(edit)
            except FATAL:
                raise
            except AmojoError as exc:
                report.failed += 1
                outcomes.append({**base, "msgid": message.msgid, "msec": message.msec, "status": "sent",
                                 "content_hash": "edit-failed", "last_error": str(exc), "attempts": 1})
                continue
            report.messages_edited += 1
            outcomes.append({**base, "msgid": message.msgid, "msec": message.msec, "status": "sent",
                             "content_hash": message.content_hash, "last_error": None, "attempts": 1})
    finally:
        ledger.record_messages(outcomes)


@task(name="load", task_run_name="load-{label}", cache_policy=NO_CACHE)
async def load_task(transformed: Transformed, api: Api, ledger: Ledger, concurrency: int, label: str) -> LoadReport:
    return await load(transformed, api, ledger, concurrency)


@task(name="resolve-senders", cache_policy=NO_CACHE)
async def resolve_senders_task(api: Api, bot_id: str | None) -> Senders:
    return await resolve_senders(api, bot_id)
