"""The loader: runs the stages of the load for one batch — plan, claim, prepare a wave, send each conversation —
holding what they share in one `LoadContext`.

Conversations run concurrently, each sending as soon as its own wave of chats, contacts and links is ready; one
conversation's messages go one after the other. A conversation that fails stops alone, for the rest of the run
(its later messages would land before the one that failed); errors that concern the whole run (credentials, lost
claims) stop every conversation, and the load returns only once none of its requests is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.payloads import client_participant
from amojo.rest import RestClient
from etl.api import Api
from etl.claims import RunClaims
from etl.ledger import Ledger

from ..transform import Batch, Senders
from .context import LoadContext, LoadReport, bounded
from .plan import plan, restricted
from .prepare import prepared
from .refusals import refusal_rejects
from .send import ConversationSend

log = logging.getLogger(__name__)

Progress = Callable[[int], Awaitable[None]]


async def load(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, registered_through: int,
               interval_label: str, concurrency: int = 32, progress: Progress | None = None,
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
    ctx = LoadContext(api, ledger, claims, LoadReport(), concurrency)
    report = ctx.report
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
        await _load_conversations(ctx, restricted(batch, mine), progress)
    # amoCRM's refusals of the batch's data, this run's and earlier ones: listed with the interval's rejects.
    ledger.rejects.save(refusal_rejects(batch.messages, ledger), interval_label)
    return report


async def _load_conversations(ctx: LoadContext, batch: Batch, progress: Progress | None) -> None:
    """The stages for conversations this run holds, planned again from the ledger: another run may have sent some
    of their messages since. Conversations are prepared (chat, contact, link) a wave at a time, and each starts
    sending as soon as its wave is ready, while the next waves are prepared: REST's few requests a second never
    hold the Chats API idle."""
    to_send, to_edit, settled = plan(batch, ctx.ledger)
    ctx.report.messages_skipped += settled
    active = sorted(set(to_send["conversation_id"]) | set(to_edit["conversation_id"]))
    if not active:
        return
    sends, edits = _by_conversation(to_send), _by_conversation(to_edit)
    ready: asyncio.Queue[tuple[Any, str] | None] = asyncio.Queue()

    async def prepare() -> None:
        try:
            async for conversations, chat_ids in prepared(ctx, batch.conversations.loc[active]):
                for conversation in conversations.itertuples():
                    ready.put_nowait((conversation, chat_ids[conversation.Index]))
        finally:
            for _ in range(ctx.concurrency):
                ready.put_nowait(None)

    async def send() -> None:
        while (item := await ready.get()) is not None:
            conversation, chat_id = item
            await ConversationSend(ctx, conversation.Index, chat_id, client_participant(conversation),
                                   sends.get(conversation.Index, []), edits.get(conversation.Index, [])).run()
            if progress is not None:
                try:
                    await progress(ctx.report.messages_sent + ctx.report.messages_edited)
                except Exception as exc:  # noqa: BLE001 - a progress bar that failed to move must not stop sending
                    log.warning("could not update the progress artifact (%s)", type(exc).__name__)

    await bounded(ctx.concurrency + 1, [prepare(), *(send() for _ in range(ctx.concurrency))])


def _by_conversation(messages: pd.DataFrame) -> dict[str, list[Any]]:
    """Each conversation's messages as rows, in the frame's order. One pass over the frame a chunk: a pass a
    conversation (or a frame a conversation, from a groupby) costs a row type and a slice of every column each time,
    and a long import has many conversations with a few messages in each chunk."""
    rows: dict[str, list[Any]] = {}
    for message in messages.itertuples(index=False):
        rows.setdefault(message.conversation_id, []).append(message)
    return rows


async def resolve_senders(rest: RestClient | None, bot_id: str | None) -> Senders:
    """Manager email -> the amoCRM user's amojo_id (users without one fall back to the bot); without REST
    credentials (a dry run may have none), every manager message goes as the bot."""
    if rest is None:
        return Senders({}, bot_id)
    users = await rest.users()
    return Senders({u.email.strip().lower(): u.amojo_id for u in users if u.email and u.amojo_id}, bot_id)


@task(name="load", task_run_name="load-{label}", cache_policy=NO_CACHE)
async def load_task(batch: Batch, api: Api, ledger: Ledger, claims: RunClaims, registered_through: int,
                    interval_label: str, concurrency: int, progress: Progress | None,
                    stopped: dict[str, str], label: str) -> LoadReport:
    return await load(batch, api, ledger, claims, registered_through, interval_label, concurrency, progress,
                      stopped)


@task(name="resolve-senders", cache_policy=NO_CACHE)
async def resolve_senders_task(rest: RestClient | None, bot_id: str | None) -> Senders:
    return await resolve_senders(rest, bot_id)
