"""The emulated amoCRM as an ASGI app: the Chats API, the REST v4 subset, and an admin surface for tests.

Behaviour follows amojo-api.md; where it is marked ⚠️, the §9 default is used and the alternative is a switch in
`EmulatorConfig`. Nothing here is shaped after our own client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import ENDPOINTS, EmulatorConfig, Faults
from .inputs import (
    TIMESTAMP_MAX,
    ApiError,
    boolean,
    embedded_message,
    external_id,
    integer,
    is_int,
    message_body,
    obj,
    parse_json,
    participant,
    query_int,
    string,
)
from .store import Store, derived_id, digits
from .verify import BadSignature, verify

log = logging.getLogger(__name__)

BASE = "/v2/origin/custom"
UNHANDLED_KEPT = 50  # the last unforeseen exceptions shown in /_emulator/state

# The validation helpers under the names the transform's tests use to hold payloads to the emulator's reading.
_participant = participant
_message_body = message_body


def amojo_error(status: int, error_type: str, description: str, code: int | None = None) -> JSONResponse:
    """The amojo envelope (§5.1), used for every amojo error (Q7)."""
    body = {"status": 0, "error_code": code or status, "error_type": error_type, "error_description": description}
    return JSONResponse(body, status_code=status)


def _amojo_render(exc: ApiError) -> Response:
    return amojo_error(exc.status, exc.error_type or "INVALID_REQUEST", exc.description, exc.code)


def _rest_render(exc: ApiError) -> Response:
    try:
        title = HTTPStatus(exc.status).phrase
    except ValueError:
        title = "Error"
    return rest_problem(exc.status, title, exc.description, **exc.extra)


def _admin_render(exc: ApiError, label: str = "invalid request") -> Response:
    """The admin surface's own envelope: `{"error": <what was refused>, "detail": <why>}`."""
    return JSONResponse({"error": label, "detail": exc.description}, status_code=exc.status)


def rest_problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _render_for(path: str):
    """The error renderer of the API a path belongs to."""
    if path.startswith(BASE):
        return _amojo_render
    if path.startswith(("/api/", "/oauth2/")):
        return _rest_render
    return _admin_render


def hal(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type="application/hal+json")


class RateBucket:
    """Server-side token bucket: `rate` per second, bursts of `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(max(1, math.floor(rate)))
        self.capacity = self.tokens
        self.updated = time.monotonic()

    def take(self) -> float | None:
        """None when allowed; otherwise the seconds to wait."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


