"""Claims: how concurrent runs on one ledger share the work without doing any of it twice.

A run claims its data interval, then each conversation before it creates, links or sends anything for it, and each
client before it finds or creates the client's contact. A claim is a lease in the ledger (`claims` table), renewed
by a heartbeat while the run lives; a run killed mid-way stops renewing, and once its claims expire another run
takes them over and resumes as after any crash: `sending` messages are looked up in the chat history first.

The lease rule: claims expire by the ledger database's clock, never a worker's own; and the holder counts its lease
from before its last successful claim or renewal by its own monotonic clock, doing nothing more for its claims once
less than its margin (a sixth of the lease, or the longest a request can last, up to a third) is left, whether or
not the heartbeat managed to run.

Conversation order across runs: a run registers its messages as `pending` chunk by chunk, in time order, and
publishes how far it has got (the interval claim's frontier); a backfill reserves the days it has not started yet.
A conversation's messages wait while another run may still hold earlier ones of it: its frontier (or a reserved
day) lies between the conversation's opening and them, or it has earlier ones not yet sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from datetime import datetime

from .intervals import Interval
from .ledger import Ledger

log = logging.getLogger(__name__)

ABANDONED_AFTER = 10
"""Claim timeouts after which a dead run's interval, taken over by nobody, stops holding later messages back."""

RENEW_EVERY = 1 / 3
"""Of the lease (`ttl_s`): how often the heartbeat renews the claims."""
RETRY_EVERY = 1 / 10
"""Of the lease: how soon a renewal that failed (the ledger did not answer) is tried again."""
MARGIN = 1 / 6
"""Of the lease: how much of it must be left for the run to go on, at least; more when a request can last
longer (`request_s`), up to a third of the lease. A renewal is due with two thirds left, so failed ones get retries
before the run stops; the margin itself covers the time from `check` to the side effect it guards (a request under
way) and any drift between this machine's and the database's clock."""


class ClaimLost(Exception):
    """This run could not keep its claims (it stalled, or the ledger did not answer, for longer than they last), and
    another run may have taken its work over; run the interval again."""


