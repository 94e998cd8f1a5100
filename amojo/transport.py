"""What both API clients share: one serialisation of the body, answer -> error mapping, retries, rate limit."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from .errors import (
    AccessDenied,
    AccountBlocked,
    AmojoError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Redirected,
    Refused,
    SignatureRejected,
    Transient,
    Unauthorized,
)


def dump_body(payload: Any) -> bytes:
    """Serialise once; these bytes are what is hashed, signed and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a failed request again, and after how long.

    Backoff is exponential with full jitter, unless the API says how long to wait (`Retry-After`, in seconds or as
    an HTTP date): that is honoured up to `retry_after_cap` seconds a time. A 429 is retried for as long as the
    request's `patience` lasts, however many attempts that takes (the account's budget is a reason to wait, not to
    fail); other retryable answers at most `attempts` times, within the same patience. A request that reached no
    server at all (the connection refused, no such host) is sent again only when `unreachable` says so.
    """

    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0
    retry_after_cap: float = 300.0
    patience: float = 900.0
    unreachable: bool = True
    """Whether to try again a request no server took: a run waits out a restart of amoCRM, while the check before
    a run says at once that the host or port is wrong (a definitive answer, like a 401 or a 404)."""

    def delay(self, attempt: int, error: AmojoError) -> float:
        """The backoff, or what the API asked for when that is longer (a `Retry-After: 0` repeated does not make
        a tight loop)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        backoff = random.uniform(ceiling / 2, ceiling)
        if error.retry_after is not None:
            return max(min(error.retry_after, self.retry_after_cap), backoff)
        return backoff

    def again(self, attempt: int, error: AmojoError, waited: float, delay: float) -> bool:
        """Whether to send the request once more, `delay` seconds from now, having spent `waited` on it so far."""
        if not error.retryable or waited + delay > self.patience:
            return False
        if not self.unreachable and _unreached(error):
            return False
        return isinstance(error, RateLimited) or attempt < self.attempts


def _unreached(error: AmojoError) -> bool:
    """No server took the request, in this attempt or an earlier one: no status, and nothing may have landed."""
    return isinstance(error, Transient) and error.status is None and not error.may_have_landed


class Limiter(Protocol):
    """Something that lets one request go when the budget allows: an in-process bucket, or a budget shared by
    every process of the account."""

    async def acquire(self) -> None: ...


