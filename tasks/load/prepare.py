"""Prepare conversations for sending, a wave at a time: the chat created, the client's contact resolved
(`contacts.py`), and the two linked before the first message, so that amoCRM makes no unsorted lead.

    chat     create_chat is idempotent on conversation_id: a lost answer is retried, and a run that dies before
             `chats.chat_id` is saved gets the same chat next time.
    link     the chats' links are read first and only the missing ones made; after a lost answer they are read
             again (`amojo.resolve`). A chat is `linked` in the ledger only once amoCRM has shown or confirmed it.
             A link amoCRM refuses is isolated (the batch is halved until the refused one is alone) and the rest
             are made. Its contact may have been merged or deleted in amoCRM: the client's contact is resolved
             again (our key, phone, email) and the chat linked to it; refused again, its conversation stops.
    check    a conversation the ledger holds linked has its chat's link read before its next message: a contact
             merged in amoCRM moved the chat (the ledger follows it), one deleted left it unlinked (the client's
             contact is resolved again and the chat linked to it, as above).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pandas as pd

from amojo.errors import FATAL, AmojoError
from amojo.payloads import chat_payload
from amojo.resolve import resolve
from amojo.rest import BATCH_MOST, ChatLink
from etl.ledger import ChatState

from .contacts import contact_index, resolve_contacts
from .context import LoadContext, bounded


async def prepared(ctx: LoadContext, conversations: pd.DataFrame
                   ) -> AsyncIterator[tuple[pd.DataFrame, dict[str, str]]]:
    """Conversations whose chat is created and linked to its contact, a wave at a time, with their chat ids.

    Those the ledger already holds linked come first, at once. The others follow in waves: a first one as large as
    the sending concurrency, so that sending starts within seconds, then waves of a full REST batch, so that each
    costs a create and a link request. Quarantined conversations are reported, never yielded.
    """
    states = ctx.ledger.chats.states(conversations.index)
    linked = await _still_linked(ctx, conversations, states, [
        c for c in conversations.index if c in states and states[c].linked and states[c].chat_id
        and not states[c].quarantine and c not in ctx.report.stopped])
    if linked:
        yield _ready(ctx, conversations.loc[linked])
        states = ctx.ledger.chats.states(conversations.index)
    rest = conversations.drop(linked)
    if rest.empty:
        return
    index = await contact_index(ctx, rest, states)
    first, size = 0, max(1, min(ctx.concurrency, BATCH_MOST))
    while first < len(rest):
        wave = rest.iloc[first:first + size]
        first, size = first + size, BATCH_MOST
        fresh = await _create_chats(ctx, wave)
        await resolve_contacts(ctx, wave, index)
        await _link_chats(ctx, wave, fresh)
        yield _ready(ctx, wave)


def _ready(ctx: LoadContext, conversations: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The conversations of a prepared wave that can send (linked, not stopped), and their chat ids; the
    quarantined ones go into the report."""
    states = ctx.ledger.chats.states(conversations.index)
    ready: list[str] = []
    for conversation_id in conversations.index:
        state = states.get(conversation_id)
        if state is None or conversation_id in ctx.report.stopped:
            continue
        if state.quarantine:
            ctx.report.quarantined[conversation_id] = state.quarantine
        elif state.linked:
            ready.append(conversation_id)
    return conversations.loc[ready], {c: states[c].chat_id for c in ready}


async def _still_linked(ctx: LoadContext, conversations: pd.DataFrame, states: dict[str, ChatState],
                        linked: list[str]) -> list[str]:
    """Of the conversations the ledger holds linked, those whose chats amoCRM still shows linked (one read per
    `LINKS_READ` chats). A chat shown linked to another contact (its contact merged into that one) is followed; a
    chat shown unlinked (its contact deleted, or the chat unlinked by a person) is not returned: its client's
    contact is resolved again, our key first (a contact only unlinked still carries it), and the conversation is
    prepared as a new one."""
    if not linked:
        return []
    try:
        shown = {link.chat_id: link.contact_id for link in
                 await ctx.api.rest.chat_links([states[c].chat_id for c in linked])}  # type: ignore[misc]
    except AmojoError as exc:
        for conversation_id in linked:
            ctx.report.stop(conversation_id, exc)
        return []
    ctx.ledger.chats.save([{"conversation_id": c, "contact_id": shown[states[c].chat_id]} for c in linked
                           if shown.get(states[c].chat_id, states[c].contact_id) != states[c].contact_id])
    gone = [c for c in linked if states[c].chat_id not in shown]
    # A contact none of whose chats is linked any more was deleted; one whose other chats are was only unlinked
    # from this chat (by a person), and the client's contact stays.
    ctx.ledger.contacts.forget({states[c].contact_id for c in gone} - set(shown.values()) - {None})
    ctx.ledger.chats.save([{"conversation_id": c, "contact_id": None, "linked": False} for c in gone])
    if gone:
        await resolve_contacts(ctx, conversations.loc[gone], None, again=True)
    return [c for c in linked if c not in gone]


