"""Refuses a body larger than `max_body_bytes` with 413, as nginx in front of amoCRM does."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..inputs import ApiError
from . import Handler


class BodyLimit:
    """Reads the body, or raises a 413 past `max_bytes`: checked on Content-Length first, so it is never read."""

    def __init__(self, app: Handler, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, request: Request) -> Response:
        most = self.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > most:
            raise ApiError(413, f"the body is larger than {most} bytes", "PAYLOAD_TOO_LARGE")
        body = await request.body()  # kept by the Request for the layers below
        if len(body) > most:
            raise ApiError(413, f"the body is larger than {most} bytes", "PAYLOAD_TOO_LARGE")
        return await self.app(request)
