"""Replies: whether a message quotes the one it answers (amoCRM's `reply_to`, by our msgid, §3.4), or goes without
the quote, and why.

amoCRM takes a quote only of a message already in the same chat, so a message is quoted when the ledger (or this
conversation's send, before it records) has it sent in the same conversation. A message of attachments alone is
quoted by its first attachment. Otherwise the reply goes unquoted, and the run counts why: `not_in_chat` (another
conversation's), `not_sent_yet` (later, or still unsent), `rejected` (amoCRM refused its data) or `unknown` (the
ledger holds no such message: not in the source, rejected there, or of an interval not run yet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from etl.ledger import DONE, Ledger, MessageStatus

from .context import LoadReport

_PART = re.compile(r"#(\d+)$")


@dataclass(frozen=True)
class Quote:
    """What a reply quotes (`msgid`), or why it quotes nothing (`dropped`); neither for a message that answers none."""

    msgid: str | None = None
    dropped: str | None = None

    def count(self, report: LoadReport) -> None:
        """Count the quote, sent or dropped, once its message is sent."""
        if self.msgid is not None:
            report.replies_quoted += 1
        elif self.dropped is not None:
            report.quotes_dropped[self.dropped] += 1


def quote_of(ledger: Ledger, message: Any, outcomes: list[dict[str, Any]]) -> Quote:
    """The quote of `message` (a batch row with `reply_to`, our msgid of the message it answers); `outcomes`: the
    ledger rows this conversation's send has found so far and not yet recorded."""
    wanted = getattr(message, "reply_to", None)
    if not isinstance(wanted, str) or not wanted:
        return Quote()
    sent_here = {row["msgid"] for row in outcomes if row.get("status") == MessageStatus.SENT}
    if wanted in sent_here:
        return Quote(wanted)
    state = ledger.messages.states([wanted]).get(wanted)
    if state is None:  # a message of attachments alone: its first attachment
        here = sorted((m for m in sent_here if m.startswith(f"{wanted}#")), key=_part_order)
        if here:
            return Quote(here[0])
        parts = ledger.messages.parts_of(wanted)
        if not parts:
            return Quote(dropped="unknown")
        wanted = min(parts, key=_part_order)
        state = parts[wanted]
    if state.conversation_id != message.conversation_id:
        return Quote(dropped="not_in_chat")
    if state.status in DONE:
        return Quote(wanted)
    return Quote(dropped="rejected" if state.status == MessageStatus.REJECTED else "not_sent_yet")


def _part_order(msgid: str) -> tuple[int, int, str]:
    """Attachments in id order, numbers by their value (as the transform orders them)."""
    number = _PART.search(msgid)
    return (0, int(number.group(1)), msgid) if number else (1, 0, msgid)
