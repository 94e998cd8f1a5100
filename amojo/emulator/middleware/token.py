"""The REST API's gate: a request without a valid access token is refused 401."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..envelopes import rest_problem
from ..store import Store
from . import Handler


def bearer_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`, or "" when there is none."""
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


class TokenGate:
    """Lets through a request whose bearer token is a usable access token (long-lived or from OAuth)."""

    def __init__(self, app: Handler, *, store: Store) -> None:
        self.app, self.store = app, store

    async def __call__(self, request: Request) -> Response:
        token = bearer_token(request)
        if not token or self.store.token_state(token) != ("access", True):
            return rest_problem(401, "Unauthorized", "Authorization required", code=110)
        return await self.app(request)
