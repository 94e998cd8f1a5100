"""Contacts over time (issue 25): one person, one contact, however the phone is typed and however many runs resolve
it at once; a contact merged or deleted in amoCRM between runs; a create that amoCRM commits after answering 504."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa
from load_harness import DAY, landed, run_interval, settings_for

from amojo.emulator.config import Faults
from etl.source import create_schema

SHARED = ("+7 (915) 111-22-33", "8 915 111 22 33", "79151112233")


def _write(url: str, clients: dict[str, tuple[str | None, str | None]], days: int = 1, messages: int = 3,
           first_day: date = DAY, tag: str = "") -> list[str]:
    """A conversation per client and day (`{tag}{client}-d{n}`), `messages` each; the clients with their phone and
    email. Returns the message ids."""
    engine = sa.create_engine(url)
    if not sa.inspect(engine).has_table("messages"):
        create_schema(engine)
    ids: list[str] = []
    with engine.begin() as conn:
        for client, (phone, email) in clients.items():
            conn.execute(sa.text("INSERT INTO clients (id, name, phone, email) VALUES (:i, :n, :p, :e) "
                                 "ON CONFLICT (id) DO NOTHING"),
                         {"i": client, "n": f"Client {client}", "p": phone, "e": email})
        for day in range(days):
            start = datetime.combine(first_day + timedelta(days=day), datetime.min.time())
            for number, client in enumerate(clients):
                conversation = f"{tag}{client}-d{day}"
                conn.execute(sa.text("INSERT INTO conversations (id, client_id, created_at) VALUES (:i, :c, :t)"),
                             {"i": conversation, "c": client, "t": start.strftime("%Y-%m-%d %H:%M:%S")})
                for m in range(messages):
                    moment = start + timedelta(hours=1, minutes=m * 10 + number)
                    ids.append(f"{conversation}-{m}")
                    conn.execute(sa.text(
                        "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                        "VALUES (:i, :c, :t, 'in', 'text', :x)"),
                        {"i": f"{conversation}-{m}", "c": conversation, "t": moment.strftime("%Y-%m-%d %H:%M:%S"),
                         "x": f"message {m} of {conversation}"})
    engine.dispose()
    return ids


def _continue(url: str, conversations: list[str], day: date) -> list[str]:
    """A message on `day` in each of these conversations, opened before."""
    engine = sa.create_engine(url)
    moment = datetime.combine(day, datetime.min.time()) + timedelta(hours=5)
    with engine.begin() as conn:
        for conversation in conversations:
            conn.execute(sa.text("INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                                 "VALUES (:i, :c, :t, 'in', 'text', 'later')"),
                         {"i": f"{conversation}-later", "c": conversation, "t": moment.strftime("%Y-%m-%d %H:%M:%S")})
    engine.dispose()
    return [f"{conversation}-later" for conversation in conversations]


def _quarantined(ledger_url: str) -> dict[str, str]:
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT conversation_id, quarantine FROM chats "
                                         "WHERE quarantine IS NOT NULL")).all())
    engine.dispose()
    return rows


def _sent_once(emulator, ids: list[str]) -> None:
    held = landed(emulator)
    missing = [i for i in ids if f"ae-{i}" not in held]
    assert not missing, f"{len(missing)} messages never sent: {missing[:5]}"
    assert all(len(held[f"ae-{i}"]) == 1 for i in ids)


def _chat_contacts(emulator) -> dict[str, int]:
    """conversation_id -> the contact its chat is linked to in amoCRM."""
    snapshot = emulator.emulator.snapshot()
    by_chat = {link["chat_id"]: link["contact_id"] for link in snapshot["links"]}
    return {chat["conversation_id"]: by_chat.get(chat["id"]) for chat in snapshot["chats"]}


@pytest.mark.parametrize("concurrency", [8, 1])  # one wave (one batch of creates), or p0 alone in the first wave
async def test_clients_sharing_a_phone_typed_three_ways_get_one_contact(emulator, tmp_path, concurrency):
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {f"p{n}": (phone, None) for n, phone in enumerate(SHARED)} | {"other": ("+7 916 000 00 01",
                                                                                                 None)})
    result = await run_interval(settings_for(emulator, source, ledger_url, concurrency=concurrency))

    contacts = emulator.emulator.snapshot()["contacts"]
    assert len(contacts) == 2, [c["phones"] for c in contacts]
    assert _quarantined(ledger_url) == {} and result.verdict.verdict == "complete"
    _sent_once(emulator, ids)
    linked = _chat_contacts(emulator)
    assert len({linked[f"ae-p{n}-d0"] for n in range(3)}) == 1


async def test_clients_sharing_an_email_or_a_phone_with_another_email_get_one_contact(emulator, tmp_path):
    """Phone first, then email: `both` has a's phone and b's email, in one batch; `b` (email only) finds the contact
    made for `both` by its email, as amoCRM's search would, so all three are one person."""
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {"a": ("+79151112233", None), "both": ("8 915 111 22 33", "Anna@Example.com"),
                          "b": (None, "anna@example.com ")})
    result = await run_interval(settings_for(emulator, source, ledger_url))

    assert len(emulator.emulator.snapshot()["contacts"]) == 1
    assert _quarantined(ledger_url) == {} and result.verdict.verdict == "complete"
    _sent_once(emulator, ids)


