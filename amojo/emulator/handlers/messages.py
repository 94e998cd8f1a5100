"""The Chats API's messages (§3.4, §3.8): new and edited messages, history, delivery status, reactions."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..inputs import (
    TIMESTAMP_MAX,
    ApiError,
    boolean,
    embedded_message,
    external_id,
    integer,
    is_int,
    message_body,
    obj,
    participant,
    query_int,
    string,
)
from ..store import derived_id
from . import Handlers


class MessagesHandlers(Handlers):
    """The messages of the scope's chats, and what amoCRM does when one arrives (leads, notifications)."""

    async def message_event(self, request: Request, body: Any) -> Response:
        scope_id = self.emulator.connected_scope(request.path_params["scope_id"])
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

    def _check_quote(self, scope_id: str, chat: dict | None, quoted: dict) -> str | None:
        """A reply quotes a message of the same chat (§3.4); ⚠️ an unknown one is refused 400, not ignored. The
        quoted message's amojo id, None for one quoted in full."""
        if not (quoted.get("id") or quoted.get("msgid")):
            return None  # quoted in full: nothing to look up
        stored = self.store.message(quoted["id"]) if quoted.get("id") else \
            self.store.message_by_msgid(scope_id, quoted["msgid"])
        if stored is None or chat is None or stored["chat_id"] != chat["id"]:
            raise ApiError(400, "reply_to.message is not a message of this chat", "REPLY_TO_NOT_FOUND")
        return stored["id"]

    def _new_message(self, scope_id: str, payload: dict) -> Response:
        msgid = string(payload, "msgid", required=True)
        conversation_id = string(payload, "conversation_id", blank=False)
        conversation_ref_id = string(payload, "conversation_ref_id", blank=False)
        if conversation_id is None and conversation_ref_id is None:
            raise ApiError(400, "conversation_id or conversation_ref_id is required", "FIELD_REQUIRED")
        integer(payload, "timestamp", required=True, most=TIMESTAMP_MAX)
        integer(payload, "msec_timestamp")
        boolean(payload, "silent")
        by_ref = self.participants.by_ref
        outgoing = payload.get("receiver") is not None  # direction is the presence of receiver (§3.4)
        sender_given = participant(payload.get("sender"), "sender", by_ref=by_ref)
        receiver_given = participant(payload["receiver"], "receiver", by_ref=by_ref) if outgoing else None
        message_body(payload.get("message"), self.config.text_limit, edit=False)
        source = external_id(payload["source"]) if payload.get("source") is not None else None
        quoted = embedded_message(payload["reply_to"], "reply_to") if payload.get("reply_to") is not None else None

        existing = self.store.message_by_msgid(scope_id, msgid)  # type: ignore[arg-type]
        if existing is not None:
            if self.config.duplicate_msgid == "reject":
                raise ApiError(400, f"message with msgid {msgid} already exists", "DUPLICATE_MSGID")
            return self._sent_answer(scope_id, existing)

        chat = self._chat_for(scope_id, conversation_id, conversation_ref_id)
        if receiver_given is not None:
            if chat is not None and sender_given.get("id") and sender_given["id"] == chat["user"].get("id"):
                raise ApiError(400, "receiver is only sent with outgoing messages", "RECEIVER_ON_INCOMING")
            sender = self.participants.manager(scope_id, sender_given)
            client = self.participants.client(scope_id, receiver_given, "receiver")
        else:
            sender = client = self.participants.client(scope_id, sender_given, "sender")
        reply_to = self._check_quote(scope_id, chat, quoted) if quoted is not None else None
        if chat is None:  # a new conversation_id creates a new chat (AMO-REF)
            chat, _ = self.store.create_chat(scope_id, conversation_id,  # type: ignore[arg-type]
                                             self.participants.chat_user(receiver_given or sender_given, client))
        elif conversation_id is not None and conversation_ref_id is not None:
            self.store.bind_conversation(scope_id, conversation_id, chat["id"])  # §4.4: now it names this chat
        if source:
            self.store.tie_source(chat["id"], source)
        self.participants.remember(scope_id, sender)
        if client is not sender:  # an incoming message's sender is its client: one record, kept once
            self.participants.remember(scope_id, client)
        stored = self._store_message(scope_id, chat["id"], payload, sender["amojo_id"],
                                     client["amojo_id"] if outgoing else None, reply_to)
        self.emulator.media.fetch(stored["msgid"], stored["chat_id"], payload["message"])
        return self._sent_answer(scope_id, stored)

    def _store_message(self, scope_id: str, chat_id: str, payload: dict, sender_amojo_id: str,
                       receiver_amojo_id: str | None, reply_to: str | None = None) -> dict:
        """Store a new message, and do what amoCRM does on one: a lead and a notification in the unsorted for a
        chat linked to no contact, else a notification (Q17); nothing for a silent one."""
        linked = self.store.is_linked(chat_id)
        stored = self.store.add_message(scope_id, chat_id, payload, unlinked=not linked,
                                        sender_amojo_id=sender_amojo_id, receiver_amojo_id=receiver_amojo_id,
                                        reply_to=reply_to)
        if not payload.get("silent", False):
            if not linked:
                self.store.add_lead(chat_id, stored["id"])
                self.store.add_notification(chat_id, stored["id"], "unsorted")
            else:
                self.store.add_notification(chat_id, stored["id"], "message")  # Q17
        return stored

    def _sent_answer(self, scope_id: str, stored: dict) -> Response:
        sender_id, receiver_id = self.participants.amojo_ids(scope_id, stored)
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
        if payload["message"].get("media") not in (None, stored["message"].get("media")):
            self.emulator.media.fetch(edited["msgid"], edited["chat_id"], payload["message"])  # a new file
        return self._sent_answer(scope_id, edited)

    def _message_in_scope(self, scope_id: str, amojo_id: str | None, msgid: str | None) -> dict | None:
        """A stored message of this scope by its amojo id, else by our msgid."""
        if amojo_id:
            stored = self.store.message(amojo_id)
            chat = self.store.chat(stored["chat_id"]) if stored else None
            return stored if chat is not None and chat["scope_id"] == scope_id else None
        return self.store.message_by_msgid(scope_id, msgid) if msgid else None

    async def history(self, request: Request, body: Any) -> Response:
        scope_id = self.emulator.connected_scope(request.path_params["scope_id"])
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
        lag = self.emulator.injector.faults.history_lag_ms / 1000
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
        sender_id, receiver_id = self.participants.amojo_ids(scope_id, stored)
        out = {
            "timestamp": stored["timestamp"],
            "msec_timestamp": stored["msec_timestamp"],
            "sender": self.participants.answer(scope_id, sender_id, stored["sender"], cache),
            "message": item,
        }
        if stored["receiver"]:
            out["receiver"] = self.participants.answer(scope_id, receiver_id, stored["receiver"], cache)
        return out

    async def delivery_status(self, request: Request, body: Any) -> Response:
        scope_id = self.emulator.connected_scope(request.path_params["scope_id"])
        if self._message_in_scope(scope_id, request.path_params["msg_id"], None) is None:
            raise ApiError(404, "message not found", "MESSAGE_NOT_FOUND")
        body = obj(body)
        status = body.get("delivery_status", body.get("status_code"))
        if not is_int(status) or status not in (1, 2, -1):
            raise ApiError(400, "delivery_status must be 1, 2 or -1", "INVALID_DELIVERY_STATUS")
        if status == -1 and not (is_int(body.get("error_code")) and isinstance(body.get("error"), str)):
            raise ApiError(400, "error_code and error are required with status -1", "INVALID_DELIVERY_STATUS")
        return Response(status_code=200)

    async def react(self, request: Request, body: Any) -> Response:
        """A reaction to a message, or taking it back (§3.8): 200 with no body, 404 for an unknown message."""
        scope_id = self.emulator.connected_scope(request.path_params["scope_id"])
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
        if not (self.participants.by_ref and user.get("ref_id")):
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
