"""Claims: how concurrent runs on one ledger share the work without doing any of it twice.

A run claims its data interval, then each conversation before it creates, links or sends anything for it, and each
client before it finds or creates the client's contact. A claim is a lease in the ledger (`claims` table), renewed
by a heartbeat while the run lives; a run killed mid-way stops renewing, and once its claims expire another run
takes them over and resumes as after any crash: `sending` messages are looked up in the chat history first.

Conversation order across runs: a run registers its messages as `pending` chunk by chunk, in time order, and
publishes how far it has got (the interval claim's frontier); a backfill reserves the days it has not started yet.
A conversation's messages wait while another run may still hold earlier ones of it: its frontier (or a reserved
day) lies between the conversation's opening and them, or it has earlier ones not yet sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from datetime import datetime

from .intervals import Interval
from .ledger import Ledger

log = logging.getLogger(__name__)

ABANDONED_AFTER = 10
"""Claim timeouts after which a dead run's interval, taken over by nobody, stops holding later messages back."""


class ClaimLost(Exception):
    """This run stalled longer than its claims last, and another run took its work over; run the interval again."""


class RunClaims:
    """The claims of one run, kept alive by a heartbeat every third of `ttl_s`, released when the run ends."""

    def __init__(self, ledger: Ledger, ttl_s: float = 60.0, poll_s: float | None = None) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        self.poll_s = poll_s if poll_s is not None else min(0.5, ttl_s / 10)
        self.holder = uuid.uuid4().hex
        self.interval: Interval | None = None
        self._held: set[tuple[str, str]] = set()
        self._lost = False
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunClaims:
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self.ledger.release_claims(self.holder)
        self._held.clear()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            if self._held and self.ledger.renew_claims(self.holder, self.ttl_s) < len(self._held):
                self._lost = True

    def check(self) -> None:
        """Stop the run if another one took over a claim of ours: going on could send a message twice."""
        if self._lost:
            raise ClaimLost(f"this run's claims expired (it stalled for more than {self.ttl_s:.0f} s, see "
                            "AMOJO_ETL_CLAIM_TIMEOUT_S) and another run took its work over; run the interval again")

    def take(self, kind: str, keys: Iterable[str]) -> set[str]:
        """Claim what of `keys` no live run holds; return the keys this run now holds."""
        self.check()
        held = self.ledger.claim(kind, keys, self.holder, self.ttl_s)
        self._held.update((kind, key) for key in held)
        return held

    def release(self, kind: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.ledger.release_claims(self.holder, kind, keys)
        self._held.difference_update((kind, key) for key in keys)

    async def pause(self) -> None:
        """Wait a moment for another run to finish what it holds."""
        await asyncio.sleep(self.poll_s)

    async def turns(self, kind: str, keys: Iterable[str],
                    waiting: Callable[[set[str]], Collection[str]] = lambda keys: ()) -> AsyncIterator[set[str]]:
        """The keys in turns, each turn held by this run while the caller works on it and released after; keys
        another run holds, or that `waiting` says must wait, come in a later turn."""
        remaining = set(keys)
        while remaining:
            turn = remaining.difference(waiting(remaining))
            mine = self.take(kind, turn) if turn else set()
            if not mine:
                await self.pause()
                continue
            try:
                yield mine
            finally:
                self.release(kind, mine)
            remaining -= mine

    # -- the interval
    async def hold_interval(self, interval: Interval) -> None:
        """Claim the data interval, waiting while another live run holds the same one (then it resumes from it)."""
        key = interval_key(interval)
        waited = False
        while True:
            held = self.ledger.claim("interval", [key], self.holder, self.ttl_s, start_ms=interval.start_ms,
                                     end_ms=interval.end_ms, frontier_ms=interval.start_ms)
            if held:
                self._held.add(("interval", key))
                self.interval = interval
                return
            if not waited:
                log.info("interval %s is held by another run; waiting for it to finish, or, if it died, for its "
                         "claim to expire (AMOJO_ETL_CLAIM_TIMEOUT_S, %.0f s)", interval.label, self.ttl_s)
                waited = True
            await self.pause()

    def advance(self, frontier_ms: int) -> None:
        """Publish that every message of this run's interval before `frontier_ms` is registered as pending."""
        assert self.interval is not None
        self.ledger.advance_frontier(self.holder, interval_key(self.interval), frontier_ms)

    def out_of_turn(self, first_unsent: Mapping[str, tuple[int, int]]) -> set[str]:
        """The conversations (conversation_id -> (when it opened, msec of our first message to send)) whose earlier
        messages another run may still send: sending ours now would put them out of time order.

        Another run holds earlier ones back while its interval, or a day a backfill has reserved and not started,
        is not registered between the conversation's opening and our message; or while it has registered
        earlier ones of the conversation that are not sent yet. A run that died counts until its interval is
        taken over, or for ABANDONED_AFTER claim timeouts if nobody does.
        """
        runs = self.ledger.live_claims("interval", other_than=self.holder,
                                       expired_within_s=self.ttl_s * ABANDONED_AFTER)
        reserved = self.ledger.live_claims("reserved", other_than=self.holder)
        if reserved:
            started = {r.key for r in self.ledger.live_claims("interval", expired_within_s=math.inf)}
            finished = {_key(start, end) for start, end in self.ledger.interval_statuses()}
            reserved = [r for r in reserved if r.key.split("#")[0] not in started | finished]
        spans = [(r.start_ms, r.end_ms, r.frontier_ms) for r in runs] + [(r.start_ms, r.end_ms, r.start_ms)
                                                                         for r in reserved]
        if not spans or not first_unsent:
            return set()
        waiting = {conversation for conversation, (opened, msec) in first_unsent.items()
                   if any(max(frontier, opened) < min(end, msec) for _, end, frontier in spans)}
        earlier = self.ledger.earliest_unsent([c for c in first_unsent if c not in waiting],
                                              [(start, end) for start, end, _ in spans])
        return waiting | {c for c, msec in earlier.items() if msec < first_unsent[c][1]}

    # -- a backfill's days
    def reserve(self, days: Iterable[Interval]) -> None:
        """Announce the days a backfill will import, so that runs of later days keep conversation order."""
        for day in days:
            key = f"{interval_key(day)}#{self.holder}"
            self.ledger.claim("reserved", [key], self.holder, self.ttl_s, start_ms=day.start_ms, end_ms=day.end_ms,
                              frontier_ms=day.start_ms)
            self._held.add(("reserved", key))

    def unreserve(self, day: Interval) -> None:
        self.release("reserved", [f"{interval_key(day)}#{self.holder}"])


def interval_key(interval: Interval) -> str:
    """An interval's claim key: its bounds as the `intervals` table keeps them."""
    return _key(interval.start.isoformat(), interval.end.isoformat())


def interval_label(key: str) -> str:
    """The days of an interval claim's key, as runs name them: 2026-10-01..2026-10-02."""
    return "..".join(datetime.fromisoformat(bound).date().isoformat() for bound in key.split("/"))


def _key(start: str, end: str) -> str:
    return f"{start}/{end}"
