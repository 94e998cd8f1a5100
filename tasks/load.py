"""Load: the seed's sequence for every conversation, recorded in the ledger so that nothing is sent twice.

Chat created once -> contact found (phone, then email) or created in batches -> chat linked before its first
message -> messages in time order with `silent: true`. Conversations run concurrently, each sending as soon as
its own wave of chats, contacts and links is ready; one conversation's messages go one after the other.

One conversation's states, and what each crash window (or lost answer) resolves to. Every request whose effect
is unknown is resolved by reading amoCRM before anything is sent again:

    chat       create_chat is idempotent on conversation_id: a lost answer is retried, and a run that dies before
               `chats.chat_id` is saved gets the same chat next time.
    contact    looked for by phone, then email. Before a batch of creates is sent the ledger says so (`uncertain`,
               kind "contact"); every contact we create carries our key (`contact_key`) in its IM field. A lost
               answer, or a run that dies before the ids are saved, is resolved by searching those keys: the
               clients found keep their contact, only the others are created again.
    link       the chats' links are read first and only the missing ones made; after a lost answer they are read
               again. A chat is `linked` in the ledger only once amoCRM has shown or confirmed its link.
    messages   `sending` is written before a message's request, `sent` after its answer. A `sending` or `failed`
               message is looked up in the chat history before it is sent again; one found there is `sent` with
               the hash of what amoCRM holds, and edited when the source changed since. A refusal that follows a
               lost answer (a duplicate msgid) that the history does not show yet stays uncertain (`failed`), and
               the conversation stops there until the next run.
    confirmed  reconcile finds the message in the chat's history, once, with the source's text.

A conversation that fails stops alone, for the rest of the run (its later messages would land before the one
that failed); errors that concern the whole run (credentials, lost claims) stop every conversation, and the load
returns only once none of its requests is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.errors import FATAL, AmojoError, InvalidRequest
from amojo.rest import BATCH_MOST, BATCH_SAFE, USERS_PAGE, ChatLink, RestClient
from amojo.transport import RetryPolicy
from etl.api import Api
from etl.claims import RunClaims
from etl.ledger import DONE, NEEDS_EDIT_HASH as UNKNOWN_CONTENT, ChatState, Ledger

from .transform import (
    Batch,
    Senders,
    chat_payload,
    client_participant,
    contact_body,
    contact_key,
    edit_payload,
    json_lines,
    message_payload,
    source_keys,
    text_hash,
)

log = logging.getLogger(__name__)

RETRY = RetryPolicy()
RESOLVE_ATTEMPTS = RETRY.attempts
"""Rounds of create-then-read for a request that is not idempotent (contacts, links), with the API's backoff."""


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
    held_back: int = 0  # messages of conversations stopped earlier in the run: they wait for the next run
    quarantined: dict[str, str] = field(default_factory=dict)  # conversation_id -> reason
    stopped: dict[str, str] = field(default_factory=dict)  # conversation_id -> the error that stopped it

    def add(self, other: LoadReport) -> None:
        """Fold another chunk's report into this one."""
        for name in ("chats_created", "contacts_created", "contacts_matched", "links_created", "messages_sent",
                     "messages_skipped", "messages_edited", "failed", "held_back"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.api_rejected.update(other.api_rejected)
        self.quarantined.update(other.quarantined)
        self.stopped.update(other.stopped)


async def resolve_senders(rest: RestClient | None, bot_id: str | None) -> Senders:
    """Manager email -> the amoCRM user's amojo_id (users without one fall back to the bot); without REST
    credentials (a dry run may have none), every manager message goes as the bot."""
    if rest is None:
        return Senders({}, bot_id)
    users = await rest.users()
    return Senders({u.email.strip().lower(): u.amojo_id for u in users if u.email and u.amojo_id}, bot_id)


async def _bounded(limit: int, jobs: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run the jobs, `limit` at a time. The first to raise cancels the others, and is raised once all have
    stopped: nothing of a failed load is still in flight when its caller releases the claims."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Coroutine[Any, Any, Any]) -> Any:
        try:
            async with semaphore:
                return await job
        finally:
            job.close()  # one cancelled before it started is closed, not left never awaited

    # Not asyncio.TaskGroup: on Python 3.11 a failed group leaves its parent task marked as being cancelled.
    tasks = [asyncio.ensure_future(run(job)) for job in jobs]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return [task.result() for task in tasks]


def _ledger_row(message: Any, **values: Any) -> dict[str, Any]:
    return {"msgid": message.msgid, "conversation_id": message.conversation_id, "msec": int(message.msec),
            "content_hash": int(message.content_hash), "text_hash": int(message.text_hash), **values}


def _known(messages: pd.DataFrame, ledger: Ledger) -> pd.DataFrame:
    """The ledger's status, content hash, conversation and time for each message it knows, as columns."""
    states = ledger.messages.states(messages["msgid"])
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
        ledger.messages.register([_ledger_row(m) for m in fresh.itertuples(index=False)])
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
    # A message amoCRM refused for its data (`rejected`) waits for the source to change it.
    settled = (done & ~changed) | ((status == "rejected") & ~changed) | foreign
    to_send = ~done & ~settled
    return (messages[to_send].assign(status=status[to_send], recorded_hash=recorded_hash[to_send]),
            messages[edits].assign(recorded_hash=recorded_hash[edits]), int(settled.sum()))


def _restricted(batch: Batch, conversation_ids: set[str]) -> Batch:
    """The part of a batch that belongs to these conversations."""
    return Batch(batch.conversations.loc[sorted(conversation_ids)],
                 batch.messages[batch.messages["conversation_id"].isin(conversation_ids)], batch.rejects.iloc[0:0])


async def load(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, registered_through: int,
               interval_label: str, concurrency: int = 32,
               progress: Callable[[int], Awaitable[None]] | None = None,
               stopped: dict[str, str] | None = None) -> LoadReport:
    """Send what the ledger has not seen sent; edit what changed since it was sent.

    Every message of the batch is registered as `pending` first (`own_ids`), and `registered_through` (every
    message of the run's interval before it is now in the ledger) is published, so that other runs can keep
    conversation order.
    Then conversations are taken a claim at a time: those another live run holds, or whose earlier messages
    another run may still send, wait their turn. `stopped` (conversation -> why) holds the conversations that
    failed in an earlier chunk of the same run: none of their later messages is sent, or they would land before
    the one that failed.
    """
    report = LoadReport()
    if stopped:
        report.stopped.update(stopped)
    ledger.rejects.save(batch.rejects.to_dict("records"), interval_label)
    to_send, to_edit, _ = plan(batch, ledger)
    claims.advance(registered_through)
    active = (set(to_send["conversation_id"]) | set(to_edit["conversation_id"])) - set(report.stopped)
    report.messages_skipped = int((~batch.messages["conversation_id"].isin(active | set(report.stopped))).sum())
    report.held_back = int(to_send["conversation_id"].isin(report.stopped).sum())
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
    sent some of their messages since. Conversations are prepared (chat, contact, link) a wave at a time, and each
    starts sending as soon as its wave is ready, while the next waves are prepared: REST's few requests a second
    never hold the Chats API idle. A conversation that fails stops alone; an error that concerns the whole run
    (credentials, lost claims, a bug) cancels the others, and returns only once none of them is sending."""
    to_send, to_edit, settled = plan(batch, ledger)
    report.messages_skipped += settled
    active = sorted(set(to_send["conversation_id"]) | set(to_edit["conversation_id"]))
    if not active:
        return
    sends, edits = _by_conversation(to_send), _by_conversation(to_edit)
    ready: asyncio.Queue[tuple[Any, str] | None] = asyncio.Queue()

    async def prepare() -> None:
        try:
            async for conversations, chat_ids in _prepared(batch.conversations.loc[active], api, ledger, claims,
                                                           concurrency, report):
                for conversation in conversations.itertuples():
                    ready.put_nowait((conversation, chat_ids[conversation.Index]))
        finally:
            for _ in range(concurrency):
                ready.put_nowait(None)

    async def send() -> None:
        while (item := await ready.get()) is not None:
            conversation, chat_id = item
            await _send_conversation(conversation.Index, chat_id, client_participant(conversation),
                                     sends.get(conversation.Index, []), edits.get(conversation.Index, []),
                                     api, ledger, claims, report)
            if progress is not None:
                try:
                    await progress(report.messages_sent + report.messages_edited)
                except Exception as exc:  # noqa: BLE001 - a progress bar that failed to move must not stop sending
                    log.warning("could not update the progress artifact (%s)", type(exc).__name__)

    await _bounded(concurrency + 1, [prepare(), *(send() for _ in range(concurrency))])


def _by_conversation(messages: pd.DataFrame) -> dict[str, list[Any]]:
    """Each conversation's messages as rows, in the frame's order. One pass over the frame a chunk: a pass a
    conversation (or a frame a conversation, from a groupby) costs a row type and a slice of every column each time,
    and a long import has many conversations with a few messages in each chunk."""
    rows: dict[str, list[Any]] = {}
    for message in messages.itertuples(index=False):
        rows.setdefault(message.conversation_id, []).append(message)
    return rows


async def _prepared(conversations: pd.DataFrame, api: Api, ledger: Ledger, claims: RunClaims, concurrency: int,
                    report: LoadReport) -> AsyncIterator[tuple[pd.DataFrame, dict[str, str]]]:
    """Conversations whose chat is created and linked to its contact, a wave at a time, with their chat ids.

    Those the ledger already holds linked come first, at once. The others follow in waves: a first one as large as
    the sending concurrency, so that sending starts within seconds, then waves of a full REST batch, so that each
    costs a create and a link request. Quarantined conversations are reported, never yielded.
    """
    states = ledger.chats.states(conversations.index)
    linked = [c for c in conversations.index
              if c in states and states[c].linked and states[c].chat_id and not states[c].quarantine]
    if linked:
        yield _ready(conversations.loc[linked], ledger, report)
    rest = conversations.drop(linked)
    if rest.empty:
        return
    index = await _contact_index(rest, states, api, ledger)
    first, size = 0, max(1, min(concurrency, BATCH_MOST))
    while first < len(rest):
        wave = rest.iloc[first:first + size]
        first, size = first + size, BATCH_MOST
        fresh = await _create_chats(wave, api, ledger, concurrency, report)
        await _resolve_contacts(wave, api, ledger, claims, concurrency, report, index)
        await _link_chats(wave, api, ledger, report, fresh)
        yield _ready(wave, ledger, report)


def _ready(conversations: pd.DataFrame, ledger: Ledger, report: LoadReport) -> tuple[pd.DataFrame, dict[str, str]]:
    """The conversations of a prepared wave that can send (linked, not stopped), and their chat ids; the
    quarantined ones go into the report."""
    states = ledger.chats.states(conversations.index)
    ready: list[str] = []
    for conversation_id in conversations.index:
        state = states.get(conversation_id)
        if state is None or conversation_id in report.stopped:
            continue
        if state.quarantine:
            report.quarantined[conversation_id] = state.quarantine
        elif state.linked:
            ready.append(conversation_id)
    return conversations.loc[ready], {c: states[c].chat_id for c in ready}


async def _contact_index(conversations: pd.DataFrame, states: dict[str, ChatState], api: Api,
                         ledger: Ledger) -> ContactIndex | None:
    """The account's contacts read once, when that costs at most half the searches the clients to resolve would."""
    needing = conversations[[c not in states or states[c].contact_id is None or bool(states[c].quarantine)
                             for c in conversations.index]]
    keys = needing["client_key"].drop_duplicates()
    unknown = len(keys) - len(ledger.contacts.ids(keys))
    if unknown < 2:
        return None
    started = ledger.clock()
    if (index := await ContactIndex.read(api, pages_at_most=unknown // 2)) is not None:
        index.read_at = started
    return index


def _stop(report: LoadReport, conversation_id: str, error: AmojoError) -> None:
    """This conversation goes no further in this run; the next run resumes it from the ledger."""
    if isinstance(error, FATAL):
        raise error
    report.stopped.setdefault(conversation_id, str(error))


async def _create_chats(conversations: pd.DataFrame, api: Api, ledger: Ledger, concurrency: int,
                        report: LoadReport) -> set[str]:
    """create_chat is idempotent on conversation_id: a lost answer is retried, and a crash before the chat id is
    saved gets the same chat next time. Returns the conversations whose chat id the ledger did not hold before:
    no run of ours can have linked those chats."""
    states = ledger.chats.states(conversations.index)
    missing = [c for c in conversations.itertuples() if not (states.get(c.Index) and states[c.Index].chat_id)]

    async def create(conversation: Any) -> dict[str, Any] | None:
        try:
            chat_id = await api.chats.create_chat(chat_payload(conversation.Index, conversation))
        except AmojoError as exc:
            _stop(report, conversation.Index, exc)
            return None
        return {"conversation_id": conversation.Index, "chat_id": chat_id, "client_key": conversation.client_key}

    rows = [row for row in await _bounded(concurrency, [create(c) for c in missing]) if row]
    ledger.chats.save(rows)
    report.chats_created += len(rows)
    return {row["conversation_id"] for row in rows}


async def _resolve_contacts(conversations: pd.DataFrame, api: Api, ledger: Ledger, claims: RunClaims,
                            concurrency: int, report: LoadReport, index: ContactIndex | None) -> None:
    """Find each client's contact; a client another run is finding or creating right now waits for it, so that
    no client gets two contacts."""
    states = ledger.chats.states(conversations.index)
    needing = conversations[[c in states and (states[c].contact_id is None or bool(states[c].quarantine))
                             and c not in report.stopped for c in conversations.index]]
    async for mine in claims.turns("client", needing["client_key"]):
        await _find_or_create_contacts(needing[needing["client_key"].isin(mine)], api, ledger, concurrency, report,
                                       index)


async def _find_or_create_contacts(needing: pd.DataFrame, api: Api, ledger: Ledger, concurrency: int,
                                   report: LoadReport, index: ContactIndex | None) -> None:
    """Find each client's contact by normalised phone, then email, in the account's `index` when it was read, else
    by a search per client; create the rest in batches.

    A search that matches several contacts quarantines the client's conversations: sending them to the wrong
    contact cannot be undone, and a person can tell which one is right. A create whose answer was lost (in this
    run, or in one that died waiting for it) is resolved by searching the key every contact we create carries.
    """
    clients = needing.drop_duplicates("client_key")
    known = ledger.contacts.ids(clients["client_key"])
    ambiguous: dict[str, str] = {}
    failed: dict[str, AmojoError] = {}
    unknown = [c for c in clients.itertuples() if c.client_key not in known]
    uncertain = ledger.effects.uncertain("contact", [c.client_key for c in unknown])

    async def search(client: Any) -> tuple[Any, list[int]]:
        try:
            if client.client_key in uncertain:
                # A create another run sent just before it died may still be on its way: it lands within the
                # request's timeouts (connect and send) of being noted, or never.
                wait = uncertain[client.client_key] + 2 * api.timeout_s - ledger.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if (ours := await _search_key(api, client)) is not None:
                    return client, [ours]
            # The last ten digits find the contact however its phone was typed into amoCRM (+7…, 8…, spaces).
            for query in (client.phone[-10:] if isinstance(client.phone, str) else None,
                          client.email if isinstance(client.email, str) else None):
                if query and (found := await api.rest.search_contacts(query)):
                    return client, found
        except AmojoError as exc:
            failed[client.client_key] = exc
        return client, []

    async def look_up(client: Any) -> tuple[Any, list[int]]:
        if index is None:
            return await search(client)
        if client.client_key in uncertain:
            if uncertain[client.client_key] + 2 * api.timeout_s > index.read_at:
                # A create may have been on its way when the index was read (or noted since): the index cannot
                # show it, however long ago it was noted. Wait for it, then search.
                return await search(client)
            if ours := index.by_key(contact_key(client.client_id)):
                return client, ours[:1]
        return client, index.matches(client.phone, client.email)

    # Searches overlap their latency; the REST client's token bucket still keeps them under the rate limit.
    to_create: list[Any] = []
    for client, found in await _bounded(concurrency, [look_up(c) for c in unknown]):
        if client.client_key in failed:
            continue
        if len(found) == 1:
            known[client.client_key] = found[0]
            ledger.contacts.save([{"client_key": client.client_key, "contact_id": found[0], "created": False}])
            report.contacts_matched += 1
        elif len(found) > 1:
            ambiguous[client.client_key] = (f"ambiguous contact: {len(found)} contacts match "
                                            f"({', '.join(map(str, found))})")
        else:
            to_create.append(client)
    ledger.effects.settle("contact", [c.client_key for c in unknown if c.client_key in known])
    first = 0
    while first < len(to_create):
        size = api.rest.batch_size  # smaller once amoCRM has refused a larger batch
        await _create_contacts(to_create[first:first + size], api, ledger, known, failed, report)
        first += size
    for conversation in needing.itertuples():
        if conversation.client_key in failed:
            _stop(report, conversation.Index, failed[conversation.client_key])
    ledger.chats.save([
        {"conversation_id": c.Index, "contact_id": known.get(c.client_key), "quarantine": ambiguous.get(c.client_key)}
        for c in needing.itertuples() if c.client_key not in failed
    ])


@dataclass
class ContactIndex:
    """The account's contacts by the last ten digits of each phone, by email, and by our key: one page-through
    (250 a request) in place of a search per client, when there are more clients to resolve than pages. Matches as
    a search does: phone first, then email; several contacts for one client is ambiguous."""

    phones: dict[str, list[int]] = field(default_factory=dict)
    emails: dict[str, list[int]] = field(default_factory=dict)
    keys: dict[str, list[int]] = field(default_factory=dict)
    read_at: float = float("-inf")
    """The ledger's clock when the read began: a create noted after it (less the request's timeouts) is not in it."""

    @classmethod
    async def read(cls, api: Api, pages_at_most: int) -> ContactIndex | None:
        """Every contact of the account; None when that takes more than `pages_at_most` pages (a search per client
        is cheaper then) or a page cannot be read (the searches will say what is wrong)."""
        if pages_at_most < 1:
            return None
        index = cls()
        for page in range(1, pages_at_most + 1):
            try:
                contacts = await api.rest.contacts_page(page)
            except AmojoError as exc:
                if isinstance(exc, FATAL):
                    raise
                return None
            for contact in contacts:
                index.add(contact)
            if len(contacts) < USERS_PAGE:
                return index
        return None

    def add(self, contact: dict[str, Any]) -> None:
        for field_ in contact.get("custom_fields_values") or []:
            for value in field_.get("values") or []:
                text = str(value.get("value", ""))
                if field_.get("field_code") == "PHONE" and len(digits := re.sub(r"\D", "", text)) >= 10:
                    self.phones.setdefault(digits[-10:], []).append(contact["id"])
                elif field_.get("field_code") == "EMAIL" and text.strip():
                    self.emails.setdefault(text.strip().lower(), []).append(contact["id"])
                elif text.startswith("amojoetl"):
                    self.keys.setdefault(text, []).append(contact["id"])

    def by_key(self, key: str) -> list[int]:
        return sorted(self.keys.get(key, []))

    def matches(self, phone: Any, email: Any) -> list[int]:
        if isinstance(phone, str) and (found := self.phones.get(re.sub(r"\D", "", phone)[-10:])):
            return sorted(set(found))
        if isinstance(email, str) and (found := self.emails.get(email.strip().lower())):
            return sorted(set(found))
        return []


async def _create_contacts(clients: list[Any], api: Api, ledger: Ledger, known: dict[str, int],
                           failed: dict[str, AmojoError], report: LoadReport) -> None:
    """Create one batch of contacts. The ledger says the creates are under way before they are sent; when the
    answer is lost, each client's key is searched, and only those not found are created again."""
    keys = [c.client_key for c in clients]
    ledger.effects.expect("contact", keys)
    remaining = clients
    for attempt in range(1, RESOLVE_ATTEMPTS + 1):
        try:
            ids = await api.rest.create_contacts([contact_body(c) for c in remaining])
            _save_created(ledger, {c.client_key: i for c, i in zip(remaining, ids, strict=True)}, known, report)
            ledger.effects.settle("contact", keys)
            return
        except AmojoError as exc:
            error = exc
            if not exc.may_have_landed:
                break
        await asyncio.sleep(RETRY.delay(attempt, error))
        try:
            landed = await _created(api, remaining)
        except AmojoError as exc:
            error = exc
            break
        _save_created(ledger, {c.client_key: i for c, i in zip(remaining, landed, strict=True) if i is not None},
                      known, report)
        remaining = [c for c in remaining if c.client_key not in known]
        if not remaining:
            ledger.effects.settle("contact", keys)
            return
    # Still uncertain where a create may have landed: the next run searches these clients' keys first.
    failed.update((c.client_key, error) for c in remaining)


async def _created(api: Api, clients: list[Any]) -> list[int | None]:
    """The contact we created for each client, if any: by one page-through of the account when that is cheaper
    than a search per client's key."""
    index = await ContactIndex.read(api, pages_at_most=len(clients) - 1) if len(clients) > 1 else None
    if index is None:
        return await _bounded(BATCH_SAFE, [_search_key(api, c) for c in clients])
    return [min(found) if (found := index.by_key(contact_key(c.client_id))) else None for c in clients]


async def _search_key(api: Api, client: Any) -> int | None:
    """The contact we created for this client, found by the key it carries; the first one if a create was
    repeated (before creates were resolved this way)."""
    found = await api.rest.search_contacts(contact_key(client.client_id))
    return min(found) if found else None


def _save_created(ledger: Ledger, ids: dict[str, int], known: dict[str, int], report: LoadReport) -> None:
    ledger.contacts.save([{"client_key": k, "contact_id": i, "created": True} for k, i in ids.items()])
    known.update(ids)
    report.contacts_created += len(ids)


async def _link_chats(conversations: pd.DataFrame, api: Api, ledger: Ledger, report: LoadReport,
                      fresh: set[str]) -> None:
    """Link before the first message, so amoCRM makes no unsorted lead. What is linked is read first and kept
    (but for `fresh` chats, whose ids no run had saved, so none of ours can have linked them); after a lost answer
    it is read again, and only what is still unlinked is linked."""
    states = ledger.chats.states(conversations.index)
    unlinked: list[ChatState] = [s for s in states.values() if not s.linked and not s.quarantine and s.contact_id
                                 and s.conversation_id not in report.stopped]
    if not unlinked:
        return
    links: dict[str, ChatLink] = {}
    error: AmojoError | None = None
    unread = [s.chat_id for s in unlinked if s.conversation_id not in fresh]
    for attempt in range(1, RESOLVE_ATTEMPTS + 1):
        if error is not None:
            await asyncio.sleep(RETRY.delay(attempt - 1, error))
            unread = [s.chat_id for s in unlinked if s.chat_id not in links]
        try:
            if unread:
                links.update((link.chat_id, link) for link in await api.rest.chat_links(unread))
            to_link = [ChatLink(s.chat_id, s.contact_id) for s in unlinked if s.chat_id not in links]
            made = await api.rest.link_chats(to_link) if to_link else []
        except AmojoError as exc:
            error = exc
            if exc.may_have_landed:
                continue
            break
        report.links_created += len(made)
        links.update((link.chat_id, link) for link in made)
        error = None
        break
    ledger.chats.save([
        {"conversation_id": s.conversation_id, "contact_id": links[s.chat_id].contact_id, "linked": True}
        for s in unlinked if s.chat_id in links
    ])
    if error is not None:
        for state in unlinked:
            if state.chat_id not in links:
                _stop(report, state.conversation_id, error)


async def _landed(api: Api, chat_id: str, msgids: set[str], since_ms: int, patience: int = 0
                  ) -> dict[str, dict[str, Any]]:
    """Which of these msgids the chat already holds (msgid -> the history's message), back to `since_ms`.

    With `patience`, a msgid not found is looked for again that many times, with backoff: amojo stores messages
    asynchronously, so one accepted a moment ago may not be in the history yet.
    """
    found: dict[str, dict[str, Any]] = {}
    for attempt in range(patience + 1):
        async for item in api.chats.history(chat_id, older_than_ms=since_ms):
            message = item.get("message", {})
            if message.get("client_id") in msgids:
                found.setdefault(message["client_id"], message)
        if len(found) == len(msgids) or attempt == patience:
            return found
        await asyncio.sleep(0.25 * 2**attempt)
    return found


def _arrived(message: Any, landed: dict[str, Any]) -> dict[str, Any]:
    """The ledger row of a message found in the chat: sent, with the hash of what amoCRM holds. When that may not be
    the source's (other text, or a message that is not text only: media and locations are not compared), the row
    says so, and the message is edited."""
    same = message.type == "text" and landed.get("type", "text") == "text" and \
        int(text_hash(pd.Series([landed.get("text", "")], dtype=object)).iloc[0]) == int(message.text_hash)
    return _ledger_row(message, status="sent", amojo_id=landed.get("id", ""), last_error=None,
                       content_hash=int(message.content_hash) if same else UNKNOWN_CONTENT)


async def _send_conversation(conversation_id: str, chat_id: str, client: dict[str, Any], pending: list[Any],
                             edits: list[Any], api: Api, ledger: Ledger, claims: RunClaims,
                             report: LoadReport) -> None:
    """Send one conversation's messages in time order; stop it at the first message that cannot be sent.

    A message left `sending` (or `failed`) by an earlier run may have landed before its answer was lost: the chat
    history is asked first, and only what is not there is sent again. Sent again, it stays uncertain: a refusal of
    the repeat may mean it had landed, and an API that takes a repeated msgid keeps what landed first, so the
    message is then edited to the source's content.
    """
    outcomes: list[dict[str, Any]] = []
    stale: set[str] = set()

    def row(message: Any, **values: Any) -> dict[str, Any]:
        stays_stale = message.msgid in stale and values.get("status") != "sent"
        return _ledger_row(message, **({"content_hash": UNKNOWN_CONTENT} if stays_stale else {}), **values)

    try:
        uncertain = [m for m in pending if isinstance(m.status, str) and m.status in ("sending", "failed")]
        unresolved: set[str] = set()
        if uncertain:
            landed = await _landed(api, chat_id, {m.msgid for m in uncertain}, min(int(m.msec) for m in uncertain))
            arrived = [_arrived(m, landed[m.msgid]) for m in uncertain if m.msgid in landed]
            outcomes += arrived
            report.messages_skipped += len(arrived)
            changed = {row["msgid"] for row in arrived if row["content_hash"] == UNKNOWN_CONTENT}
            edits = edits + [m for m in pending if m.msgid in changed]
            unresolved = {m.msgid for m in uncertain} - set(landed)
            pending = [m for m in pending if m.msgid not in landed]
        # Those whose content changed since an earlier attempt that may have landed: amoCRM may hold that one. The
        # ledger keeps saying so (UNKNOWN_CONTENT) until an edit has gone out.
        stale = {m.msgid for m in pending
                 if m.msgid in unresolved and (pd.isna(m.recorded_hash) or int(m.recorded_hash) != int(m.content_hash))}
        if pending:
            claims.check()
            ledger.messages.record([row(m, status="sending") for m in pending])
        resent: list[Any] = []
        for message in pending:
            claims.check()
            try:
                sent = await api.chats.new_message(message_payload(message, client))
            except InvalidRequest as exc:
                if not (exc.may_have_landed or message.msgid in unresolved):
                    outcomes.append(_ledger_row(message, status="rejected", last_error=str(exc)))
                    report.api_rejected[f"api_{exc.code or exc.status}"] += 1
                    continue
                # A repeat of a message that may have landed can be refused as a duplicate: if the chat holds it,
                # it was sent. If the history does not show it yet, it may still have landed: it stays uncertain,
                # and the conversation stops here (the next run asks the history again).
                landed = await _landed(api, chat_id, {message.msgid}, int(message.msec), patience=4)
                if not landed:
                    raise
                outcomes.append(_arrived(message, landed[message.msgid]))
                if outcomes[-1]["content_hash"] == UNKNOWN_CONTENT:
                    resent.append(message)
                report.messages_sent += 1
                continue
            outcomes.append(_ledger_row(message, status="sent", amojo_id=sent.amojo_id, last_error=None))
            if message.msgid in stale:
                resent.append(message)  # an API that takes a repeated msgid keeps the content that landed first
            report.messages_sent += 1
        for message in edits + resent:
            claims.check()
            try:
                await api.chats.edit_message(edit_payload(message))
            except AmojoError as exc:
                if isinstance(exc, FATAL):
                    raise
                # Keep a hash that differs from the source's, so that the next run tries the edit again.
                recorded = getattr(message, "recorded_hash", UNKNOWN_CONTENT)
                outcomes.append(_ledger_row(message, status="sent", last_error=str(exc),
                                            content_hash=UNKNOWN_CONTENT if pd.isna(recorded) else int(recorded)))
                report.failed += 1
                continue
            outcomes.append(_ledger_row(message, status="sent", last_error=None))
            report.messages_edited += 1
    except AmojoError as exc:
        if isinstance(exc, FATAL):
            raise
        recorded = {row["msgid"] for row in outcomes}
        unsent = next((m for m in pending if m.msgid not in recorded), None)
        if unsent is not None:
            # The first unsent message failed (it may have landed: it is asked for first next time); later ones
            # would land out of order, so they wait for the next run. A refusal for amoCRM's own reasons (a
            # conflict, a lock) is such a failure too: the next run tries it again, still in order.
            outcomes.append(row(unsent, status="failed", last_error=str(exc)))
            report.failed += 1
        _stop(report, conversation_id, exc)
    finally:
        # One row per message, the last outcome winning (a message found in the chat, then edited).
        merged: dict[str, dict[str, Any]] = {}
        for row in outcomes:
            merged[row["msgid"]] = {**merged.get(row["msgid"], {}), **row}
        ledger.messages.record(list(merged.values()))


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
        states = ledger.chats.states(batch.conversations.index)
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
                    stopped: dict[str, str], label: str) -> LoadReport:
    return await load(batch, api, ledger, claims, registered_through, interval_label, concurrency, progress,
                      stopped)


@task(name="resolve-senders", cache_policy=NO_CACHE)
async def resolve_senders_task(rest: RestClient | None, bot_id: str | None) -> Senders:
    return await resolve_senders(rest, bot_id)
