"""Logs every answer of an API route, before the client can see it (tests read the log as soon as they are
answered)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..requestlog import RequestLog
from . import Handler


class RequestLogging:
    """Records `(time, api, endpoint, status)` of each answer; a dropped connection's status is 0."""

    def __init__(self, app: Handler, *, log: RequestLog, api: str, endpoint: str) -> None:
        self.app, self.log, self.api, self.endpoint = app, log, api, endpoint

    async def __call__(self, request: Request) -> Response:
        response = await self.app(request)
        self.log.record(self.api, self.endpoint, response.status_code)
        return response
