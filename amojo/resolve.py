"""The rule that makes every effect in amoCRM happen once: an effect that may have happened is resolved by reading
amoCRM before it is done again.

`resolve` is that rule for every write that is not idempotent by itself: creating contacts, linking chats, and a
message whose repeat amoCRM refused. The transport retries what is safe to send again (`Transport.request`,
`idempotent=True`); what may have landed comes here. Across runs the same rule holds through the ledger: a
request noted as under way (`uncertain`, `sending`) is read back by the next run before it is done again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .errors import AmojoError
from .transport import RetryPolicy

RETRY = RetryPolicy()


def landing_window(timeout_s: float) -> float:
    """How long after it was sent a write whose outcome is unknown may still land: within the request's timeouts
    (connecting and sending, `timeout_s` each), or never. amoCRM may store a write after its gateway answered 504,
    so reading back sooner can miss it, and doing it again would do it twice (issue 25)."""
    return 2 * timeout_s


def _may_have_landed(error: AmojoError) -> bool:
    return error.may_have_landed


async def resolve(
    do: Callable[[], Awaitable[None]],
    read_back: Callable[[], Awaitable[bool]],
    *,
    read_first: bool = False,
    rounds: int = RETRY.attempts,
    settle_s: float = 0.0,
    may_have_landed: Callable[[AmojoError], bool] = _may_have_landed,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AmojoError | None:
    """Do an effect once: `do()` does what is still to do; `read_back()` reads amoCRM for what landed (the caller
    keeps it) and says whether nothing is left to do.

    After an error of `do()` that `may_have_landed`, wait the API's backoff, read back, and do only what is left.
    A read that fails for a passing reason is read again after the backoff, never answered by doing again. At most
    `rounds` waits in all. Returns None when all is done, else the error that stopped it: one of `do()` that says
    nothing landed, a read that failed, or the last one when the rounds ran out (what may have landed is then still
    unknown, and the caller keeps it so for the next run). With `read_first`, amoCRM is read before the first try.
    `settle_s`: how long after it was sent a `do()` that may have landed can still land (`landing_window`); its
    read-back waits that long, so that a late commit is found rather than done again.
    """
    error: AmojoError | None = None
    waits = 0
    reading = read_first
    while True:
        if reading:
            try:
                if await read_back():
                    return None
            except AmojoError as exc:
                if not exc.retryable or waits >= rounds:
                    return exc
                error = exc
                waits += 1
                await sleep(RETRY.delay(waits, exc))
                continue
        if waits >= rounds and error is not None:
            return error
        sent = time.monotonic()
        try:
            await do()
            return None
        except AmojoError as exc:
            if not may_have_landed(exc):
                return exc
            error = exc
        waits += 1
        await sleep(max(RETRY.delay(waits, error), sent + settle_s - time.monotonic()))
        reading = True