class RunClaims:
    """The claims of one run, kept alive by a heartbeat every third of `ttl_s`, released when the run ends."""

    def __init__(self, ledger: Ledger, ttl_s: float = 60.0, poll_s: float | None = None,
                 request_s: float = 0.0) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        # A request that passed `check` may take up to `request_s` to land: the lease must outlast it.
        self.margin_s = min(max(ttl_s * MARGIN, request_s), ttl_s / 3)
        self.poll_s = poll_s if poll_s is not None else min(0.5, ttl_s / 10)
        self.holder = uuid.uuid4().hex
        self.interval: Interval | None = None
        self._held: set[tuple[str, str]] = set()
        self._lost = False
        self._deadline = math.inf  # time.monotonic() by which every claim in _held has expired, at the earliest
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunClaims:
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the heartbeat and give up every claim, whatever happened to the run or to the heartbeat."""
        heartbeat, self._heartbeat = self._heartbeat, None
        try:
            if heartbeat is not None:
                heartbeat.cancel()
                try:
                    await heartbeat
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # this run itself is being cancelled: release, then let it go
                except Exception as error:  # noqa: BLE001 - a dead heartbeat must not hide the run's own outcome
                    log.warning("the claims heartbeat had stopped (%s)", type(error).__name__)
        finally:
            try:
                self.ledger.leases.release(self.holder)
            except Exception as error:  # noqa: BLE001 - unreleased claims expire by themselves
                log.warning("could not release this run's claims (%s); other runs can take them in %.0f s, "
                            "when they expire", type(error).__name__, self.ttl_s)
            self._held.clear()
            self._deadline = math.inf

    async def _beat(self) -> None:
        """Renew the claims every third of the lease; after a failure, again soon, never giving up."""
        pause = self.ttl_s * RENEW_EVERY
        while True:
            await asyncio.sleep(pause)
            pause = self.ttl_s * RENEW_EVERY
            if not self._held:
                continue
            began = time.monotonic()
            try:
                renewed = self.ledger.leases.renew(self.holder, self.ttl_s)
            except Exception as error:  # noqa: BLE001 - a database blip: check() stops the run if it lasts
                pause = self.ttl_s * RETRY_EVERY
                log.warning("could not renew this run's claims (%s); retrying in %.1f s, %.1f s of the lease left",
                            type(error).__name__, pause, self._deadline - time.monotonic())
                continue
            if renewed < len(self._held):
                self._lost = True  # another run took one over while the lease had run out
            else:
                self._deadline = began + self.ttl_s

    @property
    def lost(self) -> bool:
        """Whether this run may no longer hold its claims: another run took one over, or too little of the lease
        is left (by this machine's monotonic clock) to go on safely."""
        return self._lost or (bool(self._held) and time.monotonic() > self._deadline - self.margin_s)

    def check(self) -> None:
        """Stop the run if its claims are gone or about to expire: going on could send a message twice."""
        if self._lost:
            raise ClaimLost(f"this run's claims expired (it stalled for more than {self.ttl_s:.0f} s, see "
                            "AMOJO_ETL_CLAIM_TIMEOUT_S) and another run took its work over; run the interval again")
        if self.lost:
            raise ClaimLost(f"this run could not renew its claims in time (its event loop stalled, or the ledger "
                            f"did not answer, for most of their {self.ttl_s:.0f} s lease, see "
                            "AMOJO_ETL_CLAIM_TIMEOUT_S): another run may take its work over; run the interval again")

    def _claim(self, kind: str, keys: Iterable[str], **span: int) -> set[str]:
        """Claim `keys` in the ledger, and count the lease of what this run holds from before the request."""
        began = time.monotonic()
        held = self.ledger.leases.claim(kind, keys, self.holder, self.ttl_s, **span)
        if held:
            if not self._held:
                self._deadline = began + self.ttl_s  # claims held before keep their own, earlier, expiry
            self._held.update((kind, key) for key in held)
        return held

    def take(self, kind: str, keys: Iterable[str]) -> set[str]:
        """Claim what of `keys` no live run holds; return the keys this run now holds."""
        self.check()
        return self._claim(kind, keys)

    def release(self, kind: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.ledger.leases.release(self.holder, kind, keys)
        self._held.difference_update((kind, key) for key in keys)

    async def pause(self) -> None:
        """Wait a moment for another run to finish what it holds; a random moment, so that two runs each taking
        half of what the other wants (`turns`) do not keep meeting."""
        await asyncio.sleep(self.poll_s * random.uniform(0.5, 1.5))

    async def turns(self, kind: str, items: Iterable[str] | Mapping[str, Collection[str]],
                    waiting: Callable[[set[str]], Collection[str]] = lambda items: ()) -> AsyncIterator[set[str]]:
        """The items in turns, each turn's items held by this run while the caller works on them and released after;
        items another run holds, or that `waiting` says must wait, come in a later turn.

        An item is claimed by its own key, or, given a mapping, by every key it maps to: it comes in a turn only
        once this run holds all of them (what it holds of an item it cannot have yet is let go at once, so that
        two runs never hold each other's half).
        """
        remaining = {item: set(keys) for item, keys in items.items()} if isinstance(items, Mapping) else \
            {item: {item} for item in items}
        while remaining:
            turn = set(remaining).difference(waiting(set(remaining)))
            held = self.take(kind, set().union(*(remaining[item] for item in turn))) if turn else set()
            mine = {item for item in turn if remaining[item] <= held}
            keys = set().union(*(remaining[item] for item in mine))
            if held - keys:
                self.release(kind, held - keys)
            if not mine:
                await self.pause()
                continue
            try:
                yield mine
            finally:
                self.release(kind, keys)
            for item in mine:
                del remaining[item]

    # -- the interval
    async def hold_interval(self, interval: Interval) -> None:
        """Claim the data interval, waiting while another live run holds the same one (then it resumes from it)."""
        key = interval_key(interval)
        waited = False
        while True:
            if self._claim("interval", [key], start_ms=interval.start_ms, end_ms=interval.end_ms,
                           frontier_ms=interval.start_ms):
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
        self.ledger.leases.advance_frontier(self.holder, interval_key(self.interval), frontier_ms)

    def out_of_turn(self, first_unsent: Mapping[str, tuple[int, int]]) -> set[str]:
        """The conversations (conversation_id -> (when it opened, msec of our first message to send)) whose earlier
        messages another run may still send: sending ours now would put them out of time order.

        Another run holds earlier ones back while its interval, or a day a backfill has reserved and not started,
        is not registered between the conversation's opening and our message; or while it has registered
        earlier ones of the conversation that are not sent yet. A run that died counts until its interval is
        taken over, or for ABANDONED_AFTER claim timeouts if nobody does.
        """
        runs = self.ledger.leases.live("interval", other_than=self.holder,
                                       expired_within_s=self.ttl_s * ABANDONED_AFTER)
        reserved = self.ledger.leases.live("reserved", other_than=self.holder)
        if reserved:
            started = {r.key for r in self.ledger.leases.live("interval", expired_within_s=math.inf)}
            finished = {_key(start, end) for start, end in self.ledger.intervals.statuses()}
            reserved = [r for r in reserved if r.key.split("#")[0] not in started | finished]
        spans = [(r.start_ms, r.end_ms, r.frontier_ms) for r in runs] + [(r.start_ms, r.end_ms, r.start_ms)
                                                                         for r in reserved]
        if not spans or not first_unsent:
            return set()
        waiting = {conversation for conversation, (opened, msec) in first_unsent.items()
                   if any(max(frontier, opened) < min(end, msec) for _, end, frontier in spans)}
        earlier = self.ledger.messages.earliest_unsent([c for c in first_unsent if c not in waiting],
                                              [(start, end) for start, end, _ in spans])
        return waiting | {c for c, msec in earlier.items() if msec < first_unsent[c][1]}

    # -- a backfill's days
    def reserve(self, days: Iterable[Interval]) -> None:
        """Announce the days a backfill will import, so that runs of later days keep conversation order."""
        for day in days:
            key = f"{interval_key(day)}#{self.holder}"
            self._claim("reserved", [key], start_ms=day.start_ms, end_ms=day.end_ms, frontier_ms=day.start_ms)

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
