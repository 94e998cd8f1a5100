"""The server's rate limit: a request over it is refused 429 with Retry-After in seconds, and counted towards the
account's block (`block.AccountBlock`) when there is one."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import Handler
from .block import NGINX_403, AccountBlock


class RateBucket:
    """Server-side token bucket: `rate` per second, bursts of `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(max(1, math.floor(rate)))
        self.capacity = self.tokens
        self.updated = time.monotonic()

    def take(self) -> float | None:
        """None when allowed; otherwise the seconds to wait."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


class RateLimit:
    """`rate` requests a second (None: no limit) per bucket; `key` names a request's bucket (the Chats API has
    one, REST one per token). `buckets` are shared by every route that draws on them, as is `block`, which counts
    the overruns."""

    def __init__(self, app: Handler, *, rate: float | None, key: Callable[[Request], str],
                 buckets: dict[str, RateBucket], block: AccountBlock | None = None) -> None:
        self.app, self.rate, self.key, self.buckets, self.block = app, rate, key, buckets, block

    async def __call__(self, request: Request) -> Response:
        if self.rate:
            wait = self.buckets.setdefault(self.key(request), RateBucket(self.rate)).take()
            if wait is not None:
                if self.block is not None:
                    self.block.overrun()
                    if self.block.blocked():  # this overrun was the last straw
                        return HTMLResponse(NGINX_403, status_code=403)
                return Response(
                    status_code=429,
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    content=json.dumps({"title": "Too Many Requests", "status": 429, "detail": "rate limit exceeded"}),
                    media_type="application/problem+json",
                )
        return await self.app(request)
