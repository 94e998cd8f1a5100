"""amoCRM's view of the emulated account, as pages a person reads in a browser: the chats with their contacts, a
chat's messages as a manager sees them, the contact card, the unsorted leads and notifications, and the account at
a glance. Server-rendered from `templates/` (Jinja2, autoescaped: message texts are hostile), no JavaScript.

The pages are no API of amoCRM's: they take none of the APIs' middleware (no signature, token, rate limit or
fault), are not in the request log, and are answered with a policy that lets no script run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .viewmodel import CHATS_PER_PAGE, AccountView

if TYPE_CHECKING:
    from .app import Emulator

VIEW_PATH = "/_emulator/ui"
# No script at all, images from anywhere a message points (amoCRM shows them too), and no Referer to those hosts.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_templates = Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.PackageLoader("amojo.emulator", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined))


def view_routes(emulator: Emulator) -> list[Route]:
    """The pages' routes, and `/` leading to them."""
    pages = ViewPages(emulator)
    return [
        Route("/", pages.root, methods=["GET"]),
        Route(VIEW_PATH, pages.chats, methods=["GET"]),
        Route(f"{VIEW_PATH}/chats/{{chat_id}}", pages.chat, methods=["GET"]),
        Route(f"{VIEW_PATH}/contacts/{{contact_id:int}}", pages.contact, methods=["GET"]),
        Route(f"{VIEW_PATH}/unsorted", pages.unsorted, methods=["GET"]),
        Route(f"{VIEW_PATH}/account", pages.account, methods=["GET"]),
    ]


class ViewPages:
    """One handler per page; each reads the account afresh, so a page reloaded during an import shows its progress."""

    def __init__(self, emulator: Emulator) -> None:
        self.view = AccountView(emulator)

    async def root(self, request: Request) -> Response:
        return RedirectResponse(VIEW_PATH, status_code=302)

    async def chats(self, request: Request) -> Response:
        page = request.query_params.get("page", "1")
        number = int(page) if page.isascii() and page.isdigit() and 0 < int(page) < 10**9 else 1
        glance = self.view.glance()
        pages = max(1, -(-glance.counts["chats"] // CHATS_PER_PAGE))
        return _page(request, "chats.html", title="Chats", chats=self.view.chat_lines(number), page=number,
                     pages=pages, glance=glance)

    async def chat(self, request: Request) -> Response:
        chat = self.view.chat(request.path_params["chat_id"])
        if chat is None:
            return _page(request, "missing.html", status=404, title="No such chat", what="chat")
        return _page(request, "chat.html", title=f"Chat with {chat['client']}", chat=chat)

    async def contact(self, request: Request) -> Response:
        contact = self.view.contact(request.path_params["contact_id"])
        if contact is None:
            return _page(request, "missing.html", status=404, title="No such contact", what="contact")
        return _page(request, "contact.html", title=f"Contact {contact['name']}", contact=contact)

    async def unsorted(self, request: Request) -> Response:
        return _page(request, "unsorted.html", title="Unsorted and notifications", **self.view.unsorted())

    async def account(self, request: Request) -> Response:
        return _page(request, "account.html", title="The account at a glance", glance=self.view.glance())


def _page(request: Request, template: str, *, status: int = 200, **context: Any) -> Response:
    response = _templates.TemplateResponse(request, template, {"base": VIEW_PATH, **context}, status_code=status)
    response.headers.update(HEADERS)
    return response