async def test_three_concurrent_backfills_give_a_person_one_contact(emulator, tmp_path):
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {f"p{n}": (phone, None) for n, phone in enumerate(SHARED)}, days=3)
    settings = settings_for(emulator, source, ledger_url)
    results = await asyncio.gather(*(run_interval(settings, DAY + timedelta(days=d)) for d in range(3)))

    contacts = emulator.emulator.snapshot()["contacts"]
    assert len(contacts) == 1, [c["phones"] for c in contacts]
    assert _quarantined(ledger_url) == {}
    assert [r.verdict.verdict for r in results] == ["complete"] * 3
    _sent_once(emulator, ids)


async def test_a_contact_merged_and_one_deleted_between_runs_relink_their_clients(emulator, tmp_path):
    """Between two runs a person merges m's contact into another and deletes d's. The next run links m's and d's
    new conversations to their current contacts, in the same link batch as clients whose contacts did not change,
    and sends everything."""
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    clients = {"m": ("+79150000001", None), "d": ("+79150000002", None), "k1": ("+79150000003", None),
               "k2": (None, None)}
    ids = _write(source, clients)
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"
    before = _chat_contacts(emulator)

    admin = emulator.emulator
    survivor = admin.store.create_contact({"name": "Someone's own card"}, "Someone's own card", [], [])
    admin.merge_contacts(survivor, before["ae-m-d0"])
    admin.delete_contact(before["ae-d-d0"])
    ids += _write(source, clients, first_day=DAY + timedelta(days=1), tag="n")
    ids += _continue(source, ["m-d0", "d-d0", "k1-d0"], DAY + timedelta(days=1))
    result = await run_interval(settings, DAY + timedelta(days=1))

    assert result.verdict.verdict == "complete", result.verdict
    _sent_once(emulator, ids)
    after = _chat_contacts(emulator)
    current = {c["id"] for c in admin.snapshot()["contacts"]}
    assert after["ae-nm-d0"] == survivor and after["ae-m-d0"] == survivor, (after, before, survivor)
    assert after["ae-nd-d0"] in current and after["ae-nd-d0"] != before["ae-d-d0"]
    assert after["ae-d-d0"] == after["ae-nd-d0"]  # the old chat is linked again before its next message
    assert after["ae-nk1-d0"] == before["ae-k1-d0"] and after["ae-nk2-d0"] == before["ae-k2-d0"]
    assert result.load.stopped == {} and admin.snapshot()["leads"] == []  # no message went to an unlinked chat


async def test_a_create_that_commits_after_its_504_makes_one_contact_per_client(emulator, tmp_path):
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {"a": ("+79150000001", None), "b": (None, "b@example.com"), "c": (None, None)})
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "contacts", "method": "POST", "late_ms": 1000}]))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    await asyncio.sleep(1.2)  # whatever the run did, the late commit has landed by now

    contacts = emulator.emulator.snapshot()["contacts"]
    assert len(contacts) == 3, [c["name"] for c in contacts]
    assert result.verdict.verdict == "complete"
    _sent_once(emulator, ids)


