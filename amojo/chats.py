"""The Chats API ("amojo") client: connect, chats, messages and history of one channel (amojo-api.md §3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from .signing import AmojoAuth
from .transport import Limiter, RetryPolicy, TokenBucket, Transport, connection_pool

BASE_PATH = "/v2/origin/custom"
HISTORY_PAGE = 50
HISTORY_RESTARTS = 3
"""Times a history read starts again from the newest because the history moved under it (ChatsClient.history)."""


@dataclass(frozen=True)
class SentMessage:
    """amojo's answer to new_message: its own message id, and ours echoed back."""

    amojo_id: str
    msgid: str | None
    chat_id: str | None


class ChatsClient:
    """Async client for one registered channel; every request signed by `AmojoAuth`."""

    def __init__(
        self,
        base_url: str,
        channel_id: str,
        channel_secret: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 64,
        retry: RetryPolicy | None = None,
        rate: float | None = None,
        budget: Limiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.scope_id: str | None = None
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=AmojoAuth(channel_secret),
            timeout=timeout,
            transport=transport or connection_pool(max_connections),
        )
        limiters: list[Limiter] = [TokenBucket(rate, burst=max(1, int(rate) // 10))] if rate else []
        if budget is not None:
            limiters.append(budget)
        self._transport = Transport(self._http, "amojo", retry=retry, limiters=limiters)
        self.guards = self._transport.guards  # checks run before every request (Api.guard)

    async def __aenter__(self) -> ChatsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _scope(self) -> str:
        if self.scope_id is None:
            raise RuntimeError("connect() the channel before using the scope")
        return self.scope_id

    async def connect(self, account_id: str, title: str = "amojo-etl") -> str:
        """Connect the channel to the account (idempotent); remembers and returns the `scope_id`."""
        body = {"account_id": account_id, "title": title, "hook_api_version": "v2"}
        response = await self._transport.request("POST", f"{BASE_PATH}/{self.channel_id}/connect", json_body=body)
        self.scope_id = response.json()["scope_id"]
        return self.scope_id

    async def disconnect(self, account_id: str) -> None:
        await self._transport.request(
            "DELETE", f"{BASE_PATH}/{self.channel_id}/disconnect", json_body={"account_id": account_id}
        )

    async def create_chat(self, chat: dict[str, Any]) -> str:
        """Create the chat for a conversation (idempotent on `conversation_id`); returns the amojo chat id."""
        response = await self._transport.request("POST", f"{BASE_PATH}/{self._scope()}/chats", json_body=chat)
        return response.json()["id"]

    async def new_message(self, payload: dict[str, Any]) -> SentMessage:
        """Import one message; `payload` is the `payload` object of §3.4."""
        return await self._post_event("new_message", payload)

    async def edit_message(self, payload: dict[str, Any]) -> SentMessage:
        return await self._post_event("edit_message", payload)

    async def _post_event(self, event_type: str, payload: dict[str, Any]) -> SentMessage:
        body = {"event_type": event_type, "payload": payload}
        response = await self._transport.request("POST", f"{BASE_PATH}/{self._scope()}", json_body=body)
        answer = response.json() if response.content else {}
        sent = answer.get("new_message") or answer.get(event_type) or {}
        return SentMessage(
            amojo_id=sent.get("msgid", ""), msgid=sent.get("ref_id"), chat_id=sent.get("conversation_id")
        )

    async def history_page(self, chat_id: str, offset: int = 0, limit: int = HISTORY_PAGE) -> list[dict[str, Any]]:
        """One page of a chat's history, newest first; empty for an unknown or empty chat (204)."""
        response = await self._transport.request(
            "GET",
            f"{BASE_PATH}/{self._scope()}/chats/{chat_id}/history",
            params={"offset": offset, "limit": limit},
        )
        if response.status_code == 204 or not response.content:
            return []
        return response.json().get("messages", [])

    async def history(self, chat_id: str, *, older_than_ms: int | None = None,
                      restarts: int = HISTORY_RESTARTS) -> AsyncIterator[dict[str, Any]]:
        """Every message of a chat, newest first, each once (`_identity`); stops early once past `older_than_ms`.

        Pages are counted from the newest message, so what other runs send while the history is read moves it: a
        new message pushes the rest back (the next page repeats one already read), and one imported with an older
        time lands among the pages already read, where this read would never see it. So pages overlap by one
        message: a page that does not begin with the last message of the page before shows that the history moved,
        and the read starts again from the newest, yielding only what it had not yet. After `restarts` such starts,
        the last read goes on as the pages come.
        """
        seen: set[tuple] = set()
        for attempt in range(restarts + 1):
            moved = False
            async with aclosing(self._pages(chat_id, older_than_ms)) as pages:
                async for page, moved_before in pages:
                    moved = moved or moved_before
                    if moved_before and attempt < restarts:
                        break  # from the newest again
                    for item in page:
                        if (identity := _identity(item)) not in seen:
                            seen.add(identity)
                            yield item
            if not moved:
                return

    async def _pages(self, chat_id: str, older_than_ms: int | None
                     ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """One read of the history, page by page, each after the first meant to begin with the last message of the
        one before; with each page, whether it did not (the history moved under the read)."""
        offset, anchor = 0, None
        while True:
            page = await self.history_page(chat_id, offset)
            yield page, anchor is not None and (not page or _identity(page[0]) != anchor)
            if len(page) < HISTORY_PAGE or (older_than_ms is not None and _msec(page[-1]) < older_than_ms):
                return
            anchor = _identity(page[-1])
            offset += len(page) - 1


def _identity(item: dict[str, Any]) -> tuple:
    """What tells one history item from another: its amojo id; for an item without one, what it says, who said it
    and when, with our msgid (the overlap and the restarts must not yield such an item twice)."""
    message = item.get("message", {})
    if message.get("id"):
        return ("id", message["id"])
    return ("item", message.get("client_id"), _msec(item), (item.get("sender") or {}).get("id"), message.get("text"))


def _msec(item: dict[str, Any]) -> int:
    return int(item.get("msec_timestamp") or int(item.get("timestamp", 0)) * 1000)
