"""Load: the seed's sequence for every conversation, recorded in the ledger so that nothing is sent twice.

Chat created once -> contact found (phone, then email) or created in batches -> chat linked before its first
message -> messages in time order with `silent: true`. Conversations run concurrently; one conversation's
messages go one after the other.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.errors import FATAL, AmojoError, InvalidRequest
from amojo.rest import ChatLink, RestClient
from etl.api import Api
from etl.claims import RunClaims
from etl.ledger import DONE, ChatState, Ledger

from .transform import (
    Batch,
    Senders,
    chat_payload,
    client_participant,
    contact_body,
    edit_payload,
    json_lines,
    message_payload,
    source_keys,
)


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

    def add(self, other: LoadReport) -> None:
        """Fold another chunk's report into this one."""
        for name in ("chats_created", "contacts_created", "contacts_matched", "links_created", "messages_sent",
                     "messages_skipped", "messages_edited", "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.api_rejected.update(other.api_rejected)
        self.quarantined.update(other.quarantined)


async def resolve_senders(rest: RestClient | None, bot_id: str | None) -> Senders:
    """Manager email -> the amoCRM user's amojo_id (users without one fall back to the bot); without REST
    credentials (a dry run may have none), every manager message goes as the bot."""
    if rest is None:
        return Senders({}, bot_id)
    users = await rest.users()
    return Senders({u.email.strip().lower(): u.amojo_id for u in users if u.email and u.amojo_id}, bot_id)


async def _bounded(limit: int, jobs: list[Awaitable[Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[Any]) -> Any:
        async with semaphore:
            return await job

    return await asyncio.gather(*(run(job) for job in jobs))


def _ledger_row(message: Any, **values: Any) -> dict[str, Any]:
    return {"msgid": message.msgid, "conversation_id": message.conversation_id, "msec": int(message.msec),
            "content_hash": int(message.content_hash), "text_hash": int(message.text_hash), **values}


def _known(messages: pd.DataFrame, ledger: Ledger) -> pd.DataFrame:
    """The ledger's status, content hash, conversation and time for each message it knows, as columns."""
    states = ledger.message_states(messages["msgid"])
    known = pd.DataFrame.from_dict(states, orient="index",
                                   columns=["status", "content_hash", "conversation_id", "msec"])
    return known.astype({"content_hash": "Int64", "msec": "Int64"}) if len(known) else known


def _foreign(messages: pd.DataFrame, known: pd.DataFrame) -> pd.Series:
    """Rows whose msgid the ledger holds for another source row: another conversation, or another time."""
    owner = messages["msgid"].map(known["conversation_id"])
    owner_msec = messages["msgid"].map(known["msec"])
    return (owner.notna() & ((owner != messages["conversation_id"]) | (owner_msec != messages["msec"]))
            ).fillna(False).astype(bool)


def own_ids(batch: Batch, ledger: Ledger, *, register: bool = True) -> Batch:
    """Register the batch's new messages as `pending`; reject the rows whose message id another row owns.

    A message id is the message's identity in amoCRM (its msgid), and it belongs to the first source row
    registered with it: the ledger keeps that row's conversation and time. A row with the same id in another
    conversation, or at another time (another system's numbering, a reused id, a second row the interval
    rejected as a duplicate and edited later), is rejected as `duplicate_id` rather than sent as an edit of the
    first chat's message. Registering is an insert that leaves known ids alone, so when two runs register one id
    at once exactly one owns it, and the other rejects its row. Without `register` (a dry run) it only reads.
    """
    messages = batch.messages
    known = _known(messages, ledger)
    fresh = messages[~messages["msgid"].isin(known.index)]
    if register and len(fresh):
        ledger.add_pending([_ledger_row(m) for m in fresh.itertuples(index=False)])
        known = pd.concat([known, _known(fresh, ledger)])
    foreign = _foreign(messages, known)
    if not foreign.any():
        return batch
    rows = messages[foreign]
    shown = _source_rows(rows)
    owner = rows["msgid"].map(known["conversation_id"])
    when = pd.to_datetime(rows["msgid"].map(known["msec"]).astype("int64"), unit="ms", utc=True)
    rejected = pd.DataFrame({
        "source_key": source_keys(rows["source_id"], rows["msec"], None, shown, always_digest=True),
        "reason": "duplicate_id",
        "detail": "another source row owns this message id (conversation " + owner + ", created "
                  + when.dt.strftime("%Y-%m-%dT%H:%M:%SZ") + "); message ids must be unique",
        "row": json_lines(shown),
    })
    return Batch(batch.conversations, messages[~foreign].reset_index(drop=True),
                 pd.concat([batch.rejects, rejected], ignore_index=True), batch.warnings)


def _source_rows(messages: pd.DataFrame) -> pd.DataFrame:
    """Valid messages shown as the source has them: source ids, created_at in UTC, what they say."""
    prefix_length = messages["msgid"].str.len() - messages["source_id"].str.len()
    return pd.DataFrame({
        "id": messages["source_id"],
        "conversation_id": [c[n:] for c, n in zip(messages["conversation_id"], prefix_length, strict=True)],
        "created_at": pd.to_datetime(messages["msec"], unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": messages["type"],
        "text": messages["text"],
    }, index=messages.index)


def plan(batch: Batch, ledger: Ledger) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """What to send and what to edit, from what the ledger says; and how many need nothing. Reads only.

    A message the ledger holds for another source row is never touched (`own_ids` has rejected it).
    """
    messages = batch.messages
    known = _known(messages, ledger)
    status = messages["msgid"].map(known["status"])
    # Int64 keeps 64-bit hashes exact where some messages are unknown to the ledger (a float would round them).
    recorded_hash = messages["msgid"].map(known["content_hash"])
    foreign = _foreign(messages, known)
    done = status.isin(DONE)
    changed = (recorded_hash != messages["content_hash"]).fillna(True).astype(bool)
    edits = done & changed & ~foreign
    settled = (done & ~changed) | ((status == "rejected") & ~changed) | foreign
    to_send = ~done & ~settled
    return (messages[to_send].assign(status=status[to_send]),
            messages[edits].assign(recorded_hash=recorded_hash[edits]), int(settled.sum()))


def _restricted(batch: Batch, conversation_ids: set[str]) -> Batch:
    """The part of a batch that belongs to these conversations."""
    return Batch(batch.conversations.loc[sorted(conversation_ids)],
                 batch.messages[batch.messages["conversation_id"].isin(conversation_ids)], batch.rejects.iloc[0:0])


async def load(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, registered_through: int,
               interval_label: str, concurrency: int = 32,
               progress: Callable[[int], Awaitable[None]] | None = None) -> LoadReport:
    """Send what the ledger has not seen sent; edit what changed since it was sent.

    Every message of the batch is registered as `pending` first (`own_ids`), and `registered_through` (every
    message of the run's interval before it is now in the ledger) is published, so that other runs can keep
    conversation order.
    Then conversations are taken a claim at a time: those another live run holds, or whose earlier messages
    another run may still send, wait their turn.
    """
    report = LoadReport()
    ledger.save_rejects(batch.rejects.to_dict("records"), interval_label)
    to_send, to_edit, _ = plan(batch, ledger)
    claims.advance(registered_through)
    active = set(to_send["conversation_id"]) | set(to_edit["conversation_id"])
    report.messages_skipped = int((~batch.messages["conversation_id"].isin(active)).sum())
    first_unsent = to_send.groupby("conversation_id")["msec"].min()
    opened = batch.conversations["opened_ms"]

    def out_of_turn(conversations: set[str]) -> set[str]:
        return claims.out_of_turn({c: (int(opened[c]), int(first_unsent[c]))
                                   for c in conversations if c in first_unsent.index})

    async for mine in claims.turns("conversation", active, out_of_turn):
        await _load_conversations(_restricted(batch, mine), api, ledger, claims, concurrency, report, progress)
    return report


async def _load_conversations(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, concurrency: int,
                              report: LoadReport, progress: Callable[[int], Awaitable[None]] | None) -> None:
    """The seed's sequence for conversations this run holds, planned again from the ledger: another run may have
    sent some of their messages since."""
    to_send, to_edit, settled = plan(batch, ledger)
    report.messages_skipped += settled
    active = sorted(set(to_send["conversation_id"]) | set(to_edit["conversation_id"]))
    if not active:
        return
    conversations = batch.conversations.loc[active]

    await _create_chats(conversations, api, ledger, concurrency, report)
    await _resolve_contacts(conversations, api, ledger, claims, concurrency, report)
    await _link_chats(conversations, api, ledger, report)

    states = ledger.chat_states(active)
    ready = []
    for conversation_id in active:
        state = states[conversation_id]
        if state.quarantine:
            report.quarantined[conversation_id] = state.quarantine
        elif state.linked:
            ready.append(conversation_id)
    sends = dict(tuple(to_send.groupby("conversation_id", sort=False)))
    edits = dict(tuple(to_edit.groupby("conversation_id", sort=False)))
    empty = to_send.iloc[0:0]

    async def send(conversation: Any) -> None:
        await _send_conversation(states[conversation.Index].chat_id, client_participant(conversation),
                                 sends.get(conversation.Index, empty), edits.get(conversation.Index, empty), api,
                                 ledger, claims, report)
        if progress is not None:
            await progress(report.messages_sent + report.messages_edited)

    await _bounded(concurrency, [send(c) for c in conversations.loc[ready].itertuples()])


async def _create_chats(conversations: pd.DataFrame, api: Api, ledger: Ledger, concurrency: int,
                        report: LoadReport) -> None:
    states = ledger.chat_states(conversations.index)
    missing = [c for c in conversations.itertuples() if not (states.get(c.Index) and states[c.Index].chat_id)]

    async def create(conversation: Any) -> dict[str, Any]:
        chat_id = await api.chats.create_chat(chat_payload(conversation.Index, conversation))
        return {"conversation_id": conversation.Index, "chat_id": chat_id, "client_key": conversation.client_key}

    rows = await _bounded(concurrency, [create(c) for c in missing])
    ledger.save_chats(rows)
    report.chats_created += len(rows)


async def _resolve_contacts(conversations: pd.DataFrame, api: Api, ledger: Ledger, claims: RunClaims,
                            concurrency: int, report: LoadReport) -> None:
    """Find each client's contact; a client another run is finding or creating right now waits for it, so that
    no client gets two contacts."""
    states = ledger.chat_states(conversations.index)
    needing = conversations[[states[c].contact_id is None or bool(states[c].quarantine)
                             for c in conversations.index]]
    async for mine in claims.turns("client", needing["client_key"]):
        await _find_or_create_contacts(needing[needing["client_key"].isin(mine)], api, ledger, concurrency, report)


async def _find_or_create_contacts(needing: pd.DataFrame, api: Api, ledger: Ledger, concurrency: int,
                                   report: LoadReport) -> None:
    """Find each client's contact by normalised phone, then email; create the rest in batches.

    A search that matches several contacts quarantines the client's conversations: sending them to the wrong
    contact cannot be undone, and a person can tell which one is right.
    """
    clients = needing.drop_duplicates("client_key")
    known = ledger.contact_ids(clients["client_key"])
    to_create: list[Any] = []
    ambiguous: dict[str, str] = {}
    async def search(client: Any) -> tuple[Any, list[int]]:
        # The last ten digits find the contact however its phone was typed into amoCRM (+7…, 8…, spaces).
        for query in (client.phone[-10:] if isinstance(client.phone, str) else None,
                      client.email if isinstance(client.email, str) else None):
            if query:
                found = await api.rest.search_contacts(query)
                if found:
                    return client, found
        return client, []

    # Searches overlap their latency; the REST client's token bucket still keeps them under the rate limit.
    unknown = [c for c in clients.itertuples() if c.client_key not in known]
    for client, found in await _bounded(concurrency, [search(c) for c in unknown]):
        if len(found) == 1:
            known[client.client_key] = found[0]
            ledger.save_contacts([{"client_key": client.client_key, "contact_id": found[0], "created": False}])
            report.contacts_matched += 1
        elif len(found) > 1:
            ambiguous[client.client_key] = (f"ambiguous contact: {len(found)} contacts match "
                                            f"({', '.join(map(str, found))})")
        else:
            to_create.append(client)
    if to_create:
        ids = await api.rest.create_contacts([contact_body(c) for c in to_create])
        rows = [{"client_key": c.client_key, "contact_id": i, "created": True}
                for c, i in zip(to_create, ids, strict=True)]
        ledger.save_contacts(rows)
        known.update({r["client_key"]: r["contact_id"] for r in rows})
        report.contacts_created += len(rows)
    ledger.save_chats([
        {"conversation_id": c.Index, "contact_id": known.get(c.client_key), "quarantine": ambiguous.get(c.client_key)}
        for c in needing.itertuples()
    ])


async def _link_chats(conversations: pd.DataFrame, api: Api, ledger: Ledger, report: LoadReport) -> None:
    """Link before the first message, so amoCRM makes no unsorted lead; a link that already exists is kept."""
    states = ledger.chat_states(conversations.index)
    unlinked: list[ChatState] = [s for s in states.values() if not s.linked and not s.quarantine and s.contact_id]
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


async def _landed(api: Api, chat_id: str, msgids: set[str], since_ms: int, patience: int = 0) -> dict[str, str]:
    """Which of these msgids the chat already holds (msgid -> amojo id), from its history back to `since_ms`.

    With `patience`, a msgid not found is looked for again that many times, with backoff: amojo stores messages
    asynchronously, so one accepted a moment ago may not be in the history yet.
    """
    found: dict[str, str] = {}
    for attempt in range(patience + 1):
        async for item in api.chats.history(chat_id, older_than_ms=since_ms):
            message = item.get("message", {})
            if message.get("client_id") in msgids:
                found[message["client_id"]] = message.get("id", "")
        if len(found) == len(msgids) or attempt == patience:
            return found
        await asyncio.sleep(0.25 * 2**attempt)
    return found


async def _send_conversation(chat_id: str, client: dict[str, Any], pending: pd.DataFrame, edits: pd.DataFrame,
                             api: Api, ledger: Ledger, claims: RunClaims, report: LoadReport) -> None:
    """Send one conversation's messages in time order; stop it at the first message that cannot be sent.

    A message left `sending` (or `failed`) by an earlier run may have landed before its answer was lost: the chat
    history is asked first, and only what is not there is sent again.
    """
    outcomes: list[dict[str, Any]] = []
    uncertain = pending[pending["status"].isin(["sending", "failed"])]
    if len(uncertain):
        landed = await _landed(api, chat_id, set(uncertain["msgid"]), int(uncertain["msec"].min()))
        for message in uncertain[uncertain["msgid"].isin(landed)].itertuples(index=False):
            outcomes.append(_ledger_row(message, status="sent", amojo_id=landed[message.msgid], last_error=None))
            report.messages_skipped += 1
        pending = pending[~pending["msgid"].isin(landed)]
    if len(pending):
        ledger.record_messages([_ledger_row(m, status="sending") for m in pending.itertuples(index=False)])
    try:
        for message in pending.itertuples(index=False):
            claims.check()
            try:
                sent = await api.chats.new_message(message_payload(message, client))
            except InvalidRequest as exc:
                # A retry of a message whose first answer was lost can be refused as a duplicate: if the chat
                # holds it, it was sent. Otherwise the API's reason stands.
                landed = await _landed(api, chat_id, {message.msgid}, int(message.msec),
                                       patience=4 if exc.attempts > 1 else 0)
                if landed:
                    outcomes.append(_ledger_row(message, status="sent", amojo_id=landed[message.msgid],
                                                last_error=None))
                    report.messages_sent += 1
                    continue
                outcomes.append(_ledger_row(message, status="rejected", last_error=str(exc)))
                report.api_rejected[f"api_{exc.code or exc.status}"] += 1
                continue
            except FATAL:
                raise
            except AmojoError as exc:
                outcomes.append(_ledger_row(message, status="failed", last_error=str(exc)))
                report.failed += 1
                break  # later messages would land out of order; the next run resumes from here
            outcomes.append(_ledger_row(message, status="sent", amojo_id=sent.amojo_id, last_error=None))
            report.messages_sent += 1
        for message in edits.itertuples(index=False):
            try:
                await api.chats.edit_message(edit_payload(message))
            except FATAL:
                raise
            except AmojoError as exc:
                # Keep the old hash so that the next run tries the edit again.
                outcomes.append(_ledger_row(message, status="sent", content_hash=int(message.recorded_hash),
                                            last_error=str(exc)))
                report.failed += 1
                continue
            outcomes.append(_ledger_row(message, status="sent", last_error=None))
            report.messages_edited += 1
    finally:
        ledger.record_messages(outcomes)


@dataclass
class DryRun:
    """What a run would do, without doing it: counts, and a few payloads exactly as they would be sent."""

    chats_to_create: int = 0
    messages_to_send: int = 0
    messages_to_edit: int = 0
    messages_to_skip: int = 0
    sample_payloads: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: Batch, ledger: Ledger, samples: int = 3) -> None:
        to_send, to_edit, settled = plan(batch, ledger)
        states = ledger.chat_states(batch.conversations.index)
        self.chats_to_create += sum(1 for c in batch.conversations.index if not (c in states and states[c].chat_id))
        self.messages_to_send += len(to_send)
        self.messages_to_edit += len(to_edit)
        self.messages_to_skip += settled
        for message in to_send.head(max(0, samples - len(self.sample_payloads))).itertuples(index=False):
            conversation = next(batch.conversations.loc[[message.conversation_id]].itertuples())
            if not self.sample_payloads:
                self.sample_payloads.append({"create_chat": chat_payload(conversation.Index, conversation),
                                             "contact": contact_body(conversation)})
            self.sample_payloads.append({"new_message": message_payload(message, client_participant(conversation))})


@task(name="load", task_run_name="load-{label}", cache_policy=NO_CACHE)
async def load_task(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, registered_through: int,
                    interval_label: str, concurrency: int, progress: Callable[[int], Awaitable[None]] | None,
                    label: str) -> LoadReport:
    return await load(batch, api, ledger, claims, registered_through, interval_label, concurrency, progress)


@task(name="resolve-senders", cache_policy=NO_CACHE)
async def resolve_senders_task(rest: RestClient | None, bot_id: str | None) -> Senders:
    return await resolve_senders(rest, bot_id)
