"""Send one conversation's messages in time order: where a message's status changes on the way to amoCRM.

One message's states (`etl.ledger.status`), and what each crash window or lost answer resolves to:

    pending    registered from the source; nothing sent: it follows its source row (moved when the row's time or
               conversation is corrected; `deleted` when its interval's source no longer has it).
    sending    written for all the conversation's unsent messages before the first request, each only where it
               still is (a `pending` one another run moved since, following its source row, is not this
               conversation's any more); amoCRM may hold it from here on, and its place is fixed. Those a run that
               stops (a failure, a refusal) began no request for go back to `pending` at its end. A run that dies
               here, or an answer lost, leaves it `sending`: the next run reads the chat's history before sending
               it again; one found there is `sent` with the hash of what amoCRM holds, and edited when the source
               changed since (`needs edit`).
    sent       written after amoCRM's answer. A repeat amoCRM refuses (a duplicate msgid after a lost answer) is
               looked up in the history (`amojo.resolve`): found, it is `sent`; not shown yet, it stays uncertain.
    failed     the first message that could not be sent, for any reason but its data: the conversation stops there
               until the next run (its later messages would land before it), which looks it up first.
    rejected   amoCRM refused its data (400, 422) and the chat does not hold it: at once when nothing of it can
               have landed; when an earlier run's attempt may have (a 5xx, a 409, a lost answer, a kill, a lost
               claim left it `sending` or `failed`), once the history read with `REFUSAL_PATIENCE` does not show
               it. A read that fails is no answer, and a refusal of a retry of this run's own uncertain attempt may
               be a duplicate the history does not show yet: both leave it uncertain for the next run. A reject
               with the API's reason (`tasks.load.refusals`), listed by `amojo-etl rejects`; it waits for the
               source to change it; the conversation goes on.
    edit       a message whose content changed since it was sent is edited; an edit that fails keeps a hash that
               differs from the source's, so the next run tries again.

Errors that concern the whole run (credentials, signature) raise; the others stop this conversation alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd

from amojo.errors import FATAL, AmojoError, InvalidRequest
from amojo.payloads import edit_payload, message_payload
from amojo.resolve import resolve
from etl.claims import ClaimLost
from etl.ledger import NEEDS_EDIT_HASH, UNCERTAIN, MessageStatus

from ..transform import text_hash
from .context import LoadContext
from .plan import ledger_row
from .refusals import refusal_note, refusal_reason
from .replies import quote_of

REPEAT_PATIENCE = 4
"""History re-reads (with backoff: 3.75 s in all) for a message whose answer was lost before it is left uncertain."""
REFUSAL_PATIENCE = 5
"""History re-reads (7.75 s in all) before a refused message that an earlier run's attempt may have landed is taken
for refused for its data: well beyond amojo's usual delay in showing a message, since a repeat refused as a
duplicate and a refusal of the data may read alike (amojo-api.md §9, Q1)."""


async def landed_in_chat(ctx: LoadContext, chat_id: str, msgids: set[str], since_ms: int, patience: int = 0
                         ) -> dict[str, dict[str, Any]]:
    """Which of these msgids the chat already holds (msgid -> the history's message), back to `since_ms`.

    With `patience`, a msgid not found is looked for again that many times, with backoff: amojo stores messages
    asynchronously, so one accepted a moment ago may not be in the history yet.
    """
    found: dict[str, dict[str, Any]] = {}
    for attempt in range(patience + 1):
        async for item in ctx.api.chats.history(chat_id, older_than_ms=since_ms):
            message = item.get("message", {})
            if message.get("client_id") in msgids:
                found.setdefault(message["client_id"], message)
        if len(found) == len(msgids) or attempt == patience:
            return found
        await asyncio.sleep(0.25 * 2**attempt)
    return found


def arrived(message: Any, landed: dict[str, Any]) -> dict[str, Any]:
    """The ledger row of a message found in the chat: sent, with the hash of what amoCRM holds. When that may not be
    the source's (other text, or a message that is not text only: media and locations are not compared), the row
    flags it for an edit."""
    same = message.type == "text" and landed.get("type", "text") == "text" and \
        int(text_hash(pd.Series([landed.get("text", "")], dtype=object)).iloc[0]) == int(message.text_hash)
    return ledger_row(message, status=MessageStatus.SENT, amojo_id=landed.get("id", ""), last_error=None,
                      content_hash=int(message.content_hash) if same else NEEDS_EDIT_HASH)


class ConversationSend:
    """One conversation's messages to send (`pending`, in time order) and to edit, sent through its chat; every
    outcome recorded in the ledger at the end, whatever stopped it."""

    def __init__(self, ctx: LoadContext, conversation_id: str, chat_id: str, client: dict[str, Any],
                 pending: list[Any], edits: list[Any]) -> None:
        self.ctx, self.conversation_id, self.chat_id, self.client = ctx, conversation_id, chat_id, client
        self.pending, self.edits = pending, edits
        self.outcomes: list[dict[str, Any]] = []
        self.unresolved: set[str] = set()  # left uncertain by an earlier run, and not in the chat's history
        self.stale: set[str] = set()  # of those, the ones whose content changed since: amoCRM may hold the old one
        self.resent: list[Any] = []  # sent again while amoCRM may hold an older content: edit them after
        self.marked: set[str] = set()  # marked `sending` by this run
        self.attempted: set[str] = set()  # whose request this run began: amoCRM may hold them

    async def run(self) -> None:
        try:
            await self._look_up_uncertain()
            if self.pending:
                self.ctx.claims.check()
                # Only where each still is: another run may have moved an unsent one since it was planned.
                mine = self.ctx.ledger.messages.begin_sending([self._row(m, status=MessageStatus.SENDING)
                                                               for m in self.pending])
                self.pending = [m for m in self.pending if m.msgid in mine]
                self.marked = mine
            for message in self.pending:
                await self._send(message)
            for message in self.edits + self.resent:
                await self._edit(message)
        except AmojoError as exc:
            if isinstance(exc, FATAL):
                raise
            self._fail(exc)
        finally:
            self._record()

    def _row(self, message: Any, **values: Any) -> dict[str, Any]:
        """A ledger row that keeps flagging a stale message for an edit until it is sent."""
        stays_stale = message.msgid in self.stale and values.get("status") != MessageStatus.SENT
        return ledger_row(message, **({"content_hash": NEEDS_EDIT_HASH} if stays_stale else {}), **values)

    async def _look_up_uncertain(self) -> None:
        """A message left `sending` (or `failed`) by an earlier run may have landed before its answer was lost: the
        chat history is asked first, and only what is not there is sent again. Sent again, it stays uncertain: an
        API that takes a repeated msgid keeps what landed first, so the message is then edited to the source's."""
        uncertain = [m for m in self.pending if isinstance(m.status, str) and m.status in UNCERTAIN]
        if uncertain:
            landed = await landed_in_chat(self.ctx, self.chat_id, {m.msgid for m in uncertain},
                                          min(int(m.msec) for m in uncertain))
            found = [arrived(m, landed[m.msgid]) for m in uncertain if m.msgid in landed]
            self.outcomes += found
            self.ctx.report.messages_skipped += len(found)
            changed = {row["msgid"] for row in found if row["content_hash"] == NEEDS_EDIT_HASH}
            self.edits = self.edits + [m for m in self.pending if m.msgid in changed]
            self.unresolved = {m.msgid for m in uncertain} - set(landed)
            self.pending = [m for m in self.pending if m.msgid not in landed]
        self.stale = {m.msgid for m in self.pending if m.msgid in self.unresolved
                      and (pd.isna(m.recorded_hash) or int(m.recorded_hash) != int(m.content_hash))}

    async def _send(self, message: Any) -> None:
        """Send one message. A refusal that may concern a repeat (after a lost answer, in this run or an earlier
        one) is resolved by the chat's history: shown there, it was sent; not shown after `REFUSAL_PATIENCE`, it was
        refused for its data (a reject). A history that cannot be read leaves it uncertain, and the conversation
        stops here."""
        ctx = self.ctx
        ctx.claims.check()
        self.attempted.add(message.msgid)
        sent, landed, refusal = None, {}, None
        quote = quote_of(ctx.ledger, message, self.outcomes)

        async def send() -> None:
            nonlocal sent, refusal
            try:
                sent = await ctx.api.chats.new_message(message_payload(message, self.client, quote.msgid))
            except InvalidRequest as exc:
                refusal = exc
                raise

        async def read_back() -> bool:
            patience = REFUSAL_PATIENCE if refusal is not None and not refusal.may_have_landed else REPEAT_PATIENCE
            landed.update(await landed_in_chat(ctx, self.chat_id, {message.msgid}, int(message.msec), patience))
            return bool(landed)

        def may_be_repeat(exc: AmojoError) -> bool:
            return isinstance(exc, InvalidRequest) and (exc.may_have_landed or message.msgid in self.unresolved)

        error = await resolve(send, read_back, rounds=1, may_have_landed=may_be_repeat)
        if error is not None and error is refusal and not refusal.may_have_landed:
            # amoCRM refused this message's data, and the chat does not hold it: nothing could have landed, or the
            # history, read with patience, does not show what an earlier run sent (a read that failed is returned as
            # its own error, never as the refusal). A reject; the conversation goes on. A refusal that answers a
            # retry of this run's own uncertain attempt (a 5xx, a lost answer) may be a duplicate of a message the
            # history does not show yet: it stays uncertain, and the next run decides, its attempt then older.
            self.outcomes.append(ledger_row(message, status=MessageStatus.REJECTED, last_error=refusal_note(refusal)))
            ctx.report.api_rejected[refusal_reason(refusal)] += 1
            return
        if error is not None:
            raise error
        if sent is not None:
            self.outcomes.append(ledger_row(message, status=MessageStatus.SENT, amojo_id=sent.amojo_id,
                                            last_error=None))
            if message.msgid in self.stale:
                self.resent.append(message)  # an API that takes a repeated msgid keeps the content that landed first
        else:
            self.outcomes.append(arrived(message, landed[message.msgid]))
            if self.outcomes[-1]["content_hash"] == NEEDS_EDIT_HASH:
                self.resent.append(message)
        ctx.report.messages_sent += 1
        quote.count(ctx.report)

    async def _edit(self, message: Any) -> None:
        ctx = self.ctx
        ctx.claims.check()
        try:
            await ctx.api.chats.edit_message(edit_payload(message))
        except AmojoError as exc:
            if isinstance(exc, FATAL):
                raise
            # Keep a hash that differs from the source's, so that the next run tries the edit again.
            recorded = getattr(message, "recorded_hash", NEEDS_EDIT_HASH)
            self.outcomes.append(ledger_row(message, status=MessageStatus.SENT, last_error=str(exc),
                                            content_hash=NEEDS_EDIT_HASH if pd.isna(recorded) else int(recorded)))
            ctx.report.failed += 1
            return
        self.outcomes.append(ledger_row(message, status=MessageStatus.SENT, last_error=None))
        ctx.report.messages_edited += 1

    def _fail(self, error: AmojoError) -> None:
        """The first unsent message failed (it may have landed: it is asked for first next time); later ones would
        land out of order, so they wait for the next run. A refusal for amoCRM's own reasons (a conflict, a lock) is
        such a failure too: the next run tries it again, still in order."""
        recorded = {row["msgid"] for row in self.outcomes}
        unsent = next((m for m in self.pending if m.msgid not in recorded), None)
        if unsent is not None:
            if not self._never_tried(unsent):  # one no request went out for stays unsent (`_record`)
                self.outcomes.append(self._row(unsent, status=MessageStatus.FAILED, last_error=str(error)))
            self.ctx.report.failed += 1
        self.ctx.report.stop(self.conversation_id, error)

    def _never_tried(self, message: Any) -> bool:
        """Nothing of it has gone out: it was `pending` when planned, and this run began no request for it."""
        return message.msgid not in self.attempted and (not isinstance(message.status, str)
                                                        or message.status == MessageStatus.PENDING)

    def _record(self) -> None:
        """One row per message, the last outcome winning (a message found in the chat, then edited). Those this
        run marked `sending` and stopped before trying go back to `pending`: amoCRM cannot hold them, so they still
        follow their source rows. Not once the conversation's claim is gone (another run may be sending them now):
        they stay `sending`, and are looked up, as after a kill."""
        merged: dict[str, dict[str, Any]] = {}
        for row in self.outcomes:
            merged[row["msgid"]] = {**merged.get(row["msgid"], {}), **row}
        untried = [m for m in self.pending if m.msgid in self.marked and m.msgid not in merged and self._never_tried(m)]
        if untried:
            try:
                self.ctx.claims.check()
            except ClaimLost:
                untried = []
        merged.update({m.msgid: ledger_row(m, status=MessageStatus.PENDING) for m in untried})
        self.ctx.ledger.messages.record(list(merged.values()))
