"""Unsent rows follow the source (issue 25, case 5): until a request for a message has gone out, a corrected
`created_at` or a move to another conversation moves its ledger row, and a row deleted at the source stops being
expected (the audit reports it as `deleted_at_source`). Once amoCRM may hold a message, its place is fixed: another
row with its id is a `duplicate_id`. Each runs the flow's steps without Prefect (`load_harness`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import load_harness
import pytest
from load_harness import DAY, execute, landed, run_interval, settings_for, write_source

from amojo.chats import ChatsClient
from etl.api import open_api
from etl.intervals import Interval
from etl.ledger import Ledger, MessageStatus
from tasks.load import resolve_senders
from tasks.reconcile import reconcile
from tasks.transform import SeenIds, transform

FIRST_PLACE_MS = int(datetime(2026, 10, 5, 1, 10, tzinfo=UTC).timestamp() * 1000)  # cv0-1 as first registered


class Killed(Exception):
    """The process died here: nothing of the run after this point runs."""


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def source(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(url, conversations=2, messages=3)  # cv{c}-{m} at 01:{m}{c}, e.g. cv1-2 at 01:21
    return url


async def _registered_then_killed(settings) -> None:
    """A run that registered the day's rows (`pending`) and died before it sent any of them."""
    async def killed(*args, **kwargs):
        raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(load_harness, "load", killed)
        with pytest.raises(Killed):
            await run_interval(settings)


def _chat_of(emulator, msgid: str) -> list[str]:
    """The msgids of the chat that holds `msgid`, in the order they landed."""
    chat = next((c for c in emulator.emulator.snapshot()["messages"].values() if msgid in {m["msgid"] for m in c}),
                [])
    return [m["msgid"] for m in chat]


def _correct_the_source(source: str) -> None:
    """cv0-1 retimed after cv0-2; cv1-2 moved into cv0; cv1-1 deleted; cv1-0 retimed to the next day."""
    execute(source, "UPDATE messages SET created_at = '2026-10-05 01:25:00' WHERE id = 'cv0-1'")
    execute(source, "UPDATE messages SET conversation_id = 'cv0' WHERE id = 'cv1-2'")
    execute(source, "DELETE FROM messages WHERE id = 'cv1-1'")
    execute(source, "UPDATE messages SET created_at = '2026-10-06 01:00:00' WHERE id = 'cv1-0'")


async def _audit(settings, day=DAY):
    """The audit of one day (`flows.audit._audit_day`), its Prefect tasks (read the source, read back) run as the
    plain functions under them."""
    import flows.audit as audit

    async def reconcile_task(api, ledger, start_ms, end_ms, label):
        return await reconcile(api, ledger, start_ms, end_ms, reread_delay=0.1)

    def transformed_chunks(stream, settings, senders, label):
        seen = SeenIds(stream.repeated_ids())
        while (frames := stream.next_chunk()) is not None:
            yield frames, transform(frames, senders, settings.id_prefix, settings.source_timezone, seen=seen)

    ledger = Ledger(settings.state_url)
    try:
        async with open_api(settings, ledger) as api:
            senders = await resolve_senders(api.rest, settings.bot_id)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(audit, "reconcile_task", reconcile_task)
                patch.setattr(audit, "transformed_chunks", transformed_chunks)
                return await audit._audit_day(settings, ledger, api, senders,
                                              Interval.days(day, day + timedelta(days=1), settings.zone))
    finally:
        ledger.close()


async def test_rows_retimed_moved_and_deleted_before_their_first_send_follow_the_source(
        emulator, source, ledger_url):
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    await _registered_then_killed(settings)
    _correct_the_source(source)

    # Before any import: the ledger still has the unsent rows at their first places. The deleted one, and the one
    # retimed into the next day, are no longer in the day's source: reported, not missing.
    before = await _audit(settings)
    assert before.deleted_at_source == ["ae-cv1-0", "ae-cv1-1"]
    assert not set(before.deleted_at_source) & set(before.missing_in_amocrm)

    first = await run_interval(settings)
    assert first.verdict.verdict == "complete", first.verdict
    assert first.verdict.expected == 4 and not first.verdict.missing
    ledger = Ledger(ledger_url)
    rejects = ledger.rejects.rows()
    states = ledger.messages.states(["ae-cv0-1", "ae-cv1-2", "ae-cv1-1", "ae-cv1-0"])
    ledger.close()
    assert rejects == []  # no duplicate_id: the corrected rows are the same messages
    assert _chat_of(emulator, "ae-cv0-0") == ["ae-cv0-0", "ae-cv0-2", "ae-cv1-2", "ae-cv0-1"]  # in the new order
    assert states["ae-cv1-2"].conversation_id == "ae-cv0"
    assert states["ae-cv1-1"].status == MessageStatus.DELETED
    assert states["ae-cv1-0"].status == MessageStatus.DELETED  # left the day: the next day's import takes it

    next_day = await run_interval(settings, DAY + timedelta(days=1))
    assert next_day.verdict.verdict == "complete" and next_day.load.messages_sent == 1, next_day.verdict
    assert _chat_of(emulator, "ae-cv1-0") == ["ae-cv1-0"]
    held = landed(emulator)
    assert sorted(held) == ["ae-cv0-0", "ae-cv0-1", "ae-cv0-2", "ae-cv1-0", "ae-cv1-2"]
    assert {len(copies) for copies in held.values()} == {1}

    again = await run_interval(settings)
    assert again.verdict.verdict == "complete" and again.load.messages_sent == 0
    after = await _audit(settings)
    assert after.ok and after.deleted_at_source == ["ae-cv1-1"], after
    assert after.not_sent == [] and after.missing_in_amocrm == []