async def test_a_chat_unlinked_by_a_person_is_linked_again_to_its_clients_contact_not_a_new_one(emulator, tmp_path):
    """A person unlinks a chat in amoCRM, the contact stays. The client (no phone, no email: found only by our key)
    has no other chat in the run, so nothing shows the contact alive but a search by our key; the next run links
    the chat to it again rather than creating the client a second contact."""
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {"k": (None, None)})
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"
    (before,) = _chat_contacts(emulator).values()

    admin = emulator.emulator
    with admin.store.transaction() as db:  # what unlinking the chat from the contact's card does
        db.execute("DELETE FROM links")
    ids += _continue(source, ["k-d0"], DAY + timedelta(days=1))
    result = await run_interval(settings, DAY + timedelta(days=1))

    assert result.verdict.verdict == "complete", result.verdict
    _sent_once(emulator, ids)
    assert [c["id"] for c in admin.snapshot()["contacts"]] == [before]
    assert _chat_contacts(emulator) == {"ae-k-d0": before}


async def test_a_create_left_uncertain_by_a_dead_run_is_not_missed_by_a_page_through_read_before_it_landed(
        emulator, tmp_path, monkeypatch):
    """Run A creates a's contact and dies before the ledger notes it (its create still `uncertain`, nothing in
    `contacts` or `persons`). Run B read the account before A's create landed; its client c has a's phone spelled
    otherwise. B must find A's contact, not create the person a second one from its stale page-through."""
    from etl.ledger import Ledger
    from tasks.load import contacts as contacts_module

    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = _write(source, {"a": ("+7 915 111 22 33", None)})
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"
    (contact_a,) = [c["id"] for c in emulator.emulator.snapshot()["contacts"]]
    ledger = Ledger(ledger_url)
    with ledger.db.engine.begin() as conn:  # as A left it: the create noted as under way, its outcome never written
        (client_key,) = conn.execute(sa.text("SELECT client_key FROM contacts")).scalars()
        conn.execute(sa.text("DELETE FROM contacts"))
        conn.execute(sa.text("DELETE FROM persons"))
    ledger.effects.expect("contact", [client_key])
    ledger.close()

    read = contacts_module.ContactIndex.read

    async def read_before_a_landed(api, pages_at_most):
        index = await read(api, pages_at_most)
        for found in (*index.phones.values(), *index.emails.values(), *index.keys.values()):
            while contact_a in found:
                found.remove(contact_a)
        return index

    monkeypatch.setattr(contacts_module.ContactIndex, "read", staticmethod(read_before_a_landed))
    ids += _write(source, {"c": ("89151112233", None), "x": ("+7 916 000 00 01", None)},
                  first_day=DAY + timedelta(days=1))
    result = await run_interval(settings, DAY + timedelta(days=1))

    assert result.verdict.verdict == "complete", result.verdict
    _sent_once(emulator, ids)
    assert len(emulator.emulator.snapshot()["contacts"]) == 2
    assert _chat_contacts(emulator)["ae-c-d0"] == contact_a


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
async def test_a_client_id_as_long_as_the_ledger_takes_and_a_long_email_resolve_on_a_real_server(
        emulator, tmp_path, request, server):
    """A client id about the longest the transform lets through (the ledger's key length, less the id prefix), and an
    email longer than that: claimed and noted by person keys (`client:…`, `email:…`) on PostgreSQL and MariaDB,
    which refuse a key longer than the column rather than cut it."""
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", request.getfixturevalue(server)
    long_id = "c" * (512 - len("ae-") - len("-d0-0"))  # its conversation and message ids (`_write`) fit too
    long_email = "a" * 600 + "@example.com"
    ids = _write(source, {long_id: (None, None), "e": (None, long_email), "twin": (None, long_email.upper())})
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    _sent_once(emulator, ids)
    assert len(emulator.emulator.snapshot()["contacts"]) == 2  # the two clients sharing the email are one person
