"""Register and plan: which of a batch's messages are new to the ledger, which to send, which to edit, which need
nothing. Reads the ledger (and registers new messages as `pending`); sends nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from amojo.payloads import chat_payload, client_participant, contact_body, message_payload
from etl.ledger import DONE, MOVABLE, Ledger, MessageStatus

from ..transform import Batch, json_lines, source_keys


def ledger_row(message: Any, **values: Any) -> dict[str, Any]:
    """The ledger's row for a message (a row of the batch's messages), with these values."""
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
    """Register the batch's new messages as `pending`; move the unsent ones the source has moved; reject the rows
    whose message id another row owns.

    A message id is the message's identity in amoCRM (its msgid). Until a request for it has gone out (`pending`,
    or `deleted` from the source), it follows its source row: a corrected time or conversation moves its ledger
    row, and a row that comes back is `pending` again. From `sending` on, amoCRM may hold it, and the ledger keeps
    that row's conversation and time: a row with the same id in another conversation, or at another time (another
    system's numbering, a reused id, a second row the interval rejected as a duplicate and edited later), is
    rejected as `duplicate_id` rather than sent as an edit of the first chat's message. Registering is an insert
    that leaves known ids alone, and moving is conditional on the status, so when two runs register one id, or one
    moves it while the other begins to send it, exactly one owns it. Without `register` (a dry run, an audit) it
    only reads, and takes an unsent message as moved.
    """
    messages = batch.messages
    known = _known(messages, ledger)
    fresh = messages[~messages["msgid"].isin(known.index)]
    movable = messages[messages["msgid"].map(known["status"]).isin(MOVABLE)] if len(known) else messages.iloc[0:0]
    if register and len(fresh):
        ledger.messages.register([ledger_row(m) for m in fresh.itertuples(index=False)])
    if register and len(movable):
        ledger.messages.place([ledger_row(m) for m in movable.itertuples(index=False)])
    if register and (len(fresh) or len(movable)):
        changed = pd.concat([fresh, movable])
        known = pd.concat([known.drop(index=movable["msgid"]), _known(changed, ledger)])
    foreign = _foreign(messages, known)
    if not register:
        foreign &= ~messages["msgid"].isin(movable["msgid"])
    if not foreign.any():
        return batch
    rows = messages[foreign]
    shown = source_rows(rows)
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


def source_rows(messages: pd.DataFrame) -> pd.DataFrame:
    """Valid messages shown as the source has them: source ids, created_at in UTC, what they say."""
    prefix_length = messages["msgid"].str.len() - messages["source_id"].str.len()
    return pd.DataFrame({
        "id": messages["source_id"],
        "conversation_id": [c[n:] for c, n in zip(messages["conversation_id"], prefix_length, strict=True)],
        "created_at": pd.to_datetime(messages["msec"], unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": messages["type"],
        "text": messages["text"],
    }, index=messages.index)


def withdraw_unseen(ledger: Ledger, holder: str, start_ms: int, end_ms: int, seen_pending: set[str]) -> int:
    """After an import of [start_ms, end_ms) read all its source rows: mark `deleted` its `pending` messages the
    source did not give (`seen_pending`: those it gave that were still pending after their chunk's load), so that
    they stop being expected. Not while another live run holds an interval overlapping this one: it may register
    rows the source gained after this run read it. Returns how many."""
    others = ledger.leases.live("interval", other_than=holder)
    if any(row.start_ms < end_ms and start_ms < row.end_ms for row in others):
        return 0
    return ledger.messages.withdraw(ledger.messages.pending_between(start_ms, end_ms) - seen_pending)


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
    settled = (done & ~changed) | ((status == MessageStatus.REJECTED) & ~changed) | foreign
    to_send = ~done & ~settled
    return (messages[to_send].assign(status=status[to_send], recorded_hash=recorded_hash[to_send]),
            messages[edits].assign(recorded_hash=recorded_hash[edits]), int(settled.sum()))


def restricted(batch: Batch, conversation_ids: set[str]) -> Batch:
    """The part of a batch that belongs to these conversations."""
    return Batch(batch.conversations.loc[sorted(conversation_ids)],
                 batch.messages[batch.messages["conversation_id"].isin(conversation_ids)], batch.rejects.iloc[0:0])


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
