"""The emulator's URL map: every route with its handler, and the middleware each API's routes are wrapped in.

Outermost first: the request log, the exception boundary, the body limit, the API's gate (the Chats API's signature,
REST's account block and token) and rate limit, then the faults (the script, random faults before any effect, late
commits, lost answers after it).
The pages of amoCRM's view (`views`) take none of it: they are for people, not an API of amoCRM's.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .config import ENDPOINTS
from .envelopes import Render, admin_render, amojo_render, rest_render
from .handlers.admin import AdminHandlers
from .handlers.chats import ChatsHandlers
from .handlers.messages import MessagesHandlers
from .handlers.rest import RestHandlers
from .inputs import ApiError, parse_json
from .middleware import Handler, stack
from .middleware.block import AccountBlock, BlockGate
from .middleware.bodylimit import BodyLimit
from .middleware.boundary import ErrorBoundary
from .middleware.faults import InjectedFaults
from .middleware.latecommits import LateCommits
from .middleware.log import RequestLogging
from .middleware.lostanswers import LostAnswers
from .middleware.ratelimit import RateBucket, RateLimit
from .middleware.script import ScriptedFaults
from .middleware.signature import SignatureGate
from .middleware.token import TokenGate, bearer_token
from .views import view_routes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .app import Emulator

    BodyHandler = Callable[[Request, Any], Awaitable[Response]]

BASE = "/v2/origin/custom"
LEGACY_SIGNED = ("connect", "disconnect", "message")  # the methods the pre-2019 signature covered (§2.3)


def routes(emulator: Emulator) -> list[Route]:
    """Every route of the emulator. Route names are what faults name (config.ENDPOINTS, which also holds each
    route's methods)."""
    chats, messages = ChatsHandlers(emulator), MessagesHandlers(emulator)
    rest, admin = RestHandlers(emulator), AdminHandlers(emulator)
    chats_api: list[tuple[str, BodyHandler, str]] = [
        (f"{BASE}/{{channel_id}}/connect", chats.connect, "connect"),
        (f"{BASE}/{{channel_id}}/disconnect", chats.disconnect, "disconnect"),
        (f"{BASE}/{{scope_id}}/chats", chats.create_chat, "create_chat"),
        (f"{BASE}/{{scope_id}}/chats/{{chat_id}}/history", messages.history, "history"),
        (f"{BASE}/{{scope_id}}/typing", chats.typing, "typing"),
        (f"{BASE}/{{scope_id}}/react", messages.react, "react"),
        (f"{BASE}/{{scope_id}}/{{msg_id}}/delivery_status", messages.delivery_status, "delivery_status"),
        (f"{BASE}/{{scope_id}}", messages.message_event, "message"),
    ]
    rest_api: list[tuple[str, BodyHandler, str]] = [
        ("/api/v4/account", rest.account, "account"),
        ("/api/v4/users", rest.users, "users"),
        ("/api/v4/contacts", rest.contacts, "contacts"),
        ("/api/v4/contacts/chats", rest.contact_chats, "contacts_chats"),
        ("/oauth2/access_token", rest.oauth_token, "oauth"),
    ]
    admin_api: list[tuple[str, BodyHandler, list[str], str]] = [
        ("/_emulator/state", admin.state, ["GET"], "invalid request"),
        ("/_emulator/faults", admin.faults, ["GET", "POST"], "invalid faults"),
        ("/_emulator/requests", admin.requests, ["GET"], "invalid request"),
        ("/_emulator/clock", admin.clock, ["POST"], "invalid clock"),
        ("/_emulator/reset", admin.reset, ["POST"], "invalid request"),
        ("/_emulator/contacts/merge", admin.merge_contacts, ["POST"], "invalid merge"),
        ("/_emulator/contacts/delete", admin.delete_contact, ["POST"], "invalid delete"),
    ]
    assert sorted(n for _, _, n in chats_api + rest_api) == sorted(ENDPOINTS)
    middleware = ApiMiddleware(emulator)
    api = [(path, handler, name, middleware.chats(name)) for path, handler, name in chats_api]
    api += [(path, handler, name, middleware.rest(name)) for path, handler, name in rest_api]
    built = [Route(path, _endpoint(handler, layers), methods=list(ENDPOINTS[name]), name=name)
             for path, handler, name, layers in api]
    built += [Route(path, _endpoint(handler, middleware.admin(path, label)), methods=methods)
              for path, handler, methods, label in admin_api]
    return built + view_routes(emulator)  # pages for people: none of the APIs' middleware


class ApiMiddleware:
    """The middleware lists of each API's routes, sharing the emulator's state (and the rate buckets)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.buckets: dict[str, RateBucket] = {}
        config = emulator.config
        self.block = AccountBlock(after=config.rest_block_after, window_s=config.rest_block_window_s,
                                  seconds=config.rest_block_s, now=lambda: emulator.now())

    def chats(self, endpoint: str) -> list[Middleware]:
        emulator, config = self.emulator, self.emulator.config
        gate = [  # the clock is looked up at each request: a test stops it by replacing `now`
            Middleware(SignatureGate, config=config, now=lambda: emulator.now(),
                       legacy=config.legacy_signatures and endpoint in LEGACY_SIGNED),
            Middleware(RateLimit, rate=config.amojo_rate, key=lambda request: "amojo", buckets=self.buckets),
        ]
        return self._api("amojo", endpoint, amojo_render, gate)

    def rest(self, endpoint: str) -> list[Middleware]:
        gate = [  # the OAuth endpoint is how a token is had: it takes none
            Middleware(BlockGate, block=self.block),  # nginx's, before the API looks at the token
            Middleware(TokenGate, store=self.emulator.store),
            Middleware(RateLimit, rate=self.emulator.config.rest_rate,
                       key=lambda request: f"rest:{bearer_token(request)}", buckets=self.buckets, block=self.block),
        ] if endpoint != "oauth" else []
        return self._api("rest", endpoint, rest_render, gate)

    def _api(self, api: str, endpoint: str, render: Render, gate: list[Middleware]) -> list[Middleware]:
        emulator, injector = self.emulator, self.emulator.injector
        return [
            Middleware(RequestLogging, log=emulator.requests, api=api, endpoint=endpoint),
            Middleware(ErrorBoundary, render=render, where=endpoint, log=emulator.requests),
            Middleware(BodyLimit, max_bytes=emulator.config.max_body_bytes),
            *gate,
            Middleware(ScriptedFaults, injector=injector, api=api, endpoint=endpoint),
            Middleware(InjectedFaults, injector=injector),
            Middleware(LateCommits, injector=injector, api=api, endpoint=endpoint),
            Middleware(LostAnswers, injector=injector, api=api, endpoint=endpoint),
        ]

    def admin(self, path: str, label: str) -> list[Middleware]:
        """The admin surface: bad input is a 400 `{"error": label, "detail"}`, never a 500; no gate, no faults."""
        return [
            Middleware(ErrorBoundary, render=partial(admin_render, label=label), where=path,
                       log=self.emulator.requests),
            Middleware(BodyLimit, max_bytes=self.emulator.config.max_body_bytes),
        ]


def _endpoint(handler: BodyHandler, middleware: list[Middleware]) -> Handler:
    """A Starlette endpoint: `handler` given the body as JSON, inside `middleware`."""

    async def with_json(request: Request) -> Response:
        return await handler(request, parse_json(await request.body()))

    app = stack(with_json, middleware)

    async def endpoint(request: Request) -> Response:  # a function, so that Starlette hands it the Request
        return await app(request)

    return endpoint


def _render_for(path: str) -> Render:
    """The error renderer of the API a path belongs to."""
    if path.startswith(BASE):
        return amojo_render
    if path.startswith(("/api/", "/oauth2/")):
        return rest_render
    return admin_render


async def routing_error(request: Request, exc: Exception) -> Response:
    """An unknown path (404) or method (405), in the envelope of the API the path belongs to."""
    status = exc.status_code if isinstance(exc, HTTPException) else 400
    description = {404: "no such endpoint", 405: "method not allowed"}.get(status, str(exc))
    error_type = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "INVALID_REQUEST")
    response = _render_for(request.url.path)(ApiError(status, description, error_type))
    if isinstance(exc, HTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response
