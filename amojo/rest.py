"""The REST v4 client: the account, users, contacts and chat<->contact links (amojo-api.md §6)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import httpx

from .errors import AmojoError, InvalidRequest, Unauthorized
from .transport import Limiter, RetryPolicy, TokenBucket, Transport, connection_pool

log = logging.getLogger(__name__)

USERS_PAGE = 250
"""The longest page of a REST v4 list (users, contacts)."""
BATCH_MOST = 250
"""Contacts or links per write request, first tried: the list endpoints' longest page. ⚠️ The write batch is
undocumented (§5.4, Q13); amoCRM documents 50 for complex leads, so a batch refused as too large (400, 413) is sent
again in batches of `BATCH_SAFE`, and the client keeps that size."""
BATCH_SAFE = 50
TOO_LARGE = (400, 413)
"""The statuses with which amoCRM (or a proxy before it) may refuse a write batch for its size."""
LINKS_READ = 50
"""Chat ids per read of links: 50 UUIDs keep the query string under 3 KB, well inside any proxy's URL limit."""


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


class BearerAuth(httpx.Auth):
    """A long-lived token (§6.7), sent as it is."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class TokenPair(NamedTuple):
    access_token: str
    refresh_token: str
    expires_at: float


class TokenStore(Protocol):
    """Where the current OAuth pair lives between runs (and between workers)."""

    def load(self) -> TokenPair | None: ...

    def save(self, pair: TokenPair) -> None: ...


@dataclass(frozen=True)
class OAuthApp:
    """The integration's OAuth identity (§6.6)."""

    client_id: str
    client_secret: str
    redirect_uri: str


