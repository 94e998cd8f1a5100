"""The emulated amoCRM: one account with its state, faults, clock and request log, served as a Starlette app.

Behaviour follows amojo-api.md; where it is marked ⚠️, the §9 default is used and the alternative is a switch in
`EmulatorConfig`. Nothing here is shaped after our own client. The app is assembled in `routes` from the handlers
(one module per API) and the middleware (one module per job).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from .config import EmulatorConfig, Faults
from .injector import Injector
from .inputs import ApiError
from .mediafetch import MediaFetcher
from .participants import Participants
from .requestlog import RequestLog
from .routes import routes, routing_error
from .store import Store


class Emulator:
    """One emulated account: its config, state, faults, clock and request log. Also the Python API for tests."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.store = Store(self.config.state_path)
        self.participants = Participants(self.config, self.store)
        self._clock_offset = timedelta(0)
        # The clock is looked up at each use: a test stops it by replacing `now`.
        self.injector = Injector(self.config.faults, lambda: self.now())
        self.requests = RequestLog()
        self.media = MediaFetcher(self.config)
        self.store.put_token(self.config.token, "access")
        if self.config.oauth_refresh_token and not self.store.token_state(self.config.oauth_refresh_token):
            self.store.put_token(self.config.oauth_refresh_token, "refresh")
        self.app = Starlette(routes=routes(self), exception_handlers={HTTPException: routing_error})

    @property
    def scope_id(self) -> str:
        return f"{self.config.channel_id}_{self.config.account_id}"

    def connected_scope(self, scope_id: str) -> str:
        """`scope_id` if it is this account's scope and the channel is connected, else an ApiError 404."""
        if scope_id != self.scope_id or not self.store.is_connected(scope_id):
            raise ApiError(404, "scope not found or channel not connected", "SCOPE_NOT_FOUND")
        return scope_id

    def now(self) -> datetime:
        return datetime.now(UTC) + self._clock_offset

    def set_clock(self, moment: datetime | None) -> None:
        """Pretend it is `moment` (None: the real time), e.g. to accept the official vectors' Dates."""
        self._clock_offset = timedelta(0) if moment is None else moment - datetime.now(UTC)

    def set_faults(self, faults: Faults) -> None:
        self.injector.replace(faults)

    def merge_contacts(self, survivor: int, merged: int) -> None:
        """What a person merging duplicates in amoCRM does: `merged`'s chats move to `survivor`, its id is gone."""
        if not self.store.merge_contacts(survivor, merged):
            raise ApiError(400, f"cannot merge contact {merged} into {survivor}: both must exist and differ")

    def delete_contact(self, contact_id: int) -> None:
        """What a person deleting a contact in amoCRM does: its chats are left unlinked, its id is never reused."""
        if not self.store.drop_contact(contact_id):
            raise ApiError(400, f"there is no contact {contact_id}")

    @property
    def request_log(self) -> list[tuple[float, str, str, int]]:
        """The request log, `(time, api, endpoint, status)` each, oldest first; clear() it to start afresh."""
        return self.requests.entries

    def request_counts(self) -> dict[str, int]:
        """Requests by `api endpoint status`."""
        return self.requests.counts()

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
            "unhandled": list(self.requests.unhandled),
            "media_fetches": self.media.snapshot(),
        }
