"""The random faults before any effect: latency and jitter, hangs that end in 504, and error statuses."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..injector import Injector
from . import Handler
from .script import SCRIPT_ENTRY


class InjectedFaults:
    """Waits the drawn latency, then hangs or answers the drawn error; a request a script entry decides gets the
    latency only."""

    def __init__(self, app: Handler, *, injector: Injector) -> None:
        self.app, self.injector = app, injector

    async def __call__(self, request: Request) -> Response:
        injection = self.injector.before_effect(random_faults=request.scope[SCRIPT_ENTRY] is None)
        if injection.delay_s:
            await asyncio.sleep(injection.delay_s)
        if injection.hang_s is not None:
            await asyncio.sleep(injection.hang_s)
            return Response(status_code=504)
        status = injection.error_status
        if not status:
            return await self.app(request)
        headers = self.injector.retry_after(status)
        if status == 429:
            return Response(status_code=429, headers=headers, content=b"")
        body = {"status": 0, "error_code": status, "error_type": "INTERNAL", "error_description": "fault"}
        return JSONResponse(body, status_code=status, headers=headers)
