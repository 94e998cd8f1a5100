"""Lost answers: the handler's effect is stored, then the client sees a 500 or a connection dropped mid-answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..envelopes import amojo_error, rest_problem
from ..injector import Injector
from . import Handler
from .script import SCRIPT_ENTRY


class LostAnswers:
    """Loses a 2xx answer as a `lose` script entry says, else at `lost_answer_rate` on `lost_answer_endpoints`; any
    other answer passes as it is."""

    def __init__(self, app: Handler, *, injector: Injector, api: str, endpoint: str) -> None:
        self.app, self.injector, self.api, self.endpoint = app, injector, api, endpoint

    async def __call__(self, request: Request) -> Response:
        response = await self.app(request)
        if not 200 <= response.status_code < 300:
            return response
        entry = request.scope[SCRIPT_ENTRY]
        mode = entry.get("lose") if entry is not None else self.injector.lost_answer(self.endpoint)
        return response if mode is None else self._lost(mode)

    def _lost(self, mode: str) -> Response:
        """What the client gets instead of the answer: a 500 in the API's envelope, or a dropped connection."""
        if mode == "drop":
            return DroppedConnection()
        if self.api == "amojo":
            return amojo_error(500, "INTERNAL", "internal error")
        return rest_problem(500, "Internal Server Error", "internal error")


class DroppedConnection(Response):
    """Starts an answer and never finishes it: the client sees the connection dropped mid-response.

    Logged with status 0: the client got no answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)
        self.status_code = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        raise ConnectionResetError("emulated dropped connection")
