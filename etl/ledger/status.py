"""A message's states in the ledger, and the moves between them: the one place that says what each status means.

    pending ──> sending ──> sent <──> confirmed
     │  ▲         │  ▲        ▲  │
     ▼  │         ▼  │        │  ▼  (found in the chat's history / lost by amoCRM)
    deleted      failed ──────┘
    sending / failed ──> rejected ──> sending (amoCRM refused the data; sent again once the source changes it)

`sending` is written before a message's request and `sent` after its answer, so a `sending` (or `failed`) message
may have landed: it is looked up in the chat history before it is sent again. A sent message whose content in
amoCRM is not the source's is flagged `needs_edit`: the next run edits it.

Nothing of a `pending` or `deleted` message has been sent (`MOVABLE`): its row follows the source. A corrected
time or conversation moves it, a row gone from its interval's source is `deleted` (no longer expected), and one that
comes back is `pending` again. From `sending` on, amoCRM may hold the message, and its place is fixed; a run that
stops before a `sending` message's request (a failure earlier in its conversation) puts it back to `pending`.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    PENDING = "pending"  # registered from the source, nothing sent yet
    SENDING = "sending"  # its request is under way, or was when a run died: it may have landed
    SENT = "sent"  # amoCRM accepted it (or the chat's history shows it)
    CONFIRMED = "confirmed"  # reconcile found it in the chat's history, once, with the source's text
    REJECTED = "rejected"  # amoCRM refused its data; sent again only once the source changes it
    FAILED = "failed"  # its request failed; it may have landed, and is looked up before it is sent again
    DELETED = "deleted"  # gone from the source before anything of it was sent: not expected in amoCRM


TRANSITIONS: dict[MessageStatus, frozenset[MessageStatus]] = {
    MessageStatus.PENDING: frozenset({MessageStatus.SENDING, MessageStatus.SENT, MessageStatus.DELETED}),
    MessageStatus.DELETED: frozenset({MessageStatus.PENDING}),
    MessageStatus.SENDING: frozenset({MessageStatus.SENT, MessageStatus.CONFIRMED, MessageStatus.FAILED,
                                      MessageStatus.REJECTED, MessageStatus.PENDING}),
    MessageStatus.FAILED: frozenset({MessageStatus.SENDING, MessageStatus.SENT, MessageStatus.CONFIRMED,
                                     MessageStatus.REJECTED}),
    MessageStatus.REJECTED: frozenset({MessageStatus.SENDING}),
    MessageStatus.SENT: frozenset({MessageStatus.CONFIRMED, MessageStatus.FAILED}),
    MessageStatus.CONFIRMED: frozenset({MessageStatus.SENT, MessageStatus.FAILED}),
}
"""Status -> the statuses it may move to. A message that may have landed becomes `sent` (or `confirmed`) once the
chat's history shows it; reconcile's repair marks a message amoCRM lost `failed`, to be looked up and sent again
(never a `pending` one: nothing of it was sent, and the day's import sends it); an edit keeps a message `sent`."""

DONE = frozenset({MessageStatus.SENT, MessageStatus.CONFIRMED})
"""Messages amoCRM holds: never sent again, edited when the source changes them."""
UNSENT = frozenset(MessageStatus) - DONE - {MessageStatus.REJECTED, MessageStatus.DELETED}
"""Messages still to send, in order: a conversation's later messages wait for them."""
UNCERTAIN = UNSENT - {MessageStatus.PENDING}
"""Messages that may have landed: the chat's history is read before they are sent again."""
MOVABLE = frozenset({MessageStatus.PENDING, MessageStatus.DELETED})
"""Messages nothing of which was sent: their row follows the source (another time, another conversation, gone)."""

NEEDS_EDIT_HASH = 0
"""The content hash the ledger keeps for a sent message flagged `needs_edit`: no content hashes to it, so the next
run sees the source's content as changed and edits the message. Kept in the hash column, so older workers on the
same ledger read the flag the same way."""


def allowed(before: MessageStatus | str, after: MessageStatus | str) -> bool:
    """Whether a message may move from `before` to `after` (staying put is always allowed)."""
    return before == after or MessageStatus(after) in TRANSITIONS[MessageStatus(before)]
