"""What both API clients share: one serialisation of the body, answer -> error mapping, retries, rate limit."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from .errors import (
    AccessDenied,
    AmojoError,
    InvalidRequest,
    NotFound,
    RateLimited,
    SignatureRejected,
    Transient,
    Unauthorized,
)


def dump_body(payload: Any) -> bytes:
    """Serialise once; these bytes are what is hashed, signed and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; honours `Retry-After` when the API gives one."""

    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int, error: AmojoError) -> float:
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.max_delay * 3)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class Limiter(Protocol):
    """Something that lets one request go when the budget allows: an in-process bucket, or a budget shared by
    every process of the account."""

    async def acquire(self) -> None: ...


class TokenBucket:
    """An in-process token bucket: at most `rate` requests per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


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
    if status == 401:
        return Unauthorized(
            f"{where}: 401 unauthorised ({reason}). Check AMOJO_ETL_AMOCRM_TOKEN: it is missing, "
            "expired or revoked.",
            status=status,
            code=code,
        )
    if status in (402, 403):
        return AccessDenied(f"{where}: {status} access denied ({reason})", status=status, code=code)
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:
            seconds = None
        return RateLimited(f"{where}: 429 rate limited", retry_after=seconds)
    if status == 404:
        return NotFound(f"{where}: 404 not found ({reason})", status=status, code=code)
    if 400 <= status < 500:
        return InvalidRequest(f"{where}: {status} {reason}", status=status, code=code)
    return Transient(f"{where}: {status} {reason}", status=status, code=code)


class Transport:
    """Sends JSON requests through one `httpx.AsyncClient` with rate limits and retries.

    Every attempt, retries included, passes each of `limiters` in turn: what a retry sends counts too.
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

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """One logical call: the body serialised once, re-signed and re-sent on each retryable failure."""
        content = dump_body(json_body) if json_body is not None else b""
        attempt = 0
        while True:
            attempt += 1
            for limiter in self.limiters:
                await limiter.acquire()
            try:
                response = await self.client.request(method, path, content=content, params=params)
            except httpx.TimeoutException as exc:
                error: AmojoError = Transient(f"{self.api} {method} {path}: timed out ({type(exc).__name__})")
            except httpx.TransportError as exc:
                error = Transient(f"{self.api} {method} {path}: connection failed ({type(exc).__name__})")
            else:
                if response.is_success:
                    return response
                error = error_for(response, self.api)
            if not (retry and error.retryable and attempt < self.retry.attempts):
                error.attempts = attempt  # a refusal after a retry may be about a request that did land
                raise error
            await asyncio.sleep(self.retry.delay(attempt, error))
