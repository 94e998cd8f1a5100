"""The emulated amoCRM as an ASGI app: the Chats API, the REST v4 subset, and an admin surface for tests.

Behaviour follows amojo-api.md; where it is marked ⚠️, the §9 default is used and the alternative is a switch in
`EmulatorConfig`. Nothing here is shaped after our own client.
"""

from __future__ import annotations

import asyncio
import json
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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import ENDPOINTS, EmulatorConfig, Faults
from .store import Store, derived_id, digits
from .verify import BadSignature, verify

BASE = "/v2/origin/custom"
MESSAGE_TYPES = {"text", "contact", "file", "video", "picture", "voice", "audio", "sticker", "location"}
MEDIA_TYPES = {"file", "video", "picture", "voice", "audio", "sticker"}
NEEDS_FILE_META = {"file", "video", "picture"}  # AMO-REF: file_name and file_size required


class ApiError(Exception):
    """An answer other than success, raised from a handler."""

    def __init__(self, status: int, description: str, error_type: str = "", code: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.error_type = error_type
        self.code = code


def amojo_error(status: int, error_type: str, description: str, code: int | None = None) -> JSONResponse:
    """The amojo envelope (§5.1), used for every amojo error (Q7)."""
    body = {"status": 0, "error_code": code or status, "error_type": error_type, "error_description": description}
    return JSONResponse(body, status_code=status)


def _amojo_render(exc: ApiError) -> Response:
    return amojo_error(exc.status, exc.error_type or "INVALID_REQUEST", exc.description, exc.code)


def _rest_render(exc: ApiError) -> Response:
    return rest_problem(exc.status, "Bad Request" if exc.status == 400 else "Error", exc.description)


def rest_problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


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
        for user_token in (self.config.token,):
            self.store.put_token(user_token, "access")
        if self.config.oauth_refresh_token and not self.store.token_state(self.config.oauth_refresh_token):
            self.store.put_token(self.config.oauth_refresh_token, "refresh")
        self.app = Starlette(routes=self._routes())

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
            "request_counts": self.request_counts(),
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
        routes += [
            Route("/_emulator/state", self.admin_state, methods=["GET"]),
            Route("/_emulator/faults", self.admin_faults, methods=["GET", "POST"]),
            Route("/_emulator/requests", self.admin_requests, methods=["GET"]),
            Route("/_emulator/clock", self.admin_clock, methods=["POST"]),
            Route("/_emulator/reset", self.admin_reset, methods=["POST"]),
        ]
        return routes

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
            body = await request.body()
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
                    response = await handler(request, _json(body))
                except ApiError as exc:
                    response = render(exc)
                if 200 <= response.status_code < 300:
                    if entry is not None:
                        response = self._lose(api, entry["lose"])
                    elif endpoint in self.faults.lost_answer_endpoints:
                        response = self._maybe_lose(api, response)
            self._log(api, endpoint, response.status_code)
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

    # -- Chats API (§3)
    async def connect(self, request: Request, body: Any) -> Response:
        if request.path_params["channel_id"] != self.config.channel_id:
            raise ApiError(404, "channel does not exist", "CHANNEL_NOT_FOUND")
        body = _object(body)
        account_id = _string(body, "account_id", required=True)
        version = body.get("hook_api_version", "v1")
        if version not in ("v1", "v2"):
            raise ApiError(400, "hook_api_version must be v1 or v2", "INVALID_HOOK_API_VERSION")
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not allowed for this channel", "ACCOUNT_NOT_ALLOWED")
        title = _string(body, "title") or "amojo emulator channel"
        self.store.connect(self.scope_id, account_id, title, version)
        answer = {"account_id": account_id, "scope_id": self.scope_id, "title": title, "hook_api_version": version}
        if "is_time_window_disabled" in body:
            answer["is_time_window_disabled"] = bool(body["is_time_window_disabled"])
        return JSONResponse(answer)

    async def disconnect(self, request: Request, body: Any) -> Response:
        if request.path_params["channel_id"] != self.config.channel_id:
            raise ApiError(404, "channel does not exist", "CHANNEL_NOT_FOUND")
        account_id = _string(_object(body), "account_id", required=True)
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not connected to this channel", "ACCOUNT_NOT_ALLOWED")
        self.store.disconnect(self.scope_id)
        return Response(status_code=200)

    async def create_chat(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        body = _object(body)
        conversation_id = _string(body, "conversation_id", required=True)
        user = _participant(body.get("user"), "user")
        source = body.get("source")
        if source is not None:
            _external_id(source)
        chat, _ = self.store.create_chat(scope_id, conversation_id, user)
        return JSONResponse({"id": chat["id"], "user": self._participant_out(chat["user"])})

    def _participant_out(self, participant: dict) -> dict:
        """A participant as amojo answers: its uuid, our id as `client_id`, phone/email only when given."""
        if participant.get("ref_id") and not participant.get("profile"):
            return {"id": participant["ref_id"], "name": participant.get("name", "")}
        out = {
            "id": derived_id("user", self.scope_id, participant.get("id", "")),
            "client_id": participant.get("id"),
            "name": participant.get("name", ""),
            "avatar": participant.get("avatar", ""),
        }
        profile = participant.get("profile") or {}
        phone = profile.get("phone") or participant.get("phone")  # Q12: `profile`, or flat as AMO-REF has it
        email = profile.get("email") or participant.get("email")
        if phone:
            out["phone"] = digits(phone)
        if email:
            out["email"] = email
        return out

    async def message_event(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        body = _object(body)
        event_type = body.get("event_type")
        payload = _object(body.get("payload"), "payload")
        if event_type == "new_message":
            return self._new_message(scope_id, payload)
        if event_type == "edit_message":
            return self._edit_message(scope_id, payload)
        raise ApiError(400, "event_type must be new_message or edit_message", "INVALID_EVENT_TYPE")

    def _new_message(self, scope_id: str, payload: dict) -> Response:
        msgid = _string(payload, "msgid", required=True)
        conversation_id = _string(payload, "conversation_id", required=True)
        _int(payload, "timestamp", required=True)
        _int(payload, "msec_timestamp")
        if "silent" in payload and not isinstance(payload["silent"], bool):
            raise ApiError(400, "silent must be a boolean", "INVALID_TYPE")
        sender = _participant(payload.get("sender"), "sender")
        receiver = payload.get("receiver")
        if receiver is not None:
            receiver = _participant(receiver, "receiver")
        _message_body(payload.get("message"), self.config.text_limit, edit=False)
        if payload.get("source") is not None:
            _external_id(payload["source"])

        existing = self.store.message_by_msgid(scope_id, msgid)
        if existing is not None:
            if self.config.duplicate_msgid == "reject":
                raise ApiError(400, f"message with msgid {msgid} already exists", "DUPLICATE_MSGID")
            return self._sent_answer(existing)

        chat = self.store.chat_by_conversation(scope_id, conversation_id)
        if receiver is not None:
            if chat is not None and sender.get("id") == chat["user"].get("id"):
                raise ApiError(400, "receiver is only sent with outgoing messages", "RECEIVER_ON_INCOMING")
            if not sender.get("ref_id"):
                raise ApiError(400, "outgoing message without sender.ref_id", "SENDER_REF_ID_REQUIRED", code=453)
            known = {u.amojo_id for u in self.config.users if u.amojo_id} | {self.config.bot_id}
            if self.config.check_ref_id and sender["ref_id"] not in known:
                raise ApiError(400, "sender.ref_id is neither a user's amojo_id nor the bot", "UNKNOWN_REF_ID")
        if chat is None:  # a new conversation_id creates a new chat (AMO-REF)
            chat, _ = self.store.create_chat(scope_id, conversation_id, receiver if receiver else sender)
        linked = self.store.is_linked(chat["id"])
        stored = self.store.add_message(scope_id, chat["id"], payload, unlinked=not linked)
        if not payload.get("silent", False):
            if not linked:
                self.store.add_lead(chat["id"], stored["id"])
                self.store.add_notification(chat["id"], stored["id"], "unsorted")
            else:
                self.store.add_notification(chat["id"], stored["id"], "message")  # Q17
        return self._sent_answer(stored)

    def _sent_answer(self, stored: dict) -> Response:
        receiver = stored["receiver"]
        return JSONResponse(
            {
                "new_message": {
                    "conversation_id": stored["chat_id"],  # Q11: the amojo chat uuid
                    "sender_id": self._participant_out(stored["sender"])["id"],
                    "receiver_id": self._participant_out(receiver)["id"] if receiver else None,
                    "msgid": stored["id"],
                    "ref_id": stored["msgid"],
                }
            }
        )

    def _edit_message(self, scope_id: str, payload: dict) -> Response:
        msgid = _string(payload, "msgid")
        amojo_id = _string(payload, "id")
        if not msgid and not amojo_id:
            raise ApiError(400, "edit_message needs msgid or id", "MESSAGE_ID_REQUIRED")
        _message_body(payload.get("message"), self.config.text_limit, edit=True)
        stored = self.store.message(amojo_id) if amojo_id else self.store.message_by_msgid(scope_id, msgid)
        if stored is None:
            raise ApiError(404, "message not found", "MESSAGE_NOT_FOUND")
        edited = self.store.edit_message(stored["id"], payload["message"])
        return self._sent_answer(edited)

    async def history(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        chat = self.store.chat(request.path_params["chat_id"])
        if chat is None or chat["scope_id"] != scope_id:
            return Response(status_code=204)
        try:
            offset = int(request.query_params.get("offset", 0))
            limit = int(request.query_params.get("limit", 50))
        except ValueError as exc:
            raise ApiError(400, "offset and limit must be integers", "INVALID_PAGINATION") from exc
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
        page = [self._history_item(m) for _, m in ordered[offset : offset + limit]]
        return JSONResponse({"messages": page})

    def _history_item(self, stored: dict) -> dict:
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
        out = {
            "timestamp": stored["timestamp"],
            "msec_timestamp": stored["msec_timestamp"],
            "sender": self._participant_out(stored["sender"]),
            "message": item,
        }
        if stored["receiver"]:
            out["receiver"] = self._participant_out(stored["receiver"])
        return out

    async def delivery_status(self, request: Request, body: Any) -> Response:
        scope_id = self._scope_or_404(request)
        stored = self.store.message(request.path_params["msg_id"])
        if stored is None or self.store.chat(stored["chat_id"])["scope_id"] != scope_id:  # type: ignore[index]
            raise ApiError(404, "message not found", "MESSAGE_NOT_FOUND")
        body = _object(body)
        status = body.get("delivery_status", body.get("status_code"))
        if not _is_int(status) or status not in (1, 2, -1):
            raise ApiError(400, "delivery_status must be 1, 2 or -1", "INVALID_DELIVERY_STATUS")
        if status == -1 and not (_is_int(body.get("error_code")) and isinstance(body.get("error"), str)):
            raise ApiError(400, "error_code and error are required with status -1", "INVALID_DELIVERY_STATUS")
        return Response(status_code=200)

    async def typing(self, request: Request, body: Any) -> Response:
        self._scope_or_404(request)
        body = _object(body)
        _string(body, "conversation_id", required=True)
        sender = _object(body.get("sender"), "sender")
        _string(sender, "id", required=True)
        _int(body, "duration_ms")
        return Response(status_code=204)

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
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                raise ApiError(400, f"contact {index} is not an object")
        created = []
        for index, item in enumerate(body):
            phones, emails = _contact_fields(item)
            name = item.get("name") or " ".join(filter(None, [item.get("first_name"), item.get("last_name")]))
            contact_id = self.store.create_contact(item, str(name or ""), phones, emails)
            created.append({"id": contact_id, "request_id": str(item.get("request_id", index))})
        return hal({"_embedded": {"contacts": created}})

    async def contact_chats(self, request: Request, body: Any) -> Response:
        if request.method == "POST":
            if not isinstance(body, list) or not body:
                raise ApiError(400, "the body must be a non-empty array of links")
            self._check_batch(body, "links")
            made = []
            for index, item in enumerate(body):
                if not isinstance(item, dict) or not _is_int(item.get("contact_id")) \
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
        contact_ids = [int(v) for v in request.query_params.getlist("contact_id[]") if v.isdigit()]
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

    # -- admin
    async def admin_state(self, request: Request) -> Response:
        return JSONResponse(self.snapshot())

    async def admin_requests(self, request: Request) -> Response:
        """The request log, `[time, api, endpoint, status]` each, optionally for one endpoint."""
        endpoint = request.query_params.get("endpoint")
        with self._log_lock:
            log = [list(entry) for entry in self.request_log if endpoint in (None, entry[2])]
        return JSONResponse(log)

    async def admin_faults(self, request: Request) -> Response:
        """The faults in force (POST: replace them, fields as in `Faults`); `script` is what is left of it."""
        if request.method == "POST":
            try:
                faults = Faults.from_dict(json.loads(await request.body()))
            except ValueError as exc:  # also a body that is not JSON
                return JSONResponse({"error": "invalid faults", "detail": str(exc)}, status_code=400)
            self.set_faults(faults)
        return JSONResponse({**asdict(self.faults), "error_rates": {str(k): v for k, v in
                                                                    self.faults.error_rates.items()},
                             "script": self.script_left()})

    async def admin_clock(self, request: Request) -> Response:
        body = await request.json()
        moment = body.get("now")
        self.set_clock(datetime.fromisoformat(moment) if moment else None)
        return JSONResponse({"now": self.now().isoformat()})

    async def admin_reset(self, request: Request) -> Response:
        self.store.reset()
        with self._log_lock:
            self.request_log.clear()
        return JSONResponse({"reset": True})


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


# -- validation helpers (§3.3, §3.4): the API is strictly typed
def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError as exc:
        raise ApiError(400, "the body is not valid JSON", "INVALID_JSON") from exc


def _object(value: Any, name: str = "body") -> dict:
    if not isinstance(value, dict):
        raise ApiError(400, f"{name} must be a JSON object", "INVALID_TYPE")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(body: dict, key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"{key} is required", "FIELD_REQUIRED")
        return None
    if not isinstance(value, str) or (required and not value):
        raise ApiError(400, f"{key} must be a non-empty string", "INVALID_TYPE")
    return value


def _int(body: dict, key: str, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"{key} is required", "FIELD_REQUIRED")
        return None
    if not _is_int(value) or value < 0:
        raise ApiError(400, f"{key} must be a non-negative integer", "INVALID_TYPE")
    return value


def _participant(value: Any, name: str) -> dict:
    participant = _object(value, name)
    _string(participant, "id", required=True)
    if participant.get("name") is None:
        raise ApiError(400, f"{name}.name is required", "FIELD_REQUIRED")
    _string(participant, "name")
    for key in ("ref_id", "avatar", "profile_link", "phone", "email"):
        _string(participant, key)
    profile = participant.get("profile")
    if profile is not None:
        _object(profile, f"{name}.profile")
        _string(profile, "phone")
        _string(profile, "email")
    return participant


def _external_id(source: Any) -> None:
    external_id = _string(_object(source, "source"), "external_id")
    if external_id is not None and (len(external_id) > 40 or not all(32 <= ord(c) < 127 for c in external_id)):
        raise ApiError(400, "source.external_id: at most 40 printable ASCII characters", "INVALID_SOURCE")


def _message_body(value: Any, text_limit: int | None, *, edit: bool) -> None:
    message = _object(value, "message")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise ApiError(400, f"message.type must be one of {sorted(MESSAGE_TYPES)}", "INVALID_MESSAGE_TYPE")
    text = message.get("text")
    if text is not None and not isinstance(text, str):
        raise ApiError(400, "message.text must be a string", "INVALID_TYPE")
    if kind == "text" and not text:
        raise ApiError(400, "message.text is required for type text", "FIELD_REQUIRED")
    if text and text_limit is not None and len(text) > text_limit:
        raise ApiError(400, f"message.text is longer than {text_limit} characters", "TEXT_TOO_LONG")
    if kind in MEDIA_TYPES:
        media = message.get("media")
        if media is None and not edit and not (kind == "sticker" and message.get("sticker_id")):
            raise ApiError(400, f"message.media is required for type {kind}", "FIELD_REQUIRED")
        if media is not None and (not isinstance(media, str) or not media.startswith(("http://", "https://"))):
            raise ApiError(400, "message.media must be an http(s) URL", "INVALID_MEDIA")
    if kind in NEEDS_FILE_META and not edit:
        if not isinstance(message.get("file_name"), str) or not message.get("file_name"):
            raise ApiError(400, f"message.file_name is required for type {kind}", "FIELD_REQUIRED")
        if not _is_int(message.get("file_size")):
            raise ApiError(400, f"message.file_size (int) is required for type {kind}", "FIELD_REQUIRED")
    if kind == "location":
        location = _object(message.get("location"), "message.location")
        for key in ("lat", "lon"):
            if not isinstance(location.get(key), int | float) or isinstance(location.get(key), bool):
                raise ApiError(400, f"message.location.{key} must be a number", "INVALID_TYPE")
    if kind == "contact":
        contact = _object(message.get("contact"), "message.contact")
        _string(contact, "name", required=True)
        _string(contact, "phone", required=True)


def _page(request: Request) -> tuple[int, int]:
    try:
        page = int(request.query_params.get("page", 1))
        limit = int(request.query_params.get("limit", 50))
    except ValueError as exc:
        raise ApiError(400, "page and limit must be integers") from exc
    if page < 1 or not 1 <= limit <= 250:
        raise ApiError(400, "page must be >= 1 and limit between 1 and 250")
    return page, limit


def _contact_fields(item: dict) -> tuple[list[str], list[str]]:
    phones, emails = [], []
    for field in item.get("custom_fields_values") or []:
        code = field.get("field_code")
        values = [str(v.get("value", "")) for v in field.get("values") or []]
        if code == "PHONE":
            phones += [digits(v) for v in values if digits(v)]
        elif code == "EMAIL":
            emails += [v.lower() for v in values if v]
    return phones, emails


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
