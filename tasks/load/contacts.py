"""Where a client's contact is resolved: found by normalised phone, then email, or created in batches; one person,
one contact, whatever run or crash came before.

A person is who amoCRM's search finds: clients whose phones end in the same ten digits (`+7 (915) 111-22-33`,
`8 915 111 22 33`, `79151112233`), or whose emails are the same once lowercased and stripped, are one person and
get one contact, in one batch, one run, or several runs at once. The product's matching rule, phone first, then
email, is applied the same way to what the account held before and to what we created: a client is looked up by
its phone (the contact the ledger's `persons` holds for it, else the account), and only when that finds nothing by
its email. So a client whose phone matches one contact and whose email matches another goes with the phone's.
Clients found nowhere are created one contact per person: those sharing a phone or an email within the batch,
directly or through another client, are one person, and its contact carries all their phones and emails, so that
a later search by any of them finds it (`_people`). A client with neither phone nor email is a person of its own.
Runs claim each client by every key it is found by (`person_keys`), so that two runs never resolve one person at
the same time; the first writes the person's contact to `persons`, and the next finds it there, though its
page-through of the account is older. A create whose outcome a run never wrote (it died) may have landed after
that page-through: while one may have, the account is searched instead.

A search that matches several contacts the product did not create quarantines the client's conversations: sending
them to the wrong contact cannot be undone, and a person can tell which one is right (merge them in amoCRM, then
run again). Among several matches, one we created is taken: it is the one the person's other clients went to.
Every contact we create carries our key (`contact_key`) in its IM field, and the ledger notes a batch of creates
before it is sent (`effects`, kind "contact"): a create whose answer was lost or was 5xx, in this run or in one that
died waiting for it, is resolved by searching those keys once it would have landed (`amojo.resolve.landing_window`,
one rule for both), and only the clients not found are created again.
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


def person_keys(phone: Any, email: Any) -> list[str]:
    """The keys amoCRM's search finds a client's contact by, in the order it is asked: the phone's last ten digits
    (as `search_contacts` sends them), then the email, lowercased and stripped."""
    keys = []
    if isinstance(phone, str) and len(digits := re.sub(r"\D", "", phone)) >= 10:
        keys.append(f"phone:{digits[-10:]}")
    if isinstance(email, str) and email.strip():
        keys.append(f"email:{email.strip().lower()}")
    return keys


async def resolve_contacts(ctx: LoadContext, conversations: pd.DataFrame, index: ContactIndex | None,
                           again: bool = False) -> None:
    """Find each client's contact; a person another run is finding or creating right now waits for it, so that
    no person gets two contacts. `again`: the clients' contacts were merged or deleted in amoCRM, so each is
    looked for by our key first (a merge keeps it on the surviving contact), then by phone and email."""
    states = ctx.ledger.chats.states(conversations.index)
    needing = conversations[[c in states and (states[c].contact_id is None or bool(states[c].quarantine))
                             and c not in ctx.report.stopped for c in conversations.index]]
    clients = needing.drop_duplicates("client_key")
    claims = {c.client_key: {f"client:{c.client_key}", *person_keys(c.phone, c.email)} for c in clients.itertuples()}
    async for mine in ctx.claims.turns("person", claims):
        await ClientContacts(ctx, needing[needing["client_key"].isin(mine)], index, again).resolve()


class ClientContacts:
    """One claimed set of clients: their contacts found in the ledger's `persons`, the account `index` when it was
    read (else by a search per client), the rest created in batches, one per person, and their conversations
    pointed at them (or quarantined)."""

    def __init__(self, ctx: LoadContext, needing: pd.DataFrame, index: ContactIndex | None,
                 again: bool = False) -> None:
        self.ctx, self.needing, self.index, self.again = ctx, needing, index, again
        noted = ctx.ledger.effects.latest("contact")
        if index is not None and noted is not None and noted + landing_window(ctx.api.timeout_s) > index.read_at:
            # A create of any client, by another run or one that died, may have landed after the account was read,
            # carrying a phone or email of these clients: the page-through cannot tell, a search can.
            self.index = None
        clients = needing.drop_duplicates("client_key")
        self.known = ctx.ledger.contacts.ids(clients["client_key"])
        self.unknown = [c for c in clients.itertuples() if c.client_key not in self.known]
        self.uncertain = ctx.ledger.effects.uncertain("contact", [c.client_key for c in self.unknown])
        self.persons = ctx.ledger.contacts.persons({k for c in self.unknown for k in person_keys(c.phone, c.email)})
        self.ambiguous: dict[str, str] = {}
        self.failed: dict[str, AmojoError] = {}

    async def resolve(self) -> None:
        ctx = self.ctx
        # Searches overlap their latency; the REST client's token bucket still keeps them under the rate limit.
        to_create: list[Any] = []
        for client, found, by in await bounded(ctx.concurrency, [self._look_up(c) for c in self.unknown]):
            if client.client_key in self.failed:
                continue
            if len(found) == 1:
                self.known[client.client_key] = found[0]
                ctx.ledger.contacts.save([{"client_key": client.client_key, "contact_id": found[0],
                                           "created": False}])
                # Found by a phone or email, the person is; found by our key, every key of the client is (it is ours).
                ctx.ledger.contacts.save_persons({by: found[0]} if by else
                                                 dict.fromkeys(person_keys(client.phone, client.email), found[0]))
                ctx.report.contacts_matched += 1
            elif len(found) > 1:
                self.ambiguous[client.client_key] = (
                    f"ambiguous contact: {len(found)} contacts match the client's {by.split(':')[0] if by else 'key'}"
                    f" ({', '.join(map(str, found))}); merge them in amoCRM, then run again")
            else:
                to_create.append(client)
        ctx.ledger.effects.settle("contact", [c.client_key for c in self.unknown if c.client_key in self.known])
        people = _people(to_create)
        first = 0
        while first < len(people):
            size = ctx.api.rest.batch_size  # smaller once amoCRM has refused a larger batch
            await self._create(dict(list(people.items())[first:first + size]))
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

    async def _look_up(self, client: Any) -> tuple[Any, list[int], str | None]:
        """The contacts the client's search finds, and the person key that found them: our own create of it
        first when one may have landed, then by phone, then by email, each in the ledger's `persons` first."""
        try:
            if (self.again or client.client_key in self.uncertain) and (ours := await self._ours(client)):
                return client, [ours], None
            for key in person_keys(client.phone, client.email):
                if key in self.persons:
                    return client, [self.persons[key]], key
                if found := await self._in_account(key):
                    return client, self._prefer_ours(found), key
        except AmojoError as exc:
            self.failed[client.client_key] = exc
        return client, [], None

    async def _ours(self, client: Any) -> int | None:
        """The contact a create of ours made for this client, if it did (one that may have landed, once it would
        have)."""
        if client.client_key not in self.uncertain:
            return await _search_key(self.ctx.api, client)
        since = self.uncertain[client.client_key] + landing_window(self.ctx.api.timeout_s)
        if self.index is not None and since <= self.index.read_at:
            ours = self.index.by_key(contact_key(client.client_id))
            return ours[0] if ours else None
        # A create may have been on its way when the index was read (or noted since; or one another run sent just
        # before it died): it lands within the landing window of being noted, or never. Wait for it, then search.
        wait = since - self.ctx.ledger.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        return await _search_key(self.ctx.api, client)

    async def _in_account(self, key: str) -> list[int]:
        """The account's contacts with this phone or email: by the index when it was read, else by a search."""
        kind, value = key.split(":", 1)
        if self.index is not None:
            return self.index.matches(value, None) if kind == "phone" else self.index.matches(None, value)
        # The last ten digits find the contact however its phone was typed into amoCRM (+7…, 8…, spaces).
        return await self.ctx.api.rest.search_contacts(value)

    def _prefer_ours(self, found: list[int]) -> list[int]:
        """Of several contacts matching, the one we created (the first, if we made several before creates were
        resolved by person): the person's other clients went to it. Several none of ours: ambiguous."""
        if len(found) > 1 and (ours := self.ctx.ledger.contacts.created(found)):
            return [min(ours)]
        return found

    async def _create(self, people: dict[Any, list[Any]]) -> None:
        """Create one batch of contacts, one per person, noted in the ledger as under way before it is sent; what
        may have landed is found by each person's first client's key, and only the others are created again."""
        ledger, keys = self.ctx.ledger, [c.client_key for c in people]
        ledger.effects.expect("contact", keys)
        remaining = list(people)

        async def create() -> None:
            ids = await self.ctx.api.rest.create_contacts([_person_body(people[c]) for c in remaining])
            self._save_created(people, dict(zip(remaining, ids, strict=True)))

        async def read_back() -> bool:
            nonlocal remaining
            landed = await _created(self.ctx.api, remaining)
            self._save_created(people, {c: i for c, i in zip(remaining, landed, strict=True) if i is not None})
            remaining = [c for c in remaining if c.client_key not in self.known]
            return not remaining

        # A create answered 5xx or not at all may be stored later still: read back only once it would have landed.
        error = await resolve(create, read_back, settle_s=landing_window(self.ctx.api.timeout_s))
        if error is None:
            ledger.effects.settle("contact", keys)
        else:
            # Still uncertain where a create may have landed: the next run searches these clients' keys first.
            self.failed.update((c.client_key, error) for first in remaining for c in people[first])

    def _save_created(self, people: dict[Any, list[Any]], ids: dict[Any, int]) -> None:
        """Each person's contact, for every client of the person, and for what the contact carries (its phone and
        email), so that the person's clients in later batches and runs find it."""
        self.ctx.ledger.contacts.save([{"client_key": c.client_key, "contact_id": i, "created": True}
                                       for first, i in ids.items() for c in people[first]])
        self.ctx.ledger.contacts.save_persons({k: i for first, i in ids.items() for c in people[first]
                                               for k in person_keys(c.phone, c.email)})
        self.known.update((c.client_key, i) for first, i in ids.items() for c in people[first])
        self.ctx.report.contacts_created += len(ids)


