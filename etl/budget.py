"""The account's request budget, shared by every run and worker through a Prefect global concurrency limit.

amoCRM limits an account, not a process: N workers with a limiter each would send N times the rate. A global
concurrency limit whose slots decay at the allowed rate is one budget for all of them. Requests are paid for
`batch` at a time, one round trip to the Prefect server per batch, never per request (prefect-notes.md).
"""

from __future__ import annotations

import asyncio

from .settings import ConfigurationError

CHATS_BATCH = 20
"""Chats API requests paid for at once: the round trip to Prefect is amortised over 20 messages."""
REST_BATCH = 1
"""REST v4 requests are few and its limit is 7/s: a batch of them would let N workers burst past it."""


class SharedBudget:
    """A `Limiter` drawing on the Prefect global concurrency limit `name`, used as a rate limit.

    `strict`: a limit that does not exist stops the run, rather than being skipped silently as Prefect would.
    """

    def __init__(self, name: str, batch: int, setting: str) -> None:
        self.name = name
        self.batch = batch
        self._setting = setting
        self._prepaid = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            if not self._prepaid:
                await self._pay()
                self._prepaid = self.batch
            self._prepaid -= 1

    async def _pay(self) -> None:
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

        try:
            await rate_limit(self.name, occupy=self.batch, strict=True)
        except ConcurrencySlotAcquisitionError as exc:
            raise ConfigurationError(
                f"the Prefect global concurrency limit {self.name!r} ({self._setting}) cannot be used ({exc}); "
                f"create it: prefect gcl create {self.name} --limit REQUESTS_PER_SECOND "
                f"--slot-decay-per-second REQUESTS_PER_SECOND (a limit of at least {self.batch})"
            ) from None
