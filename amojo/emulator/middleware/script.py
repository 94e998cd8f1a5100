"""One-shot faults from `Faults.script`: a status answered before any effect, or an answer to lose after it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..envelopes import rest_problem, status_title
from ..injector import Injector
from . import Handler

# Where the entry a request took (a `lose` one, or None) is left for the layers below; a scope key rather than
# `request.state`, which costs a dozen calls a request.
SCRIPT_ENTRY = "amojo.emulator.script_entry"


class ScriptedFaults:
    """Uses up the first script entry for this endpoint and method. A `status` entry is answered here; a `lose`
    entry is left under `SCRIPT_ENTRY` for `InjectedFaults` (no random fault then) and `LostAnswers`."""

    def __init__(self, app: Handler, *, injector: Injector, api: str, endpoint: str) -> None:
        self.app, self.injector, self.api, self.endpoint = app, injector, api, endpoint

    async def __call__(self, request: Request) -> Response:
        entry = self.injector.take_script(self.endpoint, request.method)
        request.scope[SCRIPT_ENTRY] = entry
        if entry is not None and "status" in entry:
            return self._status(entry)
        return await self.app(request)

    def _status(self, entry: dict) -> Response:
        """A script entry's status in the API's own error envelope."""
        status = entry["status"]
        headers = {"Retry-After": entry["retry_after"]} if "retry_after" in entry else \
            self.injector.retry_after(status)
        if status in (204, 304):
            return Response(status_code=status, headers=headers)
        if self.api == "amojo":
            body = {"status": 0, "error_code": status, "error_type": "FAULT", "error_description": f"injected {status}"}
            return JSONResponse(body, status_code=status, headers=headers)
        response = rest_problem(status, status_title(status), "injected")
        response.headers.update(headers)
        return response