class Emulator:
    """One emulated account: its config, state, faults, clock and request log. Also the Python API for tests."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.store = Store(self.config.state_path)
        self.faults = self.config.faults
        self._rng = random.Random(self.faults.seed)
        self._script_lock = threading.Lock()
        self._script: list[dict] = [dict(entry) for entry in self.faults.script]  # what is left of it
        self._clock_offset = timedelta(0)
        self._buckets: dict[str, RateBucket] = {}
        self._log_lock = threading.Lock()
        self.request_log: list[tuple[float, str, str, int]] = []  # (time, api, endpoint, status)
        # Exceptions no validation foresaw, answered 400 by the boundary; a robustness test expects none.
        self.unhandled: list[str] = []
        for user_token in (self.config.token,):
            self.store.put_token(user_token, "access")
        if self.config.oauth_refresh_token and not self.store.token_state(self.config.oauth_refresh_token):
            self.store.put_token(self.config.oauth_refresh_token, "refresh")
        self.app = Starlette(routes=self._routes(), exception_handlers={HTTPException: self._routing_error})

    # -- the Python API for tests
    @property
    def scope_id(self) -> str:
        return f"{self.config.channel_id}_{self.config.account_id}"

    def now(self) -> datetime:
        return datetime.now(UTC) + self._clock_offset

    def set_clock(self, moment: datetime | None) -> None:
        """Pretend it is `moment` (None: the real time), e.g. to accept the official vectors' Dates."""
        self._clock_offset = timedelta(0) if moment is None else moment - datetime.now(UTC)

    def set_faults(self, faults: Faults) -> None:
        with self._script_lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self._script = [dict(entry) for entry in faults.script]

    def script_left(self) -> list[dict]:
        """The script entries not used up yet, each with the uses it has left."""
        with self._script_lock:
            return [dict(entry) for entry in self._script]

    def request_counts(self) -> dict[str, int]:
        """Requests by `api endpoint status`."""
        with self._log_lock:
            return dict(Counter(f"{api} {endpoint} {status}" for _, api, endpoint, status in self.request_log))

    def snapshot(self) -> dict[str, Any]:
        chats = self.store.chats()
        return {
            "scope_id": self.scope_id,
            "chats": chats,
            "messages": {chat["id"]: self.store.chat_messages(chat["id"]) for chat in chats},
            "contacts": self.store.contacts(),
            "links": self.store.links(),
            "leads": self.store.leads(),
            "notifications": self.store.notifications(),
            "participants": self.store.participants(),
            "conversation_aliases": self.store.conversation_aliases(),
            "reactions": self.store.reactions(),
            "request_counts": self.request_counts(),
            "unhandled": list(self.unhandled),
        }

    # -- routing
    def _routes(self) -> list[Route]:
        # Route names are what faults name (config.ENDPOINTS, which also holds each route's methods).
        chats_api = [
            (f"{BASE}/{{channel_id}}/connect", self.connect, "connect"),
            (f"{BASE}/{{channel_id}}/disconnect", self.disconnect, "disconnect"),
            (f"{BASE}/{{scope_id}}/chats", self.create_chat, "create_chat"),
            (f"{BASE}/{{scope_id}}/chats/{{chat_id}}/history", self.history, "history"),
            (f"{BASE}/{{scope_id}}/typing", self.typing, "typing"),
            (f"{BASE}/{{scope_id}}/react", self.react, "react"),
            (f"{BASE}/{{scope_id}}/{{msg_id}}/delivery_status", self.delivery_status, "delivery_status"),
            (f"{BASE}/{{scope_id}}", self.message_event, "message"),
        ]
        rest_api = [
            ("/api/v4/account", self.account, "account"),
            ("/api/v4/users", self.users, "users"),
            ("/api/v4/contacts", self.contacts, "contacts"),
            ("/api/v4/contacts/chats", self.contact_chats, "contacts_chats"),
            ("/oauth2/access_token", self.oauth_token, "oauth"),
        ]
        assert sorted(n for _, _, n in chats_api + rest_api) == sorted(ENDPOINTS)
        routes = [Route(p, self._endpoint("amojo", h, n), methods=list(ENDPOINTS[n]), name=n) for p, h, n in chats_api]
        routes += [Route(p, self._endpoint("rest", h, n), methods=list(ENDPOINTS[n]), name=n) for p, h, n in rest_api]
        admin = [
            ("/_emulator/state", self.admin_state, ["GET"], "invalid request"),
            ("/_emulator/faults", self.admin_faults, ["GET", "POST"], "invalid faults"),
            ("/_emulator/requests", self.admin_requests, ["GET"], "invalid request"),
            ("/_emulator/clock", self.admin_clock, ["POST"], "invalid clock"),
            ("/_emulator/reset", self.admin_reset, ["POST"], "invalid request"),
        ]
        routes += [Route(p, self._admin_endpoint(h, label), methods=m) for p, h, m, label in admin]
        return routes

    async def _routing_error(self, request: Request, exc: Exception) -> Response:
        """An unknown path (404) or method (405), in the envelope of the API the path belongs to."""
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        description = {404: "no such endpoint", 405: "method not allowed"}.get(status, str(exc))
        error_type = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "INVALID_REQUEST")
        response = _render_for(request.url.path)(ApiError(status, description, error_type))
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        return response

    def _unforeseen(self, where: str, exc: Exception) -> ApiError:
        """The exception boundary: any exception a handler lets out is bad input no check foresaw. It is answered
        400 in the API's envelope (⚠️ not 500: amoCRM answers bad data 400), logged and kept in the state."""
        log.warning("emulator: unforeseen %s in %s", type(exc).__name__, where, exc_info=exc)
        with self._log_lock:
            self.unhandled.append(f"{where}: {type(exc).__name__}: {str(exc)[:200]}")
            del self.unhandled[:-UNHANDLED_KEPT]
        return ApiError(400, f"the request could not be processed ({type(exc).__name__})", "INVALID_REQUEST")

    async def _read_body(self, request: Request) -> bytes:
        """The body, or a 413 past `max_body_bytes` (checked on Content-Length first, so it is never read)."""
        most = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > most:
            raise ApiError(413, f"the body is larger than {most} bytes", "PAYLOAD_TOO_LARGE")
        body = await request.body()
        if len(body) > most:
            raise ApiError(413, f"the body is larger than {most} bytes", "PAYLOAD_TOO_LARGE")
        return body

    def _admin_endpoint(self, handler, label: str):
        """An admin route behind the same boundary: bad input is a 400 `{"error": label, "detail"}`, never a 500."""

        async def admin_fn(request: Request) -> Response:
            try:
                return await handler(request, parse_json(await self._read_body(request)))
            except ApiError as exc:
                return _admin_render(exc, label)
            except Exception as exc:  # the boundary: see _unforeseen
                return _admin_render(self._unforeseen(request.url.path, exc), label)

        return admin_fn

    def _log(self, api: str, endpoint: str, status: int) -> None:
        with self._log_lock:
            self.request_log.append((time.time(), api, endpoint, status))

    async def _inject(self, random_faults: bool = True) -> Response | None:
        """Latency, and (unless a script entry decides this request) hangs and errors before any effect, drawn
        from the seeded generator."""
        f = self.faults
        delay = f.latency_ms + (self._rng.uniform(0, f.jitter_ms) if f.jitter_ms else 0.0)
        hang = random_faults and f.hang_rate and self._rng.random() < f.hang_rate
        error_status = None
        for status, rate in sorted(f.error_rates.items()) if random_faults else ():
            if rate and self._rng.random() < rate:
                error_status = status
                break
        if delay:
            await asyncio.sleep(delay / 1000)
        if hang:
            await asyncio.sleep(f.hang_seconds)
            return Response(status_code=504)
        headers = self._retry_after_header(error_status)
        if error_status == 429:
            return Response(status_code=429, headers=headers, content=b"")
        if error_status:
            body = {"status": 0, "error_code": error_status, "error_type": "INTERNAL", "error_description": "fault"}
            return JSONResponse(body, status_code=error_status, headers=headers)
        return None

    def _retry_after_header(self, status: int | None) -> dict[str, str]:
        """Retry-After for an injected 429 or 503, in the form `Faults.retry_after` asks for."""
        f = self.faults
        if status not in (429, 503) or f.retry_after == "none":
            return {}
        if f.retry_after == "seconds":
            return {"Retry-After": str(math.ceil(f.retry_after_s))}
        moment = self.now() + timedelta(seconds=f.retry_after_s)
        whole = moment.replace(microsecond=0)
        if whole < moment:
            whole += timedelta(seconds=1)
        return {"Retry-After": format_datetime(whole.astimezone(UTC), usegmt=True)}

    def _take_script(self, endpoint: str, method: str) -> dict | None:
        """Use up one use of the first script entry for this endpoint and method; None when none matches."""
        with self._script_lock:
            for index, entry in enumerate(self._script):
                if entry["endpoint"] == endpoint and entry.get("method", method) == method:
                    entry["times"] -= 1
                    if entry["times"] <= 0:
                        del self._script[index]
                    return dict(entry)
        return None

    def _scripted_status(self, api: str, entry: dict) -> Response:
        """A script entry's status, before any effect, in the API's own error envelope."""
        status = entry["status"]
        headers = {"Retry-After": entry["retry_after"]} if "retry_after" in entry else \
            self._retry_after_header(status)
        if status in (204, 304):
            return Response(status_code=status, headers=headers)
        if api == "amojo":
            body = {"status": 0, "error_code": status, "error_type": "FAULT", "error_description": f"injected {status}"}
            return JSONResponse(body, status_code=status, headers=headers)
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        response = rest_problem(status, title, "injected")
        response.headers.update(headers)
        return response

    def _rate_limited(self, key: str, rate: float | None) -> Response | None:
        if not rate:
            return None
        bucket = self._buckets.setdefault(key, RateBucket(rate))
        wait = bucket.take()
        if wait is None:
            return None
        return Response(
            status_code=429,
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            content=json.dumps({"title": "Too Many Requests", "status": 429, "detail": "rate limit exceeded"}),
            media_type="application/problem+json",
        )

    def _endpoint(self, api: str, handler, endpoint: str):
        """Wrap a handler: the API's gate (signature, or token and rate), injected faults, JSON, errors, the log."""
        gate = self._amojo_gate if api == "amojo" else self._rest_gate
        render = _amojo_render if api == "amojo" else _rest_render

        async def endpoint_fn(request: Request) -> Response:
            try:
                response = await answer(request)
            except ApiError as exc:
                response = render(exc)
            except Exception as exc:  # the boundary: see _unforeseen
                response = render(self._unforeseen(endpoint, exc))
            self._log(api, endpoint, response.status_code)
            return response

        async def answer(request: Request) -> Response:
            body = await self._read_body(request)
            response = await gate(request, body, endpoint)
            entry = None
            if response is None:
                entry = self._take_script(endpoint, request.method)
                if entry is not None and "status" in entry:
                    response = self._scripted_status(api, entry)
                else:
                    response = await self._inject(random_faults=entry is None)
            if response is None:
                try:
                    response = await handler(request, parse_json(body))
                except ApiError as exc:
                    response = render(exc)
                if 200 <= response.status_code < 300:
                    if entry is not None:
                        response = self._lose(api, entry["lose"])
                    elif endpoint in self.faults.lost_answer_endpoints:
                        response = self._maybe_lose(api, response)
            return response

        return endpoint_fn

    async def _amojo_gate(self, request: Request, body: bytes, endpoint: str) -> Response | None:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        try:
            verify(
                secret=self.config.channel_secret,
                method=request.method,
                path=raw_path.split(b"?", 1)[0].decode("latin-1"),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                now=self.now(),
                tolerance_s=self.config.date_tolerance_s,
                strict_md5=self.config.content_md5 == "strict",
                legacy=self.config.legacy_signatures and endpoint in ("connect", "disconnect", "message"),
            )
        except BadSignature:
            return amojo_error(403, "ORIGIN_INVALID_SIGNATURE", "invalid signature")
        return self._rate_limited("amojo", self.config.amojo_rate)

    async def _rest_gate(self, request: Request, body: bytes, endpoint: str) -> Response | None:
        if endpoint != "oauth":
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not token or self.store.token_state(token) != ("access", True):
                return rest_problem(401, "Unauthorized", "Authorization required", code=110)
            limited = self._rate_limited(f"rest:{token}", self.config.rest_rate)
            if limited is not None:
                return limited
        return None

    def _maybe_lose(self, api: str, response: Response) -> Response:
        """A "lost answer" at `lost_answer_rate`: the effect is stored, then the client sees a 500 or a dropped
        connection."""
        f = self.faults
        if not (f.lost_answer_rate and self._rng.random() < f.lost_answer_rate):
            return response
        mode = f.lost_answer_mode if f.lost_answer_mode != "mixed" else self._rng.choice(["500", "drop"])
        return self._lose(api, mode)

    def _lose(self, api: str, mode: str) -> Response:
        """What the client gets instead of an answer: a 500 in the API's envelope, or a dropped connection."""
        if mode == "drop":
            return _DroppedConnection()
        if api == "amojo":
            return amojo_error(500, "INTERNAL", "internal error")
        return rest_problem(500, "Internal Server Error", "internal error")

    def _scope_or_404(self, request: Request) -> str:
        scope_id = request.path_params["scope_id"]
        if scope_id != self.scope_id or not self.store.is_connected(scope_id):
            raise ApiError(404, "scope not found or channel not connected", "SCOPE_NOT_FOUND")
        return scope_id

    @property
    def _by_ref(self) -> bool:
        """Whether a participant may be given by `ref_id` alone (`ref_id_participants`, ⚠️)."""
        return self.config.ref_id_participants == "accept"

    # -- Chats API (§3)
    async def connect(self, request: Request, body: Any) -> Response:
        if request.path_params["channel_id"] != self.config.channel_id:
            raise ApiError(404, "channel does not exist", "CHANNEL_NOT_FOUND")
        body = obj(body)
        account_id = string(body, "account_id", required=True)
        version = body.get("hook_api_version", "v1")
        if not isinstance(version, str) or version not in ("v1", "v2"):
            raise ApiError(400, "hook_api_version must be v1 or v2", "INVALID_HOOK_API_VERSION")
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not allowed for this channel", "ACCOUNT_NOT_ALLOWED")
        title = string(body, "title") or "amojo emulator channel"
        time_window_disabled = boolean(body, "is_time_window_disabled") or False  # §3.1: default false
        self.store.connect(self.scope_id, account_id, title, version)
        # §3.1's response table lists is_time_window_disabled; clients read it from every answer.
        return JSONResponse({"account_id": account_id, "scope_id": self.scope_id, "title": title,
                             "hook_api_version": version, "is_time_window_disabled": time_window_disabled})

    async def disconnect(self, request: Request, body: Any) -> Response:
        if request.path_params["channel_id"] != self.config.channel_id:
            raise ApiError(404, "channel does not exist", "CHANNEL_NOT_FOUND")
        account_id = string(obj(body), "account_id", required=True)
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not connected to this channel", "ACCOUNT_NOT_ALLOWED")
        self.store.disconnect(self.scope_id)
        return Response(status_code=200)

    async def create_chat(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        body = obj(body)
        conversation_id = string(body, "conversation_id", required=True)
        given = participant(body.get("user"), "user", by_ref=self._by_ref)
        if body.get("source") is not None:
            external_id(body["source"])
        client = self._client(scope_id, given, "user")
        chat, _ = self.store.create_chat(scope_id, conversation_id, self._chat_user(given, client))
        self._remember(scope_id, client)
        # An existing chat keeps its client (idempotent on conversation_id, §3.3).
        user = self._participant_out(scope_id, self._chat_client_id(chat), chat["user"], {})
        return JSONResponse({"id": chat["id"], "user": user})

    # -- participants: one record per amojo user (what history shows), from what requests said about them
    def _updated(self, record: dict, given: dict) -> dict:
        """`record` with what `given` says of the participant, as `participant_updates` (⚠️) has it."""
        profile = given.get("profile") or {}
        said = {"name": given.get("name"), "avatar": given.get("avatar"), "profile_link": given.get("profile_link"),
                "phone": profile.get("phone") or given.get("phone"),  # Q12: `profile`, or flat as AMO-REF has it
                "email": profile.get("email") or given.get("email")}
        out = dict(record)
        for key, value in said.items():
            if value is not None and (self.config.participant_updates == "merge" or out.get(key) in (None, "")):
                out[key] = value
        return out

    def _client(self, scope_id: str, given: dict, where: str) -> dict:
        """The client a participant names: by `ref_id` (its amojo id), else by `id` (ours)."""
        ref_id = given.get("ref_id")
        if ref_id:
            known = self.store.participant(scope_id, ref_id)
            if known is not None and known["kind"] == "client":
                return self._updated(known, given)
        if given.get("id"):
            amojo_id = derived_id("user", scope_id, given["id"])
            known = self.store.participant(scope_id, amojo_id)
            return self._updated(known or {"amojo_id": amojo_id, "kind": "client", "client_id": given["id"]}, given)
        raise ApiError(400, f"{where}.id is required: {where}.ref_id {ref_id!r} is no client of this channel",
                       "PARTICIPANT_NOT_FOUND")

    def _manager(self, scope_id: str, given: dict) -> dict:
        """The amoCRM side of an outgoing message: a user by its amojo_id, or the channel bot (§4.3)."""
        ref_id = given.get("ref_id")
        if not ref_id:
            raise ApiError(400, "outgoing message without sender.ref_id", "SENDER_REF_ID_REQUIRED", code=453)
        user = next((u for u in self.config.users if u.amojo_id == ref_id), None)
        if self.config.check_ref_id and user is None and ref_id != self.config.bot_id:
            raise ApiError(400, "sender.ref_id is neither a user's amojo_id nor the bot", "UNKNOWN_REF_ID")
        kind = "bot" if ref_id == self.config.bot_id else "user"
        record = self._updated(self.store.participant(scope_id, ref_id) or {"amojo_id": ref_id, "kind": kind}, given)
        if user is not None:
            record["name"] = user.name  # ⚠️ amoCRM shows its own user's name, whatever the message called them
        return record

    def _remember(self, scope_id: str, record: dict) -> None:
        if self.store.participant(scope_id, record["amojo_id"]) != record:
            self.store.put_participant(scope_id, record["amojo_id"], record)

    @staticmethod
    def _chat_user(given: dict, client: dict) -> dict:
        """The chat's client as stored with the chat: what was sent, with our id even when sent by ref_id."""
        return {**given, "id": client["client_id"], "name": given.get("name", client.get("name") or "")}

    def _chat_client_id(self, chat: dict) -> str:
        return derived_id("user", chat["scope_id"], chat["user"].get("id") or "")

    def _participant_out(self, scope_id: str, amojo_id: str | None, sent: dict, cache: dict[str, dict]) -> dict:
        """A participant as amojo answers, from its one record (the same in every message); `sent`, the payload
        stored with a message, only for messages stored before records were kept."""
        record = None
        if amojo_id:
            if amojo_id not in cache:
                cache[amojo_id] = self.store.participant(scope_id, amojo_id)  # type: ignore[assignment]
            record = cache[amojo_id]
        if record is None:
            record = _record_from_payload(scope_id, sent)
        if record["kind"] != "client":
            return {"id": record["amojo_id"], "name": record.get("name") or ""}
        out = {"id": record["amojo_id"], "client_id": record.get("client_id"), "name": record.get("name") or "",
               "avatar": record.get("avatar") or ""}
        if record.get("phone") and digits(record["phone"]):
            out["phone"] = digits(record["phone"])
        if record.get("email"):
            out["email"] = record["email"]
        return out

    # -- messages (§3.4)
    async def message_event(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        body = obj(body)
        event_type = body.get("event_type")
        payload = obj(body.get("payload"), "payload")
        if event_type == "new_message":
            return self._new_message(scope_id, payload)
        if event_type == "edit_message":
            return self._edit_message(scope_id, payload)
        raise ApiError(400, "event_type must be new_message or edit_message", "INVALID_EVENT_TYPE")

    def _chat_for(self, scope_id: str, conversation_id: str | None, conversation_ref_id: str | None) -> dict | None:
        """The chat a message goes to: the amojo chat `conversation_ref_id` names (§3.4, §4.4), else the chat of
        `conversation_id` (None: a new one)."""
        if conversation_ref_id is None:
            return self.store.chat_by_conversation(scope_id, conversation_id)  # type: ignore[arg-type]
        chat = self.store.chat(conversation_ref_id)
        if chat is None or chat["scope_id"] != scope_id:
            # ⚠️ the reference lists 400 for invalid data and no 404 for this method
            raise ApiError(400, f"conversation_ref_id {conversation_ref_id} is no chat of this channel",
                           "CHAT_NOT_FOUND")
        if conversation_id is not None:
            named = self.store.chat_by_conversation(scope_id, conversation_id)
            if named is not None and named["id"] != chat["id"]:
                # ⚠️ undocumented: one conversation_id cannot name two chats
                raise ApiError(400, f"conversation_id {conversation_id} already names another chat than "
                               "conversation_ref_id", "CONVERSATION_MISMATCH")
        return chat

    def _check_quote(self, scope_id: str, chat: dict | None, quoted: dict) -> None:
        """A reply quotes a message of the same chat (§3.4); ⚠️ an unknown one is refused 400, not ignored."""
        if not (quoted.get("id") or quoted.get("msgid")):
            return  # quoted in full: nothing to look up
        stored = self.store.message(quoted["id"]) if quoted.get("id") else \
            self.store.message_by_msgid(scope_id, quoted["msgid"])
        if stored is None or chat is None or stored["chat_id"] != chat["id"]:
            raise ApiError(400, "reply_to.message is not a message of this chat", "REPLY_TO_NOT_FOUND")

    def _new_message(self, scope_id: str, payload: dict) -> Response:
        msgid = string(payload, "msgid", required=True)
        conversation_id = string(payload, "conversation_id", blank=False)
        conversation_ref_id = string(payload, "conversation_ref_id", blank=False)
        if conversation_id is None and conversation_ref_id is None:
            raise ApiError(400, "conversation_id or conversation_ref_id is required", "FIELD_REQUIRED")
        integer(payload, "timestamp", required=True, most=TIMESTAMP_MAX)
        integer(payload, "msec_timestamp")
        boolean(payload, "silent")
        outgoing = payload.get("receiver") is not None  # direction is the presence of receiver (§3.4)
        sender_given = participant(payload.get("sender"), "sender", by_ref=self._by_ref)
        receiver_given = participant(payload["receiver"], "receiver", by_ref=self._by_ref) if outgoing else None
        message_body(payload.get("message"), self.config.text_limit, edit=False)
        if payload.get("source") is not None:
            external_id(payload["source"])
        quoted = embedded_message(payload["reply_to"], "reply_to") if payload.get("reply_to") is not None else None

        existing = self.store.message_by_msgid(scope_id, msgid)
        if existing is not None:
            if self.config.duplicate_msgid == "reject":
                raise ApiError(400, f"message with msgid {msgid} already exists", "DUPLICATE_MSGID")
            return self._sent_answer(scope_id, existing)

        chat = self._chat_for(scope_id, conversation_id, conversation_ref_id)
        if receiver_given is not None:
            if chat is not None and sender_given.get("id") and sender_given["id"] == chat["user"].get("id"):
                raise ApiError(400, "receiver is only sent with outgoing messages", "RECEIVER_ON_INCOMING")
            sender = self._manager(scope_id, sender_given)
            client = self._client(scope_id, receiver_given, "receiver")
        else:
            sender = client = self._client(scope_id, sender_given, "sender")
        if quoted is not None:
            self._check_quote(scope_id, chat, quoted)
        if chat is None:  # a new conversation_id creates a new chat (AMO-REF)
            chat, _ = self.store.create_chat(scope_id, conversation_id,  # type: ignore[arg-type]
                                             self._chat_user(receiver_given or sender_given, client))
        elif conversation_id is not None and conversation_ref_id is not None:
            self.store.bind_conversation(scope_id, conversation_id, chat["id"])  # §4.4: now it names this chat
        for record in (sender, client):
            self._remember(scope_id, record)
        linked = self.store.is_linked(chat["id"])
        stored = self.store.add_message(scope_id, chat["id"], payload, unlinked=not linked,
                                        sender_amojo_id=sender["amojo_id"],
                                        receiver_amojo_id=client["amojo_id"] if outgoing else None)
        if not payload.get("silent", False):
            if not linked:
                self.store.add_lead(chat["id"], stored["id"])
                self.store.add_notification(chat["id"], stored["id"], "unsorted")
            else:
                self.store.add_notification(chat["id"], stored["id"], "message")  # Q17
        return self._sent_answer(scope_id, stored)

    def _amojo_ids(self, scope_id: str, stored: dict) -> tuple[str, str | None]:
        """The amojo ids of a stored message's sender and receiver."""
        sender = stored.get("sender_amojo_id") or _record_from_payload(scope_id, stored["sender"])["amojo_id"]
        receiver = stored.get("receiver_amojo_id")
        if receiver is None and stored["receiver"]:
            receiver = _record_from_payload(scope_id, stored["receiver"])["amojo_id"]
        return sender, receiver

    def _sent_answer(self, scope_id: str, stored: dict) -> Response:
        sender_id, receiver_id = self._amojo_ids(scope_id, stored)
        return JSONResponse(
            {
                "new_message": {
                    "conversation_id": stored["chat_id"],  # Q11: the amojo chat uuid
                    "sender_id": sender_id,
                    "receiver_id": receiver_id,
                    "msgid": stored["id"],
                    "ref_id": stored["msgid"],
                }
            }
        )

    def _edit_message(self, scope_id: str, payload: dict) -> Response:
        msgid = string(payload, "msgid", blank=False)
        amojo_id = string(payload, "id", blank=False)
        if not msgid and not amojo_id:
            raise ApiError(400, "edit_message needs msgid or id", "MESSAGE_ID_REQUIRED")
        message_body(payload.get("message"), self.config.text_limit, edit=True)
        stored = self._message_in_scope(scope_id, amojo_id, msgid)
        if stored is None:
            # ⚠️ §3.4 lists 200, 403 and 400 for this method, no 404: an unknown message is invalid data
            raise ApiError(400, "message not found", "MESSAGE_NOT_FOUND")
        edited = self.store.edit_message(stored["id"], payload["message"])
        return self._sent_answer(scope_id, edited)

    def _message_in_scope(self, scope_id: str, amojo_id: str | None, msgid: str | None) -> dict | None:
        """A stored message of this scope by its amojo id, else by our msgid."""
        if amojo_id:
            stored = self.store.message(amojo_id)
            chat = self.store.chat(stored["chat_id"]) if stored else None
            return stored if chat is not None and chat["scope_id"] == scope_id else None
        return self.store.message_by_msgid(scope_id, msgid) if msgid else None

    async def history(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        chat = self.store.chat(request.path_params["chat_id"])
        if chat is None or chat["scope_id"] != scope_id:
            return Response(status_code=204)
        offset = query_int(request.query_params.get("offset", "0"), "offset")
        limit = query_int(request.query_params.get("limit", "50"), "limit")
        if offset < 0 or limit < 1:
            raise ApiError(400, "offset must be >= 0 and limit >= 1", "INVALID_PAGINATION")
        if limit > 50:
            if self.config.history_limit == "reject":
                raise ApiError(400, "limit must be at most 50", "INVALID_PAGINATION")
            limit = 50
        lag = self.faults.history_lag_ms / 1000
        messages = self.store.chat_messages(chat["id"], visible_before=time.time() - lag if lag else None)
        if not messages:
            return Response(status_code=204)
        ordered = sorted(enumerate(messages), key=lambda im: (im[1]["msec_timestamp"], im[0]), reverse=True)
        cache: dict[str, dict] = {}
        page = [self._history_item(scope_id, m, cache) for _, m in ordered[offset : offset + limit]]
        return JSONResponse({"messages": page})

    def _history_item(self, scope_id: str, stored: dict, cache: dict[str, dict]) -> dict:
        message = dict(stored["message"])
        item = {
            "id": stored["id"],
            "client_id": stored["msgid"],
            "type": message.get("type"),
            "text": message.get("text", ""),
            "media": "",
            "thumbnail": "",
            "file_name": message.get("file_name", ""),
            "file_size": message.get("file_size", 0),
        }
        if message.get("media"):  # amo re-hosts attachments (§3.4)
            name = message.get("file_name") or "file"
            item["media"] = f"https://amojo.amocrm.ru/attachments/{stored['id']}/{name}"
        for key in ("location", "contact", "sticker_id", "media_duration"):
            if key in message:
                item[key] = message[key]
        sender_id, receiver_id = self._amojo_ids(scope_id, stored)
        out = {
            "timestamp": stored["timestamp"],
            "msec_timestamp": stored["msec_timestamp"],
            "sender": self._participant_out(scope_id, sender_id, stored["sender"], cache),
            "message": item,
        }
        if stored["receiver"]:
            out["receiver"] = self._participant_out(scope_id, receiver_id, stored["receiver"], cache)
        return out

    async def delivery_status(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        if self._message_in_scope(scope_id, request.path_params["msg_id"], None) is None:
            raise ApiError(404, "message not found", "MESSAGE_NOT_FOUND")
        body = obj(body)
        status = body.get("delivery_status", body.get("status_code"))
        if not is_int(status) or status not in (1, 2, -1):
            raise ApiError(400, "delivery_status must be 1, 2 or -1", "INVALID_DELIVERY_STATUS")
        if status == -1 and not (is_int(body.get("error_code")) and isinstance(body.get("error"), str)):
            raise ApiError(400, "error_code and error are required with status -1", "INVALID_DELIVERY_STATUS")
        return Response(status_code=200)

    async def typing(self, request: Request, body: Any) -> Response:
        self._scope_or_404(request)
        body = obj(body)
        string(body, "conversation_id", required=True)
        sender = obj(body.get("sender"), "sender")
        string(sender, "id", required=True, where="sender")
        integer(body, "duration_ms")
        return Response(status_code=204)

    async def react(self, request: Request, body: Any) -> Response:
        """A reaction to a message, or taking it back (§3.8): 200 with no body, 404 for an unknown message."""
        scope_id = self._scope_or_404(request)
        body = obj(body)
        conversation_id = string(body, "conversation_id", blank=False)
        conversation_ref_id = string(body, "conversation_ref_id", blank=False)
        if conversation_id is None and conversation_ref_id is None:
            raise ApiError(400, "conversation_id or conversation_ref_id is required", "FIELD_REQUIRED")
        amojo_id, msgid = string(body, "id", blank=False), string(body, "msgid", blank=False)
        if amojo_id is None and msgid is None:
            raise ApiError(400, "id or msgid is required", "MESSAGE_ID_REQUIRED")
        user = obj(body.get("user"), "user")
        string(user, "ref_id", where="user")
        if not (self._by_ref and user.get("ref_id")):
            string(user, "id", required=True, where="user")
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in ("react", "unreact"):
            raise ApiError(400, "type must be react or unreact", "INVALID_REACTION")
        emoji = string(body, "emoji", required=kind == "react")
        stored = self._message_in_scope(scope_id, amojo_id, msgid)
        chat = self.store.chat(conversation_ref_id) if conversation_ref_id else \
            self.store.chat_by_conversation(scope_id, conversation_id)  # type: ignore[arg-type]
        if stored is None or chat is None or stored["chat_id"] != chat["id"]:
            raise ApiError(404, "message not found", "MESSAGE_NOT_FOUND")  # ⚠️ also one of another chat
        who = user.get("ref_id") or derived_id("user", scope_id, user["id"])
        self.store.react(stored["id"], who, emoji if kind == "react" else None)
        return Response(status_code=200)

    # -- REST v4 (§6)
    async def account(self, request: Request, body: Any) -> Response:
        answer: dict[str, Any] = {"id": 30000001, "name": "amojo-etl emulator", "subdomain": "emulator"}
        if "amojo_id" in request.query_params.get("with", "").split(","):
            answer["amojo_id"] = self.config.account_id
        return hal(answer)

    async def users(self, request: Request, body: Any) -> Response:
        page, limit = _page(request)
        with_amojo = "amojo_id" in request.query_params.get("with", "").split(",")
        users = list(self.config.users)
        chunk = users[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status_code=204)
        items = []
        for user in chunk:
            item: dict[str, Any] = {"id": user.id, "name": user.name, "email": user.email, "lang": "ru"}
            if with_amojo:
                item["amojo_id"] = user.amojo_id
            items.append(item)
        return hal(
            {
                "_total_items": len(users),
                "_page": page,
                "_page_count": max(1, math.ceil(len(users) / limit)),
                "_embedded": {"users": items},
            }
        )

    async def contacts(self, request: Request, body: Any) -> Response:
        if request.method == "POST":
            return self._create_contacts(body)
        page, limit = _page(request)
        query = request.query_params.get("query", "").strip()
        found = [c for c in self.store.contacts() if not query or _contact_matches(c, query)]
        chunk = found[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status_code=204)
        items = [{"id": c["id"], "name": c["name"], "custom_fields_values": c["body"].get("custom_fields_values")}
                 for c in chunk]
        return hal({"_page": page, "_embedded": {"contacts": items}})

    def _check_batch(self, batch: list, what: str) -> None:
        """Refuse a REST batch larger than `rest_batch_max` (Q13 ⚠️: amoCRM documents no maximum)."""
        if len(batch) > self.config.rest_batch_max:
            raise ApiError(400, f"at most {self.config.rest_batch_max} {what} per request, not {len(batch)}")

    def _create_contacts(self, body: Any) -> Response:
        if not isinstance(body, list) or not body:
            raise ApiError(400, "the body must be a non-empty array of contacts")
        self._check_batch(body, "contacts")
        refused = [{"request_id": _request_id(item, index), "errors": problems}
                   for index, item in enumerate(body) if (problems := _contact_problems(item))]
        if refused:  # amoCRM's validation-errors envelope (§5.3); nothing of the batch is created
            raise ApiError(400, "Request validation failed", extra={"validation-errors": refused})
        created = []
        for index, item in enumerate(body):
            phones, emails = _contact_fields(item)
            name = item.get("name") or " ".join(filter(None, [item.get("first_name"), item.get("last_name")]))
            contact_id = self.store.create_contact(item, str(name or ""), phones, emails)
            created.append({"id": contact_id, "request_id": _request_id(item, index)})
        return hal({"_embedded": {"contacts": created}})

    async def contact_chats(self, request: Request, body: Any) -> Response:
        if request.method == "POST":
            if not isinstance(body, list) or not body:
                raise ApiError(400, "the body must be a non-empty array of links")
            self._check_batch(body, "links")
            made = []
            for index, item in enumerate(body):
                if not isinstance(item, dict) or not is_int(item.get("contact_id")) \
                        or not isinstance(item.get("chat_id"), str):
                    raise ApiError(400, f"link {index} needs contact_id (int) and chat_id (string)")
                if self.store.chat(item["chat_id"]) is None:
                    raise ApiError(400, f"link {index}: chat {item['chat_id']} not found")
                if self.store.contact(item["contact_id"]) is None:
                    raise ApiError(400, f"link {index}: contact {item['contact_id']} not found")
            for index, item in enumerate(body):
                link_id = self.store.link(item["chat_id"], item["contact_id"])
                made.append({"chat_id": item["chat_id"], "contact_id": item["contact_id"], "id": link_id,
                             "request_id": str(item.get("request_id", index))})
            return hal({"_total_items": len(made), "_embedded": {"chats": made}})
        chat_ids = request.query_params.getlist("chat_id[]") + request.query_params.getlist("chat_id")
        contact_ids = [query_int(v, "contact_id[]") for v in request.query_params.getlist("contact_id[]")]
        if not chat_ids and not contact_ids:
            raise ApiError(400, "filter by chat_id[] or contact_id[]")
        links = self.store.links(chat_ids or None, contact_ids or None)
        if not links:
            return Response(status_code=204)
        items = [{"chat_id": r["chat_id"], "contact_id": r["contact_id"], "id": r["id"]} for r in links]
        return hal({"_total_items": len(items), "_embedded": {"chats": items}})

    async def oauth_token(self, request: Request, body: Any) -> Response:
        body = body if isinstance(body, dict) else {}
        if body.get("client_id") != self.config.oauth_client_id or \
                body.get("client_secret") != self.config.oauth_client_secret:
            raise ApiError(400, "client_id or client_secret is wrong")
        if body.get("grant_type") != "refresh_token":
            raise ApiError(400, "only grant_type refresh_token is emulated")
        if not self.store.spend_refresh_token(str(body.get("refresh_token", ""))):
            raise ApiError(400, "refresh token is invalid, expired or already used")
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.store.put_token(access, "access", self.config.access_token_ttl_s)
        self.store.put_token(refresh, "refresh")
        return JSONResponse({"token_type": "Bearer", "expires_in": int(self.config.access_token_ttl_s),
                             "server_time": int(time.time()), "access_token": access, "refresh_token": refresh})

    # -- admin (each takes the parsed body; see _admin_endpoint)
    async def admin_state(self, request: Request, body: Any) -> Response:
        return JSONResponse(self.snapshot())

    async def admin_requests(self, request: Request, body: Any) -> Response:
        """The request log, `[time, api, endpoint, status]` each, optionally for one endpoint."""
        endpoint = request.query_params.get("endpoint")
        with self._log_lock:
            log = [list(entry) for entry in self.request_log if endpoint in (None, entry[2])]
        return JSONResponse(log)

    async def admin_faults(self, request: Request, body: Any) -> Response:
        """The faults in force (POST: replace them, fields as in `Faults`); `script` is what is left of it."""
        if request.method == "POST":
            try:
                faults = Faults.from_dict(body)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            self.set_faults(faults)
        return JSONResponse({**asdict(self.faults), "error_rates": {str(k): v for k, v in
                                                                    self.faults.error_rates.items()},
                             "script": self.script_left()})

    async def admin_clock(self, request: Request, body: Any) -> Response:
        """Pretend it is `{"now": "<ISO 8601 with offset>"}`; `{"now": null}`: the real time again."""
        self.set_clock(_clock_moment(body))
        return JSONResponse({"now": self.now().isoformat()})

    async def admin_reset(self, request: Request, body: Any) -> Response:
        self.store.reset()
        with self._log_lock:
            self.request_log.clear()
            self.unhandled.clear()
        return JSONResponse({"reset": True})


def _record_from_payload(scope_id: str, sent: dict) -> dict:
    """A participant record from a message payload stored before records were kept (an older state file)."""
    if sent.get("ref_id") and not sent.get("profile"):
        return {"amojo_id": sent["ref_id"], "kind": "user", "name": sent.get("name", "")}
    profile = sent.get("profile") or {}
    return {"amojo_id": derived_id("user", scope_id, sent.get("id", "")), "kind": "client",
            "client_id": sent.get("id"), "name": sent.get("name", ""), "avatar": sent.get("avatar", ""),
            "phone": profile.get("phone") or sent.get("phone"), "email": profile.get("email") or sent.get("email")}


def _request_id(item: Any, index: int) -> str:
    """The request_id amoCRM echoes: the one sent, or the position (§6.3)."""
    given = item.get("request_id") if isinstance(item, dict) else None
    return given if isinstance(given, str) else str(index)


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


class _DroppedConnection(Response):
    """Starts an answer and never finishes it: the client sees the connection dropped mid-response.

    Logged with status 0: the client got no answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)
        self.status_code = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        raise ConnectionResetError("emulated dropped connection")


def _page(request: Request) -> tuple[int, int]:
    page = query_int(request.query_params.get("page", "1"), "page")
    limit = query_int(request.query_params.get("limit", "50"), "limit")
    if page < 1 or not 1 <= limit <= 250:
        raise ApiError(400, "page must be >= 1 and limit between 1 and 250")
    return page, limit


def _contact_fields(item: dict) -> tuple[list[str], list[str]]:
    """The phones (digits) and emails of a contact whose shape `_contact_problems` has passed."""
    phones, emails = [], []
    for field in item.get("custom_fields_values") or []:
        code = field.get("field_code")
        values = [str(v.get("value", "")) for v in field.get("values") or []]
        if code == "PHONE":
            phones += [digits(v) for v in values if digits(v)]
        elif code == "EMAIL":
            emails += [v.lower() for v in values if v]
    return phones, emails


def _contact_problems(item: Any) -> list[dict[str, str]]:
    """What is wrong with one contact of POST /api/v4/contacts, as amoCRM's validation-errors list (§5.3)."""
    if not isinstance(item, dict):
        return [{"code": "InvalidType", "path": "", "detail": "a contact must be an object"}]
    problems = []
    for key in ("name", "first_name", "last_name", "request_id"):
        if item.get(key) is not None and not isinstance(item[key], str):
            problems.append({"code": "InvalidType", "path": key, "detail": "This value should be of type string."})
    for key in ("responsible_user_id", "created_by", "updated_by", "created_at", "updated_at"):
        if item.get(key) is not None and not is_int(item[key]):
            problems.append({"code": "InvalidType", "path": key, "detail": "This value should be of type int."})
    fields = item.get("custom_fields_values")
    if fields is None:
        return problems
    if not isinstance(fields, list):
        return problems + [{"code": "InvalidType", "path": "custom_fields_values",
                            "detail": "This value should be of type array."}]
    for index, field in enumerate(fields):
        path = f"custom_fields_values.{index}"
        if not isinstance(field, dict):
            problems.append({"code": "InvalidType", "path": path, "detail": "This value should be of type object."})
            continue
        if field.get("field_code") is not None and not isinstance(field["field_code"], str):
            problems.append({"code": "InvalidType", "path": f"{path}.field_code",
                             "detail": "This value should be of type string."})
        if field.get("field_id") is not None and not is_int(field["field_id"]):
            problems.append({"code": "InvalidType", "path": f"{path}.field_id",
                             "detail": "This value should be of type int."})
        values = field.get("values")
        if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
            problems.append({"code": "InvalidType", "path": f"{path}.values",
                             "detail": "This value should be an array of objects."})
            continue
        for number, value in enumerate(values):
            if isinstance(value.get("value"), dict | list):
                problems.append({"code": "InvalidType", "path": f"{path}.values.{number}.value",
                                 "detail": "This value should be a scalar."})
    return problems


def _contact_matches(contact: dict, query: str) -> bool:
    """amoCRM's `query` searches every filled field: phone digits, an email, or else a case-insensitive substring
    of the name or of any custom field's value (e.g. a key in the IM field) (§6, issues 3 and 12)."""
    lowered = query.lower()
    query_digits = digits(query)
    looks_like_phone = len(query_digits) >= 5 and len(query_digits) >= len(query.strip()) // 2 \
        and not any(ch.isalpha() for ch in query)  # a key such as amojoetl3f9a… is mostly digits, but not a phone
    if looks_like_phone:
        return any(query_digits in phone or phone in query_digits for phone in contact["phones"])
    if "@" in lowered:
        return lowered in contact["emails"]
    return lowered in contact["name"].lower() or any(lowered in value.lower() for value in contact["values"])
