"""Conversations prepared in waves: sending starts while later conversations still get their contacts and links,
and contacts and links go in batches as large as amoCRM takes."""

from __future__ import annotations

import pytest
from load_harness import landed, run_interval, settings_for, write_source

from amojo.chats import ChatsClient
from amojo.emulator.config import EmulatorConfig
from amojo.errors import InvalidRequest
from amojo.rest import BATCH_MOST, BATCH_SAFE, ChatLink, RestClient

REST_ENDPOINTS = ("contacts", "contacts_chats")


async def test_sending_starts_before_every_conversation_is_prepared(emulator, tmp_path):
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = write_source(source, conversations=40, messages=2)
    result = await run_interval(settings_for(emulator, source, ledger_url, concurrency=4, rest_rate=5))

    log = emulator.emulator.request_log
    first_message = min(at for at, _, endpoint, _ in log if endpoint == "message")
    last_rest_write = max(at for at, _, endpoint, _ in log if endpoint in REST_ENDPOINTS)
    # The first four conversations send while the other 36 get their contacts and links.
    assert first_message < last_rest_write
    assert result.verdict.verdict == "complete" and result.load.messages_sent == len(ids)
    held = landed(emulator)
    assert sorted(held) == sorted(f"ae-{i}" for i in ids) and all(len(m) == 1 for m in held.values())


async def test_a_first_import_resolves_contacts_and_links_in_a_few_requests(emulator, tmp_path):
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    write_source(source, conversations=300, messages=1)
    async with RestClient(emulator.url, emulator.emulator.config.token, rate=1000) as rest:
        await rest.create_contacts([{"name": f"Someone {n}"} for n in range(250)])
        await rest.create_contacts([{"name": f"Someone {n}"} for n in range(250, 600)])
    emulator.emulator.request_log.clear()
    result = await run_interval(settings_for(emulator, source, ledger_url))

    assert result.verdict.verdict == "complete"
    assert result.load.contacts_created == 300 and result.load.links_created == 300
    # A 429 (the emulator's 7 requests/s, met or not as the machine's load has it) is a wait, not a request more.
    requests = [entry for entry in emulator.emulator.request_log if entry[2] in REST_ENDPOINTS and entry[3] != 429]
    # The 600 contacts read in 3 pages; then waves of 32, 250 and 18 conversations, each one create and one link
    # (chats created in this run need no read of their links). A search per client, 50 a batch and a read of
    # links before each link took 23 requests here.
    assert len(requests) == 3 + 3 * 2


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(rest_batch_max=BATCH_SAFE)])
async def test_a_batch_refused_as_too_large_is_sent_again_in_smaller_batches(emulator, emulator_config):
    async with RestClient(emulator.url, emulator_config.token, rate=1000) as rest:
        assert rest.batch_size == BATCH_MOST
        ids = await rest.create_contacts([{"name": f"Client {n}"} for n in range(120)])
        assert rest.batch_size == BATCH_SAFE
        contacts = emulator.emulator.snapshot()["contacts"]
        assert len(ids) == len(set(ids)) == 120 and len(contacts) == 120  # the refused batch created nothing
        created = {c["id"]: c["name"] for c in contacts}
        assert [created[i] for i in ids] == [f"Client {n}" for n in range(120)]

        chat_ids = await _chats(emulator, 60)
        made = await rest.link_chats([ChatLink(chat, ids[n]) for n, chat in enumerate(chat_ids)])
        assert sorted(link.chat_id for link in made) == sorted(chat_ids)
        assert {link.chat_id: link.contact_id for link in await rest.chat_links(chat_ids)} == \
            {chat: ids[n] for n, chat in enumerate(chat_ids)}


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(rest_batch_max=10)])
async def test_a_refused_batch_of_the_safe_size_is_an_error(emulator, emulator_config):
    async with RestClient(emulator.url, emulator_config.token, rate=1000) as rest:
        with pytest.raises(InvalidRequest):
            await rest.create_contacts([{"name": f"Client {n}"} for n in range(BATCH_SAFE)])
        assert emulator.emulator.snapshot()["contacts"] == []


async def _chats(emulator, count: int) -> list[str]:
    config = emulator.emulator.config
    async with ChatsClient(emulator.url, config.channel_id, config.channel_secret) as chats:
        await chats.connect(config.account_id)
        return [await chats.create_chat({"conversation_id": f"batch-{n}",
                                         "user": {"id": f"client-{n}", "name": f"Client {n}"}}) for n in range(count)]


async def test_a_create_noted_after_the_account_was_read_is_searched_not_looked_up_in_that_read(
        emulator, tmp_path, monkeypatch):
    """The account's contacts are read once, before the first wave and before this run's turn for any client. A
    create another run notes after that read (it died waiting for the answer, and its contact landed) is not in the
    read, however long ago it was noted when this run's turn comes: its key is searched, no second contact made."""
    from etl.ledger import Ledger
    from tasks.load import ContactIndex
    from tasks.transform import contact_key

    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    write_source(source, conversations=4, messages=1)  # cl0 has neither phone nor email: only its key finds it
    config = emulator.emulator.config
    read, clock = ContactIndex.read.__func__, Ledger.clock
    later = 0.0

    async def another_run_creates_after_the_read(cls, api, pages_at_most):
        nonlocal later
        index = await read(cls, api, pages_at_most)
        ledger = Ledger(ledger_url)
        ledger.effects.expect("contact", ["cl0"])
        ledger.close()
        async with RestClient(emulator.url, config.token, rate=1000) as rest:
            await rest.create_contacts([{"name": "Client 0", "custom_fields_values": [
                {"field_code": "IM", "values": [{"value": contact_key("ae-cl0"), "enum_code": "OTHER"}]}]}])
        later = 100.0  # the run's turn for cl0 comes long after the other run noted its create
        return index

    monkeypatch.setattr(ContactIndex, "read", classmethod(another_run_creates_after_the_read))
    monkeypatch.setattr(Ledger, "clock", lambda self: clock(self) + later)
    result = await run_interval(settings_for(emulator, source, ledger_url))

    assert result.verdict.verdict == "complete", result.verdict
    assert len(emulator.emulator.snapshot()["contacts"]) == 4
    assert result.load.contacts_matched == 1 and result.load.contacts_created == 3


@pytest.mark.parametrize("status", [414, 415, 422])
async def test_a_batch_refused_for_what_it_says_is_not_sent_again_in_smaller_batches(status):
    """Only 400 and 413 may mean "too many"; a 422 (or 414, 415) is about the data: splitting the batch would send
    the same data again, create the contacts of the sub-batches before the refused one, and keep every later request
    at the safe size."""
    sent: list[int] = []

    async def refused(batch: list) -> None:
        sent.append(len(batch))
        raise InvalidRequest(f"REST v4: {status} refused", status=status)

    async with RestClient("http://127.0.0.1:9", "token", rate=1000) as rest:
        with pytest.raises(InvalidRequest):
            await rest._in_batches(list(range(120)), refused)
        assert sent == [120] and rest.batch_size == BATCH_MOST
