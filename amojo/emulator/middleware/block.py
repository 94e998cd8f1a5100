"""The account block (amojo-api.md §5.2): an account that overruns the REST limit again and again is blocked, and
amoCRM's nginx answers every REST request 403 with an HTML page, not the API's JSON, until the block lifts."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import Handler

NGINX_403 = ("<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1>"
             "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


class AccountBlock:
    """The account's overruns of the REST limit: `after` of them within `window_s` seconds block it for `seconds`
    (`after` 0: never). Timed by the emulator's clock, so that a test can move past a block."""

    def __init__(self, *, after: int, window_s: float, seconds: float, now: Callable[[], datetime]) -> None:
        self.after, self.window, self.length, self.now = after, timedelta(seconds=window_s), \
            timedelta(seconds=seconds), now
        self.overruns: deque[datetime] = deque()
        self.until: datetime | None = None

    def overrun(self) -> None:
        """Count one request refused 429 by the rate limit; the one that makes `after` within the window blocks."""
        if not self.after:
            return
        now = self.now()
        self.overruns.append(now)
        while self.overruns and self.overruns[0] <= now - self.window:
            self.overruns.popleft()
        if len(self.overruns) >= self.after:
            self.until, self.overruns = now + self.length, deque()

    def blocked(self) -> bool:
        return self.until is not None and self.now() < self.until


class BlockGate:
    """Answers every request of a blocked account 403 with nginx's HTML page, before the token is looked at."""

    def __init__(self, app: Handler, *, block: AccountBlock) -> None:
        self.app, self.block = app, block

    async def __call__(self, request: Request) -> Response:
        if self.block.blocked():
            return HTMLResponse(NGINX_403, status_code=403)
        return await self.app(request)
