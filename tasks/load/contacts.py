"""Where a client's contact is resolved: found by normalised phone, then email, or created in batches; one client,
one contact, whatever run or crash came before.

A search that matches several contacts quarantines the client's conversations: sending them to the wrong contact
cannot be undone, and a person can tell which one is right. Every contact we create carries our key
(`contact_key`) in its IM field, and the ledger notes a batch of creates before it is sent (`effects`, kind
"contact"): a create whose answer was lost, in this run or in one that died waiting for it, is resolved by
searching those keys (`amojo.resolve`), and only the clients not found are created again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from amojo.errors import FATAL, AmojoError
from amojo.payloads import contact_body, contact_key
from amojo.resolve import landing_window, resolve
from amojo.rest import BATCH_SAFE, USERS_PAGE
from etl.api import Api
from etl.ledger import ChatState

from .context import LoadContext, bounded


@dataclass
class ContactIndex:
    """The account's contacts by the last ten digits of each phone, by email, and by our key: one page-through
    (250 a request) in place of a search per client, when there are more clients to resolve than pages. Matches as
    a search does: phone first, then email; several contacts for one client is ambiguous."""

    phones: dict[str, list[int]] = field(default_factory=dict)
    emails: dict[str, list[int]] = field(default_factory=dict)
    keys: dict[str, list[int]] = field(default_factory=dict)
    read_at: float = float("-inf")
    """The ledger's clock when the read began: a create noted after it (less the request's timeouts) is not in it."""

    @classmethod
    async def read(cls, api: Api, pages_at_most: int) -> ContactIndex | None:
        """Every contact of the account; None when that takes more than `pages_at_most` pages (a search per client
        is cheaper then) or a page cannot be read (the searches will say what is wrong)."""
        if pages_at_most < 1:
            return None
        index = cls()
        for page in range(1, pages_at_most + 1):
            try:
                contacts = await api.rest.contacts_page(page)
            except AmojoError as exc:
                if isinstance(exc, FATAL):
                    raise
                return None
            for contact in contacts:
                index.add(contact)
            if len(contacts) < USERS_PAGE:
                return index
        return None

    def add(self, contact: dict[str, Any]) -> None:
        for field_ in contact.get("custom_fields_values") or []:
            for value in field_.get("values") or []:
                text = str(value.get("value", ""))
                if field_.get("field_code") == "PHONE" and len(digits := re.sub(r"\D", "", text)) >= 10:
                    self.phones.setdefault(digits[-10:], []).append(contact["id"])
                elif field_.get("field_code") == "EMAIL" and text.strip():
                    self.emails.setdefault(text.strip().lower(), []).append(contact["id"])
                elif text.startswith("amojoetl"):
                    self.keys.setdefault(text, []).append(contact["id"])

    def by_key(self, key: str) -> list[int]:
        return sorted(self.keys.get(key, []))

    def matches(self, phone: Any, email: Any) -> list[int]:
        if isinstance(phone, str) and (found := self.phones.get(re.sub(r"\D", "", phone)[-10:])):
            return sorted(set(found))
        if isinstance(email, str) and (found := self.emails.get(email.strip().lower())):
            return sorted(set(found))
        return []


async def contact_index(ctx: LoadContext, conversations: pd.DataFrame,
                        states: dict[str, ChatState]) -> ContactIndex | None:
    """The account's contacts read once, when that costs at most half the searches the clients to resolve would."""
    needing = conversations[[c not in states or states[c].contact_id is None or bool(states[c].quarantine)
                             for c in conversations.index]]
    keys = needing["client_key"].drop_duplicates()
    unknown = len(keys) - len(ctx.ledger.contacts.ids(keys))
    if unknown < 2:
        return None
    started = ctx.ledger.clock()
    if (index := await ContactIndex.read(ctx.api, pages_at_most=unknown // 2)) is not None:
        index.read_at = started
    return index


async def resolve_contacts(ctx: LoadContext, conversations: pd.DataFrame, index: ContactIndex | None) -> None:
    """Find each client's contact; a client another run is finding or creating right now waits for it, so that
    no client gets two contacts."""
    states = ctx.ledger.chats.states(conversations.index)
    needing = conversations[[c in states and (states[c].contact_id is None or bool(states[c].quarantine))
                             and c not in ctx.report.stopped for c in conversations.index]]
    async for mine in ctx.claims.turns("client", needing["client_key"]):
        await ClientContacts(ctx, needing[needing["client_key"].isin(mine)], index).resolve()


class ClientContacts:
    """One claimed set of clients: their contacts found in the account `index` when it was read (else by a search
    per client), the rest created in batches, and their conversations pointed at them (or quarantined)."""

    def __init__(self, ctx: LoadContext, needing: pd.DataFrame, index: ContactIndex | None) -> None:
        self.ctx, self.needing, self.index = ctx, needing, index
        clients = needing.drop_duplicates("client_key")
        self.known = ctx.ledger.contacts.ids(clients["client_key"])
        self.unknown = [c for c in clients.itertuples() if c.client_key not in self.known]
        self.uncertain = ctx.ledger.effects.uncertain("contact", [c.client_key for c in self.unknown])
        self.ambiguous: dict[str, str] = {}
        self.failed: dict[str, AmojoError] = {}

    async def resolve(self) -> None:
        ctx = self.ctx
        # Searches overlap their latency; the REST client's token bucket still keeps them under the rate limit.
        to_create: list[Any] = []
        for client, found in await bounded(ctx.concurrency, [self._look_up(c) for c in self.unknown]):
            if client.client_key in self.failed:
                continue
            if len(found) == 1:
                self.known[client.client_key] = found[0]
                ctx.ledger.contacts.save([{"client_key": client.client_key, "contact_id": found[0],
                                           "created": False}])
                ctx.report.contacts_matched += 1
            elif len(found) > 1:
                self.ambiguous[client.client_key] = (f"ambiguous contact: {len(found)} contacts match "
                                                     f"({', '.join(map(str, found))})")
            else:
                to_create.append(client)
        ctx.ledger.effects.settle("contact", [c.client_key for c in self.unknown if c.client_key in self.known])
        first = 0
        while first < len(to_create):
            size = ctx.api.rest.batch_size  # smaller once amoCRM has refused a larger batch
            await self._create(to_create[first:first + size])
            first += size
        self._point_conversations()

    def _point_conversations(self) -> None:
        """Each conversation gets its client's contact, or its quarantine; those whose client failed stop."""
        for conversation in self.needing.itertuples():
            if conversation.client_key in self.failed:
                self.ctx.report.stop(conversation.Index, self.failed[conversation.client_key])
        self.ctx.ledger.chats.save([
            {"conversation_id": c.Index, "contact_id": self.known.get(c.client_key),
             "quarantine": self.ambiguous.get(c.client_key)}
            for c in self.needing.itertuples() if c.client_key not in self.failed
        ])

    async def _look_up(self, client: Any) -> tuple[Any, list[int]]:
        if self.index is None:
            return await self._search(client)
        if client.client_key in self.uncertain:
            if self.uncertain[client.client_key] + landing_window(self.ctx.api.timeout_s) > self.index.read_at:
                # A create may have been on its way when the index was read (or noted since): the index cannot
                # show it, however long ago it was noted. Wait for it, then search.
                return await self._search(client)
            if ours := self.index.by_key(contact_key(client.client_id)):
                return client, ours[:1]
        return client, self.index.matches(client.phone, client.email)

    async def _search(self, client: Any) -> tuple[Any, list[int]]:
        api = self.ctx.api
        try:
            if client.client_key in self.uncertain:
                # A create another run sent just before it died may still be on its way: it lands within the
                # landing window of being noted, or never.
                wait = self.uncertain[client.client_key] + landing_window(api.timeout_s) - self.ctx.ledger.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if (ours := await _search_key(api, client)) is not None:
                    return client, [ours]
            # The last ten digits find the contact however its phone was typed into amoCRM (+7…, 8…, spaces).
            for query in (client.phone[-10:] if isinstance(client.phone, str) else None,
                          client.email if isinstance(client.email, str) else None):
                if query and (found := await api.rest.search_contacts(query)):
                    return client, found
        except AmojoError as exc:
            self.failed[client.client_key] = exc
        return client, []

    async def _create(self, clients: list[Any]) -> None:
        """Create one batch of contacts, noted in the ledger as under way before it is sent; what may have landed
        is found by each client's key, and only the others are created again."""
        ledger, keys = self.ctx.ledger, [c.client_key for c in clients]
        ledger.effects.expect("contact", keys)
        remaining = clients

        async def create() -> None:
            ids = await self.ctx.api.rest.create_contacts([contact_body(c) for c in remaining])
            self._save_created({c.client_key: i for c, i in zip(remaining, ids, strict=True)})

        async def read_back() -> bool:
            nonlocal remaining
            landed = await _created(self.ctx.api, remaining)
            self._save_created({c.client_key: i for c, i in zip(remaining, landed, strict=True) if i is not None})
            remaining = [c for c in remaining if c.client_key not in self.known]
            return not remaining

        # A create answered 5xx or not at all may be stored later still: read back only once it would have landed.
        error = await resolve(create, read_back, settle_s=landing_window(self.ctx.api.timeout_s))
        if error is None:
            ledger.effects.settle("contact", keys)
        else:
            # Still uncertain where a create may have landed: the next run searches these clients' keys first.
            self.failed.update((c.client_key, error) for c in remaining)

    def _save_created(self, ids: dict[str, int]) -> None:
        self.ctx.ledger.contacts.save([{"client_key": k, "contact_id": i, "created": True} for k, i in ids.items()])
        self.known.update(ids)
        self.ctx.report.contacts_created += len(ids)


async def _created(api: Api, clients: list[Any]) -> list[int | None]:
    """The contact we created for each client, if any: by one page-through of the account when that is cheaper
    than a search per client's key."""
    index = await ContactIndex.read(api, pages_at_most=len(clients) - 1) if len(clients) > 1 else None
    if index is None:
        return await bounded(BATCH_SAFE, [_search_key(api, c) for c in clients])
    return [min(found) if (found := index.by_key(contact_key(c.client_id))) else None for c in clients]


async def _search_key(api: Api, client: Any) -> int | None:
    """The contact we created for this client, found by the key it carries; the first one if a create was
    repeated (before creates were resolved this way)."""
    found = await api.rest.search_contacts(contact_key(client.client_id))
    return min(found) if found else None
