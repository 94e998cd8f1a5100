"""Late commits: a write answered 504 at once whose effect is stored a while later, as when a gateway gives up on
amoCRM while amoCRM goes on (issue 25)."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from ..envelopes import amojo_error, rest_problem
from ..injector import Injector
from . import Handler
from .script import SCRIPT_ENTRY

log = logging.getLogger(__name__)


class LateCommits:
    """Answers 504 and runs the request (its effect, not its answer) `late_ms` later, as a `late_ms` script entry
    says, else at `late_commit_rate` on `late_commit_endpoints`; any other request passes as it is."""

    def __init__(self, app: Handler, *, injector: Injector, api: str, endpoint: str) -> None:
        self.app, self.injector, self.api, self.endpoint = app, injector, api, endpoint
        self._pending: set[asyncio.Task[None]] = set()  # held, so that a late commit is not collected unfinished

    async def __call__(self, request: Request) -> Response:
        entry = request.scope[SCRIPT_ENTRY]
        late_s = entry["late_ms"] / 1000 if entry is not None and "late_ms" in entry else \
            self.injector.late_commit(self.endpoint, request.method) if entry is None else None
        if late_s is None:
            return await self.app(request)
        await request.body()  # read now: the connection is answered, and gone, before the effect is stored
        task = asyncio.create_task(self._commit(request, late_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if self.api == "amojo":
            return amojo_error(504, "GATEWAY_TIMEOUT", "gateway timeout")
        return rest_problem(504, "Gateway Timeout", "gateway timeout")

    async def _commit(self, request: Request, late_s: float) -> None:
        await asyncio.sleep(late_s)
        try:
            await self.app(request)
        except Exception:  # noqa: BLE001 - nobody waits for this answer; the effect is what matters
            log.exception("a late commit of %s failed", self.endpoint)