def _people(clients: list[Any]) -> dict[Any, list[Any]]:
    """The clients to create contacts for, by person (its first client -> all of them): clients that share a phone
    or an email, directly or through another client, are one person, since the contact made for them carries every
    phone and email they have (`_person_body`) and a search by any of them finds it."""
    first_of: dict[str, Any] = {}  # person key -> the first client of the person holding it
    people: dict[Any, list[Any]] = {}
    for client in clients:
        firsts = list(dict.fromkeys(first_of[k] for k in person_keys(client.phone, client.email) if k in first_of))
        first = firsts[0] if firsts else client
        members = [client] + [c for other in firsts[1:] for c in people.pop(other)]  # persons it joins up
        people.setdefault(first, []).extend(members)
        for member in members:
            first_of.update((k, first) for k in person_keys(member.phone, member.email))
    return {first: sorted(members, key=clients.index) for first, members in people.items()}


def _person_body(clients: list[Any]) -> dict[str, Any]:
    """The contact of a person: its first client's, with every other phone and email of its clients added."""
    body = contact_body(clients[0])
    fields = {f["field_code"]: f for f in body["custom_fields_values"]}
    for client in clients[1:]:
        for code, value in (("PHONE", client.phone), ("EMAIL", client.email)):
            if not isinstance(value, str):
                continue
            field_ = fields.setdefault(code, {"field_code": code, "values": []})
            if field_ not in body["custom_fields_values"]:
                body["custom_fields_values"].insert(0, field_)
            if value not in [v["value"] for v in field_["values"]]:
                field_["values"].append({"value": value, "enum_code": "WORK"})
    return body


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