async def _create_chats(ctx: LoadContext, conversations: pd.DataFrame) -> set[str]:
    """Create the chats the ledger has no id for. Returns the conversations whose chat id the ledger did not hold
    before: no run of ours can have linked those chats."""
    states = ctx.ledger.chats.states(conversations.index)
    missing = [c for c in conversations.itertuples() if not (states.get(c.Index) and states[c.Index].chat_id)]

    async def create(conversation: Any) -> dict[str, Any] | None:
        try:
            chat_id = await ctx.api.chats.create_chat(chat_payload(conversation.Index, conversation))
        except AmojoError as exc:
            ctx.report.stop(conversation.Index, exc)
            return None
        return {"conversation_id": conversation.Index, "chat_id": chat_id, "client_key": conversation.client_key}

    rows = [row for row in await bounded(ctx.concurrency, [create(c) for c in missing]) if row]
    ctx.ledger.chats.save(rows)
    ctx.report.chats_created += len(rows)
    return {row["conversation_id"] for row in rows}


async def _link_chats(ctx: LoadContext, conversations: pd.DataFrame, fresh: set[str], again: bool = True) -> None:
    """Link each chat to its contact, once. What is linked is read first and kept (but for `fresh` chats, whose ids
    no run had saved, so none of ours can have linked them); after a lost answer it is read again, and only what is
    still unlinked is linked. A link amoCRM refuses is found and set aside, and the others are made; with `again`,
    the refused ones' contacts are resolved anew (amoCRM may no longer have them) and linked once more."""
    states = ctx.ledger.chats.states(conversations.index)
    unlinked: list[ChatState] = [s for s in states.values() if not s.linked and not s.quarantine and s.contact_id
                                 and s.conversation_id not in ctx.report.stopped]
    if not unlinked:
        return
    links: dict[str, ChatLink] = {}
    refused: dict[str, AmojoError] = {}
    unread = [s.chat_id for s in unlinked if s.conversation_id not in fresh]

    async def read_back() -> bool:
        nonlocal unread
        if unread:
            links.update((link.chat_id, link) for link in await ctx.api.rest.chat_links(unread))
        # From now on a fresh chat too may have been linked, by a request whose answer was lost.
        unread = [s.chat_id for s in unlinked if s.chat_id not in links and s.chat_id not in refused]
        return not unread

    async def send(batch: list[ChatLink]) -> None:
        """Link a batch; one amoCRM refuses (nothing of it made) is halved until the refused links are alone."""
        try:
            made = await ctx.api.rest.link_chats(batch)
        except AmojoError as exc:
            if exc.retryable or exc.may_have_landed or isinstance(exc, FATAL):
                raise
            if len(batch) == 1:
                refused[batch[0].chat_id] = exc
                return
            for half in (batch[:len(batch) // 2], batch[len(batch) // 2:]):
                await send(half)
            return
        ctx.report.links_created += len(made)
        links.update((link.chat_id, link) for link in made)

    async def link() -> None:
        todo = [ChatLink(s.chat_id, s.contact_id) for s in unlinked  # type: ignore[arg-type]
                if s.chat_id not in links and s.chat_id not in refused]
        while todo:
            size = ctx.api.rest.batch_size
            await send(todo[:size])
            todo = todo[size:]

    error = await resolve(link, read_back, read_first=True)
    ctx.ledger.chats.save([
        {"conversation_id": s.conversation_id, "contact_id": links[s.chat_id].contact_id, "linked": True}
        for s in unlinked if s.chat_id in links
    ])
    for state in unlinked:
        if state.chat_id not in links and state.chat_id not in refused and error is not None:
            ctx.report.stop(state.conversation_id, error)
    refusals = [s for s in unlinked if s.chat_id in refused]
    if refusals and again:
        # Most likely the contact is gone, merged or deleted by a person in amoCRM: no chat goes to it any more.
        ctx.ledger.contacts.forget({s.contact_id for s in refusals if s.contact_id is not None})
        affected = conversations.loc[[s.conversation_id for s in refusals]]
        await resolve_contacts(ctx, affected, None, again=True)
        await _link_chats(ctx, affected, fresh, again=False)
    else:
        for state in refusals:
            ctx.report.stop(state.conversation_id, refused[state.chat_id])