class TokenBucket:
    """At most `rate` requests per second, bursts up to `burst`, shared by every coroutine, event loop and thread
    that holds it: each request reserves its moment to go under a thread lock, then waits for it on its own loop
    (the generic cell rate algorithm)."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self._next = time.monotonic()  # when the next request may go if none is saved up
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next slot; return how many seconds from now it comes."""
        interval = 1 / self.rate
        with self._lock:
            now = time.monotonic()
            at = max(self._next, now)
            self._next = at + interval
        return max(0.0, at - now - (self.capacity - 1) * interval)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait:
            await asyncio.sleep(wait)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait per the answer's `Retry-After`: a number of seconds, or an HTTP date (RFC 9110 §10.2.3),
    counted from the answer's own `Date` when it has one, so that our clock's error does not matter."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        try:
            now = email.utils.parsedate_to_datetime(response.headers["Date"])
        except (KeyError, TypeError, ValueError):
            now = datetime.now(UTC)
        # asctime dates and a -0000 zone parse without a zone: they are in UTC (RFC 9110 §5.6.7).
        when, now = (moment if moment.tzinfo else moment.replace(tzinfo=UTC) for moment in (when, now))
        seconds = (when - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _reason(response: httpx.Response) -> tuple[str, int | str | None]:
    """The API's own words for an error: amojo's envelope, REST's problem+json, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:300] or response.reason_phrase), None
    if isinstance(body, Mapping):
        if "error_description" in body or "error_type" in body:
            text = f"{body.get('error_type', '')}: {body.get('error_description', '')}".strip(": ")
            return text, body.get("error_code")
        if "validation-errors" in body:
            details = [
                f"{e.get('path')}: {e.get('detail')}"
                for item in body["validation-errors"]
                for e in item.get("errors", [])
            ]
            return "; ".join(details) or str(body.get("detail", "")), body.get("status")
        if "detail" in body or "title" in body:
            return str(body.get("detail") or body.get("title")), body.get("status")
    return json.dumps(body, ensure_ascii=False)[:300], None


def error_for(response: httpx.Response, api: str) -> AmojoError:
    """Map a non-2xx answer to the named error the caller can act on."""
    status = response.status_code
    reason, code = _reason(response)
    where = f"{api} {response.request.method} {response.request.url.path}"
    if status == 403 and ("ORIGIN_INVALID_SIGNATURE" in reason or api == "amojo"):
        return SignatureRejected(
            f"{where}: the Chats API rejected the request signature ({reason}). Check "
            "AMOJO_ETL_CHANNEL_SECRET (the channel secret, not the OAuth client secret) and that this "
            "machine's clock is right: a Date more than 15 minutes off is refused.",
            status=status,
            code=code,
        )
    if 300 <= status < 400:
        return Redirected(
            f"{where}: {status} redirect to {response.headers.get('Location', 'elsewhere')}: the base URL is not "
            "the API's; check AMOJO_ETL_AMOJO_URL and AMOJO_ETL_AMOCRM_URL (https, the account's own host)",
            status=status)
    if status == 401:
        return Unauthorized(
            f"{where}: 401 unauthorised ({reason}). Check AMOJO_ETL_AMOCRM_TOKEN: it is missing, "
            "expired or revoked.",
            status=status,
            code=code,
        )
    if status == 403 and response.headers.get("Content-Type", "").startswith("text/html"):
        # amoCRM's nginx page, not the API: the account is blocked (§5.2). Its own 403s (code 113) are JSON.
        return AccountBlocked(
            f"{where}: 403 with an HTML page: amoCRM has blocked the account for exceeding its REST limit (7 "
            "requests/s per account) again and again. Stopped rather than retrying into the block: wait for it to "
            "lift (amoCRM does not say how long), then run again with a lower AMOJO_ETL_REST_RATE, or with "
            "AMOJO_ETL_SHARED_REST_RATE_LIMIT when several runs or workers share the account.",
            status=status)
    if status in (402, 403):
        return AccessDenied(f"{where}: {status} access denied ({reason})", status=status, code=code)
    if status == 429:
        return RateLimited(f"{where}: 429 rate limited", status=status, retry_after=retry_after(response))
    if status == 404:
        return NotFound(f"{where}: 404 not found ({reason})", status=status, code=code)
    if status in (408, 425):
        # Request Timeout, Too Early: the server did not act on the request; send it again.
        return Transient(f"{where}: {status} {reason}", status=status, code=code, retry_after=retry_after(response))
    if status in (400, 413, 414, 415, 422):
        return InvalidRequest(f"{where}: {status} {reason}", status=status, code=code)
    if 400 <= status < 500:
        return Refused(f"{where}: {status} {reason}", status=status, code=code)
    # A 5xx may come after the server acted on the request.
    return Transient(f"{where}: {status} {reason}", status=status, code=code, retry_after=retry_after(response),
                     uncertain=True)


def connection_pool(max_connections: int) -> httpx.AsyncBaseTransport:
    """The HTTP transport under both clients: aiohttp's connection pool, which costs a fraction of the CPU of
    httpcore's with many connections open (bench/load_throughput.py prints both); the client API stays httpx."""
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport(limits=httpx.Limits(max_connections=max_connections,
                                                max_keepalive_connections=max_connections))


def _never_sent(exc: httpx.TransportError) -> bool:
    """Whether nothing of the request can have reached the server: no connection could be made (refused,
    unresolvable host, none free in the pool, not an http URL)."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout, a server that dropped the connection
        # after taking the request too: only aiohttp's connector errors mean the request never left.
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.InvalidURL)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.UnsupportedProtocol)


def _unanswered(exc: httpx.TransportError, where: str) -> Transient:
    """A request without an answer: uncertain unless it never left."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc  # aiohttp's own error says what happened
    what = "timed out" if isinstance(cause, TimeoutError | httpx.TimeoutException) else "connection failed"
    return Transient(f"{where}: {what} ({type(cause).__name__})", uncertain=not _never_sent(exc))


class Transport:
    """Sends JSON requests through one `httpx.AsyncClient` with rate limits and retries.

    Every attempt, retries included, passes each of `limiters` in turn (what a retry sends counts too), then each
    of `guards` (a run that lost its claims must not send). A request that is not `idempotent` is sent again only
    after answers that say nothing was done (429, 408, 425, no connection); after an uncertain one it is left to
    the caller, who reads amoCRM to learn what happened before sending anything again (`amojo.resolve`).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        api: str,
        *,
        retry: RetryPolicy | None = None,
        limiters: Sequence[Limiter] = (),
    ) -> None:
        self.client = client
        self.api = api
        self.retry = retry or RetryPolicy()
        self.limiters = tuple(limiters)
        self.guards: list[Callable[[], None]] = []
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One logical call: the body serialised once, re-signed and re-sent on each retryable failure."""
        content = dump_body(json_body) if json_body is not None else b""
        where = f"{self.api} {method} {path}"
        spent = 0.0  # on this request: its attempts, the rate limit and the waits between them
        attempt = 0
        landed = False
        while True:
            attempt += 1
            waited_at = time.monotonic()
            for limiter in self.limiters:
                await limiter.acquire()
            spent += time.monotonic() - waited_at
            for guard in self.guards:
                guard()
            sent_at = time.monotonic()
            try:
                response = await self.client.request(method, path, content=content, params=params)
            except httpx.TransportError as exc:
                error: AmojoError = _unanswered(exc, where)
            else:
                if response.is_success:
                    return response
                error = error_for(response, self.api)
            spent += time.monotonic() - sent_at
            landed = landed or error.uncertain
            error.attempts = attempt
            error.may_have_landed = landed
            delay = self.retry.delay(attempt, error)
            if (error.uncertain and not idempotent) or not self.retry.again(attempt, error, spent, delay):
                raise error
            await self.sleep(delay)
            spent += delay
