"""The emulator's middleware: one job each, stacked per route from a list of `starlette.middleware.Middleware`.

Like Starlette's own, a middleware is a class built around the next layer with its options (`cls(app, **options)`),
but a layer takes the `Request` and returns a `Response` instead of speaking raw ASGI: the faults replace, delay and
lose whole answers, and the one `Request` of a request keeps its body, read once for the size limit, the signature
and the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]


def stack(handler: Handler, middleware: Sequence[Middleware]) -> Handler:
    """`handler` wrapped in `middleware`, the first of the list outermost (as Starlette orders it)."""
    app = handler
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app
