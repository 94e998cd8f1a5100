"""The Chats API's channel and chats (§3.1–§3.3): connect, disconnect, create a chat, typing."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..inputs import ApiError, boolean, external_id, integer, obj, participant, string
from . import Handlers


class ChatsHandlers(Handlers):
    """Connecting the channel to the account, and the chats of its scope."""

    def _channel(self, request: Request) -> None:
        if request.path_params["channel_id"] != self.config.channel_id:
            raise ApiError(404, "channel does not exist", "CHANNEL_NOT_FOUND")

    async def connect(self, request: Request, body: Any) -> Response:
        self._channel(request)
        body = obj(body)
        account_id = string(body, "account_id", required=True)
        version = body.get("hook_api_version", "v1")
        if not isinstance(version, str) or version not in ("v1", "v2"):
            raise ApiError(400, "hook_api_version must be v1 or v2", "INVALID_HOOK_API_VERSION")
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not allowed for this channel", "ACCOUNT_NOT_ALLOWED")
        title = string(body, "title") or "amojo emulator channel"
        time_window_disabled = boolean(body, "is_time_window_disabled") or False  # §3.1: default false
        scope_id = self.emulator.scope_id
        self.store.connect(scope_id, account_id, title, version)  # type: ignore[arg-type]
        # §3.1's response table lists is_time_window_disabled; clients read it from every answer.
        return JSONResponse({"account_id": account_id, "scope_id": scope_id, "title": title,
                             "hook_api_version": version, "is_time_window_disabled": time_window_disabled})

    async def disconnect(self, request: Request, body: Any) -> Response:
        self._channel(request)
        account_id = string(obj(body), "account_id", required=True)
        if account_id != self.config.account_id:
            raise ApiError(400, "account is not connected to this channel", "ACCOUNT_NOT_ALLOWED")
        self.store.disconnect(self.emulator.scope_id)
        return Response(status_code=200)

    async def create_chat(self, request: Request, body: Any) -> Response:
        scope_id = self.emulator.connected_scope(request.path_params["scope_id"])
        body = obj(body)
        conversation_id = string(body, "conversation_id", required=True)
        given = participant(body.get("user"), "user", by_ref=self.participants.by_ref)
        source = external_id(body["source"]) if body.get("source") is not None else None
        participants = self.participants
        client = participants.client(scope_id, given, "user")
        chat, _ = self.store.create_chat(scope_id, conversation_id,  # type: ignore[arg-type]
                                         participants.chat_user(given, client))
        participants.remember(scope_id, client)
        if source:
            self.store.tie_source(chat["id"], source)
        # An existing chat keeps its client (idempotent on conversation_id, §3.3).
        user = participants.answer(scope_id, participants.chat_client_id(chat), chat["user"], {})
        return JSONResponse({"id": chat["id"], "user": user})

    async def typing(self, request: Request, body: Any) -> Response:
        self.emulator.connected_scope(request.path_params["scope_id"])
        body = obj(body)
        string(body, "conversation_id", required=True)
        sender = obj(body.get("sender"), "sender")
        string(sender, "id", required=True, where="sender")
        integer(body, "duration_ms")
        return Response(status_code=204)
