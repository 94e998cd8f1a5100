"""What one load works with, held together: the API, the ledger, the run's claims, the report it fills in, and how
many conversations send at once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from typing import Any

from amojo.errors import FATAL, AmojoError
from etl.api import Api
from etl.claims import RunClaims
from etl.ledger import Ledger


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
    replies_quoted: int = 0  # replies sent quoting the message they answer
    quotes_dropped: Counter = field(default_factory=Counter)  # replies sent without their quote, by reason
    quarantined: dict[str, str] = field(default_factory=dict)  # conversation_id -> reason
    stopped: dict[str, str] = field(default_factory=dict)  # conversation_id -> the error that stopped it

    def add(self, other: LoadReport) -> None:
        """Fold another chunk's report into this one."""
        for counter in fields(self):
            mine = getattr(self, counter.name)
            if isinstance(mine, int):
                setattr(self, counter.name, mine + getattr(other, counter.name))
            else:  # the Counter and the dicts
                mine.update(getattr(other, counter.name))

    def stop(self, conversation_id: str, error: AmojoError) -> None:
        """This conversation goes no further in this run; the next run resumes it from the ledger. An error that
        concerns the whole run (credentials, signature) stops it all."""
        if isinstance(error, FATAL):
            raise error
        self.stopped.setdefault(conversation_id, str(error))


@dataclass
class LoadContext:
    api: Api
    ledger: Ledger
    claims: RunClaims
    report: LoadReport
    concurrency: int = 32


async def bounded(limit: int, jobs: list[Coroutine[Any, Any, Any]]) -> list[Any]:
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
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return [task.result() for task in tasks]
