"""The REST v4 subset (§6): the account, its users, contacts, links of chats to contacts, and OAuth tokens."""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..contacts import contact_fields, contact_matches, contact_problems, request_id
from ..envelopes import hal
from ..inputs import ApiError, is_int, query_int
from . import Handlers


def _page(request: Request) -> tuple[int, int]:
    page = query_int(request.query_params.get("page", "1"), "page")
    limit = query_int(request.query_params.get("limit", "50"), "limit")
    if page < 1 or not 1 <= limit <= 250:
        raise ApiError(400, "page must be >= 1 and limit between 1 and 250")
    return page, limit


def _with_amojo_id(request: Request) -> bool:
    return "amojo_id" in request.query_params.get("with", "").split(",")


class RestHandlers(Handlers):
    """amoCRM's own API, as far as a chat integration uses it."""

    async def account(self, request: Request, body: Any) -> Response:
        answer: dict[str, Any] = {"id": 30000001, "name": "amojo-etl emulator", "subdomain": "emulator"}
        if _with_amojo_id(request):
            answer["amojo_id"] = self.config.account_id
        return hal(answer)

    async def users(self, request: Request, body: Any) -> Response:
        page, limit = _page(request)
        with_amojo = _with_amojo_id(request)
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
        found = [c for c in self.store.contacts() if not query or contact_matches(c, query)]
        chunk = found[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status_code=204)
        items = [{"id": c["id"], "name": c["name"], "custom_fields_values": c["body"].get("custom_fields_values")}
                 for c in chunk]
        return hal({"_page": page, "_embedded": {"contacts": items}})

    def _check_batch(self, batch: Any, what: str) -> None:
        """A REST batch: a non-empty array of at most `rest_batch_max` (Q13 ⚠️: amoCRM documents no maximum)."""
        if not isinstance(batch, list) or not batch:
            raise ApiError(400, f"the body must be a non-empty array of {what}")
        if len(batch) > self.config.rest_batch_max:
            raise ApiError(400, f"at most {self.config.rest_batch_max} {what} per request, not {len(batch)}")

    def _create_contacts(self, body: Any) -> Response:
        self._check_batch(body, "contacts")
        refused = [{"request_id": request_id(item, index), "errors": problems}
                   for index, item in enumerate(body) if (problems := contact_problems(item))]
        if refused:  # amoCRM's validation-errors envelope (§5.3); nothing of the batch is created
            raise ApiError(400, "Request validation failed", extra={"validation-errors": refused})
        created = []
        for index, item in enumerate(body):
            phones, emails = contact_fields(item)
            name = item.get("name") or " ".join(filter(None, [item.get("first_name"), item.get("last_name")]))
            contact_id = self.store.create_contact(item, str(name or ""), phones, emails)
            created.append({"id": contact_id, "request_id": request_id(item, index)})
        return hal({"_embedded": {"contacts": created}})

    async def contact_chats(self, request: Request, body: Any) -> Response:
        if request.method == "POST":
            return self._link_chats(body)
        chat_ids = request.query_params.getlist("chat_id[]") + request.query_params.getlist("chat_id")
        contact_ids = [query_int(v, "contact_id[]") for v in request.query_params.getlist("contact_id[]")]
        if not chat_ids and not contact_ids:
            raise ApiError(400, "filter by chat_id[] or contact_id[]")
        links = self.store.links(chat_ids or None, contact_ids or None)
        if not links:
            return Response(status_code=204)
        items = [{"chat_id": r["chat_id"], "contact_id": r["contact_id"], "id": r["id"]} for r in links]
        return hal({"_total_items": len(items), "_embedded": {"chats": items}})

    def _link_chats(self, body: Any) -> Response:
        """Link chats to contacts, all or none: every link is checked before any is made."""
        self._check_batch(body, "links")
        for index, item in enumerate(body):
            if not isinstance(item, dict) or not is_int(item.get("contact_id")) \
                    or not isinstance(item.get("chat_id"), str):
                raise ApiError(400, f"link {index} needs contact_id (int) and chat_id (string)")
            if self.store.chat(item["chat_id"]) is None:
                raise ApiError(400, f"link {index}: chat {item['chat_id']} not found")
            if self.store.contact(item["contact_id"]) is None:
                raise ApiError(400, f"link {index}: contact {item['contact_id']} not found")
        made = []
        for index, item in enumerate(body):
            link_id = self.store.link(item["chat_id"], item["contact_id"])
            made.append({"chat_id": item["chat_id"], "contact_id": item["contact_id"], "id": link_id,
                         "request_id": str(item.get("request_id", index))})
        return hal({"_total_items": len(made), "_embedded": {"chats": made}})

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