class RefreshingAuth(httpx.Auth):
    """An OAuth pair whose refresh token is single-use (§6.6).

    Each new pair is saved to the store the moment it arrives, before it is used, so that a run that dies
    afterwards leaves the valid pair behind. One refresh at a time; a refresh that another worker already made is
    picked up from the store instead of spending a token that is no longer valid.
    """

    def __init__(self, base_url: str, app: OAuthApp, store: TokenStore, first_refresh_token: str | None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base_url = base_url
        self._app = app
        self._store = store
        self._first = first_refresh_token
        self._transport = transport
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "RefreshingAuth(***)"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("RefreshingAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        pair = await self._current()
        request.headers["Authorization"] = f"Bearer {pair.access_token}"
        response = yield request
        if response.status_code == 401:
            pair = await self._renew(stale=pair)
            request.headers["Authorization"] = f"Bearer {pair.access_token}"
            yield request

    async def _current(self) -> TokenPair:
        async with self._lock:
            pair = self._store.load()
            if pair is None:
                return await self._refresh(self._first, known=None)
            if pair.expires_at - 60 < time.time():
                return await self._refresh(pair.refresh_token, known=pair)
            return pair

    async def _renew(self, stale: TokenPair) -> TokenPair:
        async with self._lock:
            pair = self._store.load()
            if pair is not None and pair.access_token != stale.access_token:
                return pair  # renewed meanwhile, by another request or another worker
            return await self._refresh(pair.refresh_token if pair else self._first, known=pair)

    async def _refresh(self, refresh_token: str | None, known: TokenPair | None) -> TokenPair:
        if not refresh_token:
            raise Unauthorized("no OAuth pair yet: set AMOJO_ETL_OAUTH_REFRESH_TOKEN to the integration's refresh "
                               "token (it is used once, then the ledger keeps the pairs that follow)")
        body = {"client_id": self._app.client_id, "client_secret": self._app.client_secret,
                "grant_type": "refresh_token", "refresh_token": refresh_token, "redirect_uri": self._app.redirect_uri}
        async with httpx.AsyncClient(base_url=self._base_url, transport=self._transport, timeout=30) as client:
            try:
                # Retried like every request, 5xx included: a refresh that landed spent its token, so its repeat
                # is refused below, as it would have been without the repeat.
                response = await Transport(client, "OAuth").request("POST", "/oauth2/access_token", json_body=body)
            except AmojoError as exc:
                if exc.retryable:
                    raise  # amoCRM did not answer in time, or failed, through every retry: the run fails for that
                refused = exc
            else:
                answer = response.json()
                pair = TokenPair(answer["access_token"], answer["refresh_token"],
                                 time.time() + float(answer.get("expires_in", 86400)))
                self._store.save(pair)
                return pair
        latest = self._store.load()
        if latest is not None and latest.refresh_token != refresh_token:
            return latest  # another worker spent it first and saved the pair that came back
        raise Unauthorized(
            f"the OAuth refresh was refused ({refused.status}): the refresh token is spent, expired or revoked."
            " Authorise the integration again and set AMOJO_ETL_OAUTH_REFRESH_TOKEN to the new refresh token.",
            status=refused.status)


class RestClient:
    """Async REST v4 client behind a long-lived token or an OAuth pair, held to `rate` requests per second, or to
    `limiter` when other clients of the same account share one (and to `budget`, when the account's budget is
    shared with other processes)."""

    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth | str,
        *,
        rate: float = 7.0,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        budget: Limiter | None = None,
        limiter: Limiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=BearerAuth(auth) if isinstance(auth, str) else auth,
            timeout=timeout,
            headers={"Content-Type": "application/json"},
            transport=transport or connection_pool(8),
        )
        limiters: list[Limiter] = [limiter or TokenBucket(rate, burst=1)]
        if budget is not None:
            limiters.append(budget)
        self._transport = Transport(self._http, "REST v4", retry=retry, limiters=limiters)
        self.batch_size = BATCH_MOST
        """Contacts or links per write request; falls to `BATCH_SAFE` once amoCRM refuses a larger batch."""
        self.guards = self._transport.guards  # checks run before every request (Api.guard)

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

    async def contacts_page(self, page: int) -> list[dict[str, Any]]:
        """One page of the account's contacts (id, name, custom_fields_values), 250 a page; empty after the last."""
        # In id order, so that contacts created by others while the pages are read come last, not in between.
        response = await self._transport.request("GET", "/api/v4/contacts",
                                                 params={"page": page, "limit": USERS_PAGE, "order[id]": "asc"})
        if response.status_code == 204 or not response.content:
            return []
        return response.json().get("_embedded", {}).get("contacts", [])

    async def create_contacts(self, contacts: list[dict[str, Any]]) -> list[int]:
        """Create contacts, `batch_size` a request; ids come back in the order given."""
        ids: list[int] = []

        async def send(batch: list[dict[str, Any]]) -> None:
            body = [dict(c, request_id=str(i)) for i, c in enumerate(batch)]
            # Not idempotent: after a lost answer the caller finds what was created first (`amojo.resolve`).
            response = await self._transport.request("POST", "/api/v4/contacts", json_body=body, idempotent=False)
            by_request = {str(item.get("request_id")): item["id"] for item in response.json()["_embedded"]["contacts"]}
            ids.extend(by_request[str(i)] for i in range(len(body)))

        await self._in_batches(contacts, send)
        return ids

    async def link_chats(self, links: list[ChatLink]) -> list[ChatLink]:
        """Link chats to contacts, `batch_size` a request, so that amoCRM creates no unsorted lead for them."""
        made: list[ChatLink] = []

        async def send(batch: list[ChatLink]) -> None:
            body = [{"contact_id": link.contact_id, "chat_id": link.chat_id, "request_id": str(i)}
                    for i, link in enumerate(batch)]
            response = await self._transport.request("POST", "/api/v4/contacts/chats", json_body=body,
                                                     idempotent=False)
            made.extend(ChatLink(item["chat_id"], item["contact_id"], item.get("id"))
                        for item in response.json()["_embedded"]["chats"])

        await self._in_batches(links, send)
        return made

    async def _in_batches(self, items: list[Any], send: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Send the items `batch_size` at a time. A batch larger than `BATCH_SAFE` that amoCRM refuses (400, 413:
        nothing of it was done) is sent again in smaller batches, and so is everything after it."""
        start = 0
        while start < len(items):
            batch = items[start:start + self.batch_size]
            try:
                await send(batch)
            except InvalidRequest as exc:
                if len(batch) <= BATCH_SAFE or exc.may_have_landed or exc.status not in TOO_LARGE:
                    raise  # 414, 415, 422 are about what the batch says: smaller ones would say it again
                log.warning("amoCRM refused a batch of %d (%s): sending %d a request from now on",
                            len(batch), exc.status, BATCH_SAFE)
                self.batch_size = BATCH_SAFE
                continue
            start += len(batch)

    async def chat_links(self, chat_ids: list[str]) -> list[ChatLink]:
        """The existing links of these chats; empty when none (204)."""
        found: list[ChatLink] = []
        for start in range(0, len(chat_ids), LINKS_READ):
            params = [("chat_id[]", chat_id) for chat_id in chat_ids[start : start + LINKS_READ]]
            response = await self._transport.request("GET", "/api/v4/contacts/chats", params=params)
            if response.status_code == 204 or not response.content:
                continue
            for item in response.json().get("_embedded", {}).get("chats", []):
                found.append(ChatLink(item["chat_id"], item["contact_id"], item.get("id")))
        return found