async def test_a_row_amocrm_may_hold_keeps_its_place_and_a_corrected_copy_is_a_duplicate(
        emulator, source, ledger_url):
    """cv0-1's request landed and the run died before it read the answer: amoCRM holds the message (the ledger says
    `sending`), so its place is fixed, and a corrected row with its id is rejected as `duplicate_id`, as before."""
    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    original = ChatsClient.new_message

    async def dies_after_cv0_1(self, payload):
        answer = await original(self, payload)
        if payload["msgid"] == "ae-cv0-1":
            raise Killed
        return answer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChatsClient, "new_message", dies_after_cv0_1)
        with pytest.raises(Killed):
            await run_interval(settings)
    execute(source, "UPDATE messages SET created_at = '2026-10-05 01:25:00' WHERE id = 'cv0-1'")
    result = await run_interval(settings)
    ledger = Ledger(ledger_url)
    rejects = ledger.rejects.rows()
    state = ledger.messages.states(["ae-cv0-1"])["ae-cv0-1"]
    ledger.close()
    assert [r["reason"] for r in rejects] == ["duplicate_id"]
    assert state.msec == FIRST_PLACE_MS and state.conversation_id == "ae-cv0"  # its place is kept
    assert _chat_of(emulator, "ae-cv0-0") == ["ae-cv0-0", "ae-cv0-1", "ae-cv0-2"]  # the copy is not sent again
    assert result.verdict.verdict == "complete", result.verdict


async def test_rows_a_stopped_conversation_never_sent_follow_the_source(emulator, source, ledger_url):
    """amoCRM refused cv0's first message for its own reasons (409): the conversation stopped, its later messages
    never went out. They are unsent, not uncertain: a corrected time moves them, as for rows never tried."""
    from amojo.emulator.config import Faults

    settings = settings_for(emulator, source, ledger_url, concurrency=1)
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": 409}]))
    first = await run_interval(settings)
    assert list(first.load.stopped) == ["ae-cv0"] and not _chat_of(emulator, "ae-cv0-0")
    execute(source, "UPDATE messages SET created_at = '2026-10-05 01:25:00' WHERE id = 'cv0-1'")
    again = await run_interval(settings)
    ledger = Ledger(ledger_url)
    rejects = ledger.rejects.rows()
    ledger.close()
    assert rejects == [] and again.verdict.verdict == "complete", (rejects, again.verdict)
    assert _chat_of(emulator, "ae-cv0-0") == ["ae-cv0-0", "ae-cv0-2", "ae-cv0-1"]


def test_a_move_and_a_first_send_of_one_message_race_and_exactly_one_wins(tmp_path):
    """Two runs see one unsent message at two places (its source row moved between their reads): the one that moves
    it and the one that begins to send it cannot both win. Moving is conditional on nothing having been sent, and
    marking `sending` on the message still being where its run planned it."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    row = {"msgid": "ae-m", "conversation_id": "ae-a", "msec": 1_000, "content_hash": 1, "text_hash": 1}
    moved = {**row, "conversation_id": "ae-b", "msec": 2_000}

    ledger.messages.register([row])
    ledger.messages.place([moved])  # run B follows the source first
    assert ledger.messages.begin_sending([{**row, "status": "sending"}]) == set()  # run A may not send it at a
    assert ledger.messages.begin_sending([{**moved, "status": "sending"}]) == {"ae-m"}  # run B sends it at b

    ledger.messages.place([row])  # too late: amoCRM may hold it at b now
    state = ledger.messages.states(["ae-m"])["ae-m"]
    assert (state.status, state.conversation_id, state.msec) == ("sending", "ae-b", 2_000)
    ledger.close()
