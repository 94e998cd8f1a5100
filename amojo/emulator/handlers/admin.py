"""The admin surface for tests and demos (`/_emulator/...`): state, faults, the request log, the clock, reset.

amoCRM has nothing like it; its errors are `{"error": <what was refused>, "detail": <why>}`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import Faults
from ..inputs import ApiError, is_int, obj
from . import Handlers


class AdminHandlers(Handlers):
    """What tests do to the emulator over HTTP; the same as its Python API."""

    async def state(self, request: Request, body: Any) -> Response:
        return JSONResponse(self.emulator.snapshot())

    async def requests(self, request: Request, body: Any) -> Response:
        """The request log, `[time, api, endpoint, status]` each, optionally for one endpoint."""
        return JSONResponse(self.emulator.requests.of(request.query_params.get("endpoint")))

    async def faults(self, request: Request, body: Any) -> Response:
        """The faults in force (POST: replace them, fields as in `Faults`); `script` is what is left of it."""
        injector = self.emulator.injector
        if request.method == "POST":
            try:
                faults = Faults.from_dict(body)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            self.emulator.set_faults(faults)
        return JSONResponse({**asdict(injector.faults), "error_rates": {str(k): v for k, v in
                                                                        injector.faults.error_rates.items()},
                             "script": injector.script_left()})

    async def clock(self, request: Request, body: Any) -> Response:
        """Pretend it is `{"now": "<ISO 8601 with offset>"}`; `{"now": null}`: the real time again."""
        self.emulator.set_clock(_clock_moment(body))
        return JSONResponse({"now": self.emulator.now().isoformat()})

    async def merge_contacts(self, request: Request, body: Any) -> Response:
        """`{"survivor": id, "merged": id}`: merge two contacts as a person in amoCRM does
        (`Emulator.merge_contacts`)."""
        body = _ids(body, ("survivor", "merged"))
        self.emulator.merge_contacts(body["survivor"], body["merged"])
        return JSONResponse({"merged": body["merged"], "survivor": body["survivor"]})

    async def delete_contact(self, request: Request, body: Any) -> Response:
        """`{"id": id}`: delete a contact as a person in amoCRM does (`Emulator.delete_contact`)."""
        body = _ids(body, ("id",))
        self.emulator.delete_contact(body["id"])
        return JSONResponse({"deleted": body["id"]})

    async def reset(self, request: Request, body: Any) -> Response:
        self.emulator.store.reset()
        self.emulator.requests.clear()
        self.emulator.media.reset()
        return JSONResponse({"reset": True})


def _ids(body: Any, names: tuple[str, ...]) -> dict[str, int]:
    """The contact ids an admin request names, or an ApiError 400 saying which is missing or not an integer."""
    body = obj(body, "the request")
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ApiError(400, f"unknown settings: {', '.join(unknown)}; use {', '.join(names)}")
    for name in names:
        if not is_int(body.get(name)):
            raise ApiError(400, f"{name} must be a contact id (an integer), not {body.get(name)!r}")
    return {name: int(body[name]) for name in names}


def _clock_moment(body: Any) -> datetime | None:
    """The moment POST /_emulator/clock asks for, or an ApiError 400 naming what is wrong with it."""
    body = obj(body, "the clock setting")
    unknown = sorted(set(body) - {"now"})
    if unknown:
        raise ApiError(400, f"unknown clock settings: {', '.join(unknown)}; use now")
    if "now" not in body:
        raise ApiError(400, "now is required: an ISO 8601 time with an offset, or null for the real time")
    moment = body["now"]
    if moment is None:
        return None
    try:
        parsed = datetime.fromisoformat(moment) if isinstance(moment, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(400, f"now must be an ISO 8601 time with an offset, not {str(moment)[:60]!r}")
    # ⚠️ our bound: any Date or Retry-After computed from the clock stays a representable datetime
    if not 1971 <= parsed.year <= 9000:
        raise ApiError(400, "now must lie between the years 1971 and 9000")
    return parsed
