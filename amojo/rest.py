"""The REST v4 client: the account, users, contacts and chat<->contact links (amojo-api.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from .transport import RetryPolicy, TokenBucket, Transport

USERS_PAGE = 250
CONTACTS_BATCH = 50
"""The create batch is undocumented (§5.4): send at most 50 per request to be safe."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str | None
    amojo_id: str | None


@dataclass(frozen=True)
class ChatLink:
    chat_id: str
    contact_id: int
    id: int | None = None


class _BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "_BearerAuth(token=***)"

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class RestClient:
    """Async REST v4 client behind a bearer token, held to `rate` requests per second (7 by amoCRM's rule)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        rate: float = 7.0,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=_BearerAuth(token),
            timeout=timeout,
            headers={"Content-Type": "application/json"},
            transport=transport,
        )
        self._transport = Transport(self._http, "REST v4", retry=retry, limiter=TokenBucket(rate, burst=1))

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def account_amojo_id(self) -> str:
        response = await self._transport.request("GET", "/api/v4/account", params={"with": "amojo_id"})
        return response.json()["amojo_id"]

    async def users(self) -> list[User]:
        """Every user of the account with its `amojo_id` (which may be null), all pages."""
        users: list[User] = []
        page = 1
        while True:
            response = await self._transport.request(
                "GET", "/api/v4/users", params={"with": "amojo_id", "page": page, "limit": USERS_PAGE}
            )
            if response.status_code == 204 or not response.content:
                return users
            body = response.json()
            for item in body.get("_embedded", {}).get("users", []):
                users.append(User(item["id"], item.get("name", ""), item.get("email"), item.get("amojo_id")))
            if page >= int(body.get("_page_count", page)):
                return users
            page += 1

    async def search_contacts(self, query: str) -> list[int]:
        """Ids of contacts matching `query` (phone digits, email or name); empty when nothing matches (204)."""
        response = await self._transport.request("GET", "/api/v4/contacts", params={"query": query})
        if response.status_code == 204 or not response.content:
            return []
        return [item["id"] for item in response.json().get("_embedded", {}).get("contacts", [])]

    async def create_contacts(self, contacts: list[dict[str, Any]]) -> list[int]:
        """Create contacts in batches; ids come back in the order given."""
        ids: list[int] = []
        for start in range(0, len(contacts), CONTACTS_BATCH):
            batch = [dict(c, request_id=str(i)) for i, c in enumerate(contacts[start : start + CONTACTS_BATCH])]
            response = await self._transport.request("POST", "/api/v4/contacts", json_body=batch)
            created = response.json()["_embedded"]["contacts"]
            by_request = {str(item.get("request_id")): item["id"] for item in created}
            ids.extend(by_request[str(i)] for i in range(len(batch)))
        return ids

    async def link_chats(self, links: list[ChatLink]) -> list[ChatLink]:
        """Link chats to contacts, so that amoCRM creates no unsorted lead for them."""
        made: list[ChatLink] = []
        for start in range(0, len(links), CONTACTS_BATCH):
            batch = [
                {"contact_id": link.contact_id, "chat_id": link.chat_id, "request_id": str(i)}
                for i, link in enumerate(links[start : start + CONTACTS_BATCH])
            ]
            response = await self._transport.request("POST", "/api/v4/contacts/chats", json_body=batch)
            for item in response.json()["_embedded"]["chats"]:
                made.append(ChatLink(item["chat_id"], item["contact_id"], item.get("id")))
        return made

    async def chat_links(self, chat_ids: list[str]) -> list[ChatLink]:
        """The existing links of these chats; empty when none (204)."""
        found: list[ChatLink] = []
        for start in range(0, len(chat_ids), CONTACTS_BATCH):
            params = [("chat_id[]", chat_id) for chat_id in chat_ids[start : start + CONTACTS_BATCH]]
            response = await self._transport.request("GET", "/api/v4/contacts/chats", params=params)
            if response.status_code == 204 or not response.content:
                continue
            for item in response.json().get("_embedded", {}).get("chats", []):
                found.append(ChatLink(item["chat_id"], item["contact_id"], item.get("id")))
        return found
