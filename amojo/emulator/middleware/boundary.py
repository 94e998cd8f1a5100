"""The exception boundary: whatever a request raises is answered in its API's envelope, never as a 500."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from ..envelopes import Render
from ..inputs import ApiError
from ..requestlog import RequestLog
from . import Handler

log = logging.getLogger(__name__)


class ErrorBoundary:
    """An `ApiError` is answered as it says. Any other exception is bad input no check foresaw: it is answered 400
    (⚠️ not 500: amoCRM answers bad data 400), logged, and kept in the state under `where` (a route name or path)."""

    def __init__(self, app: Handler, *, render: Render, where: str, log: RequestLog) -> None:
        self.app, self.render, self.where, self.log = app, render, where, log

    async def __call__(self, request: Request) -> Response:
        try:
            return await self.app(request)
        except ApiError as exc:
            return self.render(exc)
        except Exception as exc:
            return self.render(self._unforeseen(exc))

    def _unforeseen(self, exc: Exception) -> ApiError:
        log.warning("emulator: unforeseen %s in %s", type(exc).__name__, self.where, exc_info=exc)
        self.log.unforeseen(f"{self.where}: {type(exc).__name__}: {str(exc)[:200]}")
        return ApiError(400, f"the request could not be processed ({type(exc).__name__})", "INVALID_REQUEST")
