"""Days imported as child runs of the run that asks for them: a backfill's days, and a reconcile's or an audit's
repairs. Each is an `import-chats` run of its own, with its own state, artifacts and ledger record.

The one module of flows/ that starts another flow: the flows themselves import no other flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from prefect.states import State

from etl.errors import RunError
from etl.intervals import Interval
from etl.ledger import Ledger, MessageStatus
from etl.settings import Settings
from etl.summary import RunSummary

from .import_chats import import_chats
from .outcome import child_run_tags, summary_of

log = logging.getLogger(__name__)


async def import_day(day: Interval, dry_run: bool = False) -> tuple[State, RunSummary | None]:
    """Import `day` as a child run; its final state, and its summary (None when it failed before it had one)."""
    state = await import_chats(start=day.start.date(), end=day.start.date() + timedelta(days=1), dry_run=dry_run,
                               return_state=True)
    summary = await summary_of(state)
    return state, summary if isinstance(summary, RunSummary) else None


async def repair_day(settings: Settings, ledger: Ledger, day: Interval, missing: Iterable[str],
                     changed: Iterable[str]) -> RunSummary:
    """Send what amoCRM lost and edit what it holds with other content, by importing the day again (a run of its
    own, with this run's tags); the day's new import summary. Marked failed, a message is first looked up in the
    chat, then sent if it is not there; one marked changed is edited."""
    missing = list(missing)
    if (moved := ledger.messages.mark(missing, MessageStatus.FAILED)) < len(missing):
        log.warning("%d of the %d messages missing in amoCRM were not marked to be sent again: never sent (pending: "
                    "the import sends them), or another run changed their status since (rejected for their data)",
                    len(missing) - moved, len(missing))
    ledger.messages.mark_needs_edit(changed)
    with child_run_tags(settings):
        state, redone = await import_day(day)
    if redone is None:
        raise RunError(f"the repair of {day.label} failed: {state.message}")
    return redone
