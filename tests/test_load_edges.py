"""Exactly once at the edges of the load path: lost answers on every endpoint, odd status codes, uncertain sends,
failures that must stop one conversation and no more (issue 12). Each runs the flow's steps without Prefect."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, time, timedelta

import httpx
import pytest
import sqlalchemy as sa
from load_harness import DAY, edit_text, landed, run_interval, settings_for, write_source

from amojo.chats import ChatsClient
from amojo.emulator.config import EmulatorConfig, Faults
from amojo.errors import AccountBlocked, SignatureRejected
from etl.ledger import Ledger
from etl.ledger.chats import Contacts
from etl.ledger.leases import Leases


class Killed(Exception):
    """The process died here: nothing of the run after this point runs (nothing in the load path catches it)."""


@pytest.fixture
def source(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(url)
    return url


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _contacts(emulator) -> list[dict]:
    return emulator.emulator.snapshot()["contacts"]


def _once_each(emulator, expected: int) -> dict[str, list[dict]]:
    held = landed(emulator)
    assert len(held) == expected and {len(copies) for copies in held.values()} == {1}, Counter(map(len, held.values()))
    return held


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_a_lost_answer_on_creating_contacts_creates_none_twice(emulator, source, ledger_url, mode):
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "contacts", "method": "POST", "lose": mode}]))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    assert len(_contacts(emulator)) == 6  # one per client, with or without phone and email
    _once_each(emulator, 48)


async def test_a_run_killed_between_creating_contacts_and_saving_them_creates_none_twice(
        emulator, source, ledger_url, monkeypatch):
    original = Contacts.save

    def killed_after_creating(self, rows):
        if any(row["created"] for row in rows):
            raise Killed
        original(self, rows)

    monkeypatch.setattr(Contacts, "save", killed_after_creating)
    with pytest.raises(Killed):
        await run_interval(settings_for(emulator, source, ledger_url))
    assert len(_contacts(emulator)) == 6  # created, their ids never saved
    monkeypatch.setattr(Contacts, "save", original)
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    # Found again by the key each carries: those without phone or email too.
    assert len(_contacts(emulator)) == 6 and result.load.contacts_created == 0 and result.load.contacts_matched == 6


async def test_a_lost_answer_on_linking_is_resolved_by_reading_the_links(emulator, source, ledger_url):
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "contacts_chats", "method": "POST", "lose": "drop"}]))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    links = emulator.emulator.snapshot()["links"]
    assert len(links) == 6 and len({link["chat_id"] for link in links}) == 6


@pytest.mark.parametrize("status", [408, 425, 502])
async def test_answers_that_say_try_again_are_tried_again(emulator, source, ledger_url, status):
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": status, "times": 2},
                                                {"endpoint": "contacts", "status": status}]))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    _once_each(emulator, 48)


async def test_a_refusal_for_amocrms_own_reasons_counts_against_the_verdict_and_keeps_order(
        emulator, source, ledger_url):
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": 409}]))
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    first = await run_interval(settings)
    assert first.load.failed == 1 and list(first.load.stopped) == ["ae-cv0"] and not first.load.api_rejected
    assert first.verdict.verdict == "incomplete" and len(first.verdict.missing) == 8  # cv0 waits, all of it
    second = await run_interval(settings)
    assert second.verdict.verdict == "complete" and second.load.messages_sent == 8
    _once_each(emulator, 48)
    chat = next(m for m in emulator.emulator.snapshot()["messages"].values() if m[0]["msgid"].startswith("ae-cv0-"))
    assert [m["msgid"] for m in chat] == [f"ae-cv0-{n}" for n in range(8)]  # in time order after all


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(text_limit=40)])
async def test_a_refusal_of_the_data_is_a_reject_with_the_apis_reason_and_not_sent_again(emulator, tmp_path,
                                                                                          ledger_url):
    source = f"sqlite:///{tmp_path / 'small.db'}"
    write_source(source, conversations=2, messages=3)
    edit_text(source, "cv1-1", "a text far longer than the forty characters the account takes")
    settings = settings_for(emulator, source, ledger_url)
    first = await run_interval(settings)
    assert first.load.api_rejected == Counter({"api_400": 1}) and first.verdict.verdict == "complete"
    second = await run_interval(settings)
    assert second.load.messages_sent == 0 and not second.load.api_rejected  # waits for the source to change
    assert set(landed(emulator)) == {f"ae-cv{c}-{m}" for c in range(2) for m in range(3)} - {"ae-cv1-1"}


async def _killed_after_landing(settings, msgid: str) -> None:
    """A run whose request for `msgid` lands in amoCRM, then dies before it reads the answer."""
    original = ChatsClient.new_message

    async def new_message(self, payload):
        answer = await original(self, payload)
        if payload["msgid"] == msgid:
            raise Killed
        return answer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChatsClient, "new_message", new_message)
        with pytest.raises(Killed):
            await run_interval(settings)


async def test_an_edit_after_a_send_whose_answer_was_lost_reaches_amocrm(emulator, source, ledger_url):
    settings = settings_for(emulator, source, ledger_url)
    await _killed_after_landing(settings, "ae-cv1-3")
    edit_text(source, "cv1-3", "edited after the lost answer")
    result = await run_interval(settings)
    assert result.verdict.verdict == "complete", result.verdict
    held = _once_each(emulator, 48)
    assert held["ae-cv1-3"][0]["message"]["text"] == "edited after the lost answer"


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(duplicate_msgid="reject")])
async def test_a_refused_retry_the_history_does_not_show_yet_stays_uncertain(emulator, tmp_path, ledger_url):
    source = f"sqlite:///{tmp_path / 'small.db'}"
    write_source(source, conversations=2, messages=3)
    # The first answer is lost, the retry refused as a duplicate, and the history lags behind: not knowing, the
    # loader must neither call the message rejected nor send the conversation's later ones.
    emulator.emulator.set_faults(Faults(history_lag_ms=8000,
                                        script=[{"endpoint": "message", "lose": "500"}]))
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    first = await run_interval(settings)
    assert not first.load.api_rejected and len(first.load.stopped) == 1
    stopped = next(iter(first.load.stopped))
    assert [m for m in landed(emulator) if m.startswith(stopped + "-")] == [stopped + "-0"]
    emulator.emulator.set_faults(Faults())  # the history has caught up
    edit_text(source, stopped.removeprefix("ae-") + "-0", "edited while it was uncertain")
    second = await run_interval(settings)
    assert second.verdict.verdict == "complete", second.verdict
    held = _once_each(emulator, 6)
    assert held[stopped + "-0"][0]["message"]["text"] == "edited while it was uncertain"


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(duplicate_msgid="idempotent"),
                                             EmulatorConfig(duplicate_msgid="reject")], ids=["idempotent", "reject"])
async def test_an_edit_after_a_lost_answer_reaches_amocrm_while_the_history_lags(emulator, source, ledger_url):
    """Killed after the send landed, edited, then run again while the history does not show the message yet: the
    repeat is taken as the first (idempotent) or refused as a duplicate (reject); either way the edit goes out."""
    settings = settings_for(emulator, source, ledger_url)
    await _killed_after_landing(settings, "ae-cv1-1")
    edit_text(source, "cv1-1", "edited while the history lagged")
    emulator.emulator.set_faults(Faults(history_lag_ms=6000))
    await run_interval(settings)
    emulator.emulator.set_faults(Faults())
    result = await run_interval(settings)
    assert result.verdict.verdict == "complete", result.verdict
    held = _once_each(emulator, 48)
    assert held["ae-cv1-1"][0]["message"]["text"] == "edited while the history lagged"


async def test_a_location_edited_after_a_lost_answer_is_edited_in_amocrm(emulator, source, ledger_url):
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET type = 'location', text = NULL, lat = 55.0, lon = 37.0 "
                             "WHERE id = 'cv1-2'"))
    engine.dispose()
    settings = settings_for(emulator, source, ledger_url)
    await _killed_after_landing(settings, "ae-cv1-2")
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET lat = 59.9, lon = 30.3, updated_at = created_at WHERE id = 'cv1-2'"))
    engine.dispose()
    result = await run_interval(settings)
    assert result.verdict.verdict == "complete", result.verdict
    held = _once_each(emulator, 48)
    assert held["ae-cv1-2"][0]["message"]["location"] == {"lat": 59.9, "lon": 30.3}


async def test_a_run_taking_over_waits_for_a_create_still_on_its_way(emulator, tmp_path, ledger_url):
    """A run whose lease lapsed sent a contact create just before it, slow to land; the run that takes the client
    over finds the create noted in the ledger, and waits for it to land or time out before it searches the key."""
    from amojo.payloads import contact_key
    from amojo.rest import RestClient

    source = f"sqlite:///{tmp_path / 'small.db'}"
    write_source(source, conversations=1, messages=2)  # client cl0: no phone, no email
    ledger = Ledger(ledger_url)
    ledger.effects.expect("contact", ["cl0"])  # the other run's create, on the wire now
    ledger.close()
    config = emulator.emulator.config

    async def lands_a_second_later() -> None:
        await asyncio.sleep(1)
        async with RestClient(emulator.url, config.token, rate=100) as rest:
            await rest.create_contacts([{"name": "Client 0", "custom_fields_values": [
                {"field_code": "IM", "values": [{"value": contact_key("ae-cl0"), "enum_code": "OTHER"}]}]}])

    result, _ = await asyncio.gather(run_interval(settings_for(emulator, source, ledger_url)), lands_a_second_later())
    assert result.verdict.verdict == "complete", result.verdict
    assert len(_contacts(emulator)) == 1 and result.load.contacts_matched == 1 and result.load.contacts_created == 0


async def test_a_failed_history_lookup_stops_its_conversation_only(emulator, source, ledger_url):
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    await _killed_after_landing(settings, "ae-cv2-5")
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "history", "status": 400}]))
    second = await run_interval(settings)  # returns: the lookup's failure is one conversation's
    assert list(second.load.stopped) == ["ae-cv2"]
    assert {m.rsplit("-", 1)[0] for m in second.verdict.missing} == {"ae-cv2"}
    third = await run_interval(settings)
    assert third.verdict.verdict == "complete", third.verdict
    _once_each(emulator, 48)


async def test_when_a_load_fails_nothing_of_it_is_in_flight_once_its_claims_are_released(
        emulator, source, ledger_url, monkeypatch):
    in_flight = 0
    at_release: list[int] = []
    send = httpx.AsyncClient.send

    async def counted(self, request, **kwargs):
        nonlocal in_flight
        in_flight += 1
        try:
            return await send(self, request, **kwargs)
        finally:
            in_flight -= 1

    release = Leases.release

    def noted(self, holder, kind=None, keys=None):
        if kind is None:
            at_release.append(in_flight)
        return release(self, holder, kind, keys)

    calls = 0
    new_message = ChatsClient.new_message

    async def refused_sixth(self, payload):
        nonlocal calls
        calls += 1
        if calls == 6:
            raise SignatureRejected("the Chats API rejected the request signature", status=403)
        return await new_message(self, payload)

    monkeypatch.setattr(httpx.AsyncClient, "send", counted)
    monkeypatch.setattr(Leases, "release", noted)
    monkeypatch.setattr(ChatsClient, "new_message", refused_sixth)
    # Every answer takes 200 ms; the sixth message meets a wrong secret: the run stops, its siblings with it.
    emulator.emulator.set_faults(Faults(latency_ms=200))
    with pytest.raises(SignatureRejected):
        await run_interval(settings_for(emulator, source, ledger_url))
    assert at_release == [0]


async def test_a_conversation_that_failed_sends_nothing_later_in_the_same_run(emulator, source, ledger_url):
    # Chunks of 6 rows: one message of each conversation per chunk. The first message sent fails for good.
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": 503, "times": 6}]))
    settings = settings_for(emulator, source, ledger_url, concurrency=1).model_copy(update={"chunk_size": 6})
    result = await run_interval(settings)
    assert list(result.load.stopped) == ["ae-cv0"] and result.load.held_back == 7
    assert not [m for m in landed(emulator) if m.startswith("ae-cv0-")]
    again = await run_interval(settings)
    assert again.verdict.verdict == "complete", again.verdict
    held = landed(emulator)
    order = [m["msgid"] for chat in emulator.emulator.snapshot()["messages"].values() for m in chat
             if m["msgid"].startswith("ae-cv0-")]
    assert order == [f"ae-cv0-{n}" for n in range(8)] and len(held) == 48


async def test_history_that_shifts_while_it_is_read_shows_no_false_duplicates(emulator, tmp_path, ledger_url,
                                                                             monkeypatch):
    from tasks.reconcile import reconcile

    source = f"sqlite:///{tmp_path / 'long.db'}"
    write_source(source, conversations=1, messages=70)  # two pages of history
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"

    page = ChatsClient.history_page
    next_day = int(datetime.combine(DAY + timedelta(days=1), time(12), UTC).timestamp())

    async def shifting(self, chat_id, offset=0, limit=50):
        items = await page(self, chat_id, offset, limit)
        if offset == 0:  # the next day's run sends into the chat between our two pages
            await self.new_message({"timestamp": next_day, "msgid": f"next-day-{len(items)}",
                                    "conversation_id": "ae-cv0", "silent": True,
                                    "sender": {"id": "ae-cl0", "name": "Client 0"},
                                    "message": {"type": "text", "text": "the next day"}})
        return items

    monkeypatch.setattr(ChatsClient, "history_page", shifting)
    from etl.api import open_api
    from etl.intervals import Interval

    interval = Interval.days(DAY, DAY + timedelta(days=1), settings.zone)
    ledger = Ledger(ledger_url)
    async with open_api(settings, ledger) as api:
        verdict = await reconcile(api, ledger, interval.start_ms, interval.end_ms)
    ledger.close()
    assert verdict.duplicates == [] and verdict.missing == [] and verdict.confirmed == 70


async def test_runs_side_by_side_in_one_process_share_the_accounts_rest_limit(emulator, source, ledger_url):
    write_source(source, day=DAY + timedelta(days=1), tag="b")
    settings = settings_for(emulator, source, ledger_url, rest_rate=7)
    emulator.emulator.request_log.clear()
    first, second = await asyncio.gather(run_interval(settings), run_interval(settings, DAY + timedelta(days=1)))
    assert first.verdict.verdict == second.verdict.verdict == "complete"
    rest = Counter(status for _, api, _, status in emulator.emulator.request_log if api == "rest")
    assert rest[429] == 0 and rest[200] > 7, rest


async def test_a_chat_whose_history_cannot_be_read_is_unconfirmed_not_a_failed_run(emulator, source, ledger_url):
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "history", "status": 409}]))
    again = await run_interval(settings)  # nothing to send; one chat's read is refused
    assert again.verdict.verdict == "incomplete" and len(again.verdict.unread) == 1
    assert len(again.verdict.missing) == 8 and again.verdict.confirmed == 40


async def test_a_history_read_refused_while_resolving_a_repeat_loses_nothing(emulator, source, ledger_url):
    """Review of the redesign: a send answered 503, its repeat refused (400), and the history read that resolves
    the repeat refused too. The message may have landed: it is `failed` and its conversation stops, so the next run
    looks it up and sends it; it is never taken for a refusal of its data (`rejected`, never sent again)."""
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": 503},
                                                {"endpoint": "message", "status": 400},
                                                {"endpoint": "history", "status": 400}]))
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    first = await run_interval(settings)
    assert not first.load.api_rejected and first.load.failed == 1 and len(first.load.stopped) == 1
    emulator.emulator.set_faults(Faults())
    second = await run_interval(settings)
    assert second.verdict.verdict == "complete", second.verdict
    _once_each(emulator, 48)


async def test_an_account_blocked_during_a_run_stops_it_at_the_first_html_403(emulator_config, tmp_path):
    """amojo-api.md §5.2: a run that overruns amoCRM's REST limit gets the account blocked (an HTML 403 to every
    REST request); the run stops at the first such answer instead of retrying into the block."""
    from amojo.emulator.server import start

    emulator_config.rest_rate, emulator_config.rest_block_after = 2.0, 1  # the run's own limit is 1000/s
    source, ledger_url = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    write_source(source, conversations=12, messages=2)
    with start(emulator_config) as running:
        with pytest.raises(AccountBlocked, match="AMOJO_ETL_REST_RATE"):
            await run_interval(settings_for(running, source, ledger_url, concurrency=1))
        log = [(api, status) for _, api, _, status in running.emulator.request_log]
    first = log.index(("rest", 403))
    assert ("rest", 429) not in log[:first]  # the overrun was the block's, no 429 before to wait out
    assert [entry for entry in log[first + 1:] if entry[0] == "rest"] == []  # nothing after it, no retry
