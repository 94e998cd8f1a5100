"""A refusal of one message's data after an uncertain attempt (issue 25, case 2): a reject with the API's reason,
listed by `amojo-etl rejects` like every other, and its conversation goes on; a second run, or a reconcile's repair,
changes nothing. Each runs the flow's steps without Prefect (`load_harness`)."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from load_harness import DAY, edit_text, landed, run_interval, settings_for, write_source
from typer.testing import CliRunner

from amojo.chats import ChatsClient
from amojo.emulator.config import EmulatorConfig, Faults
from etl.api import open_api
from etl.cli import commands as cli
from etl.intervals import Interval
from etl.ledger import Ledger, MessageStatus
from etl.summary import RunSummary
from tasks.reconcile import reconcile

LONG = "a text far longer than the forty characters the account takes"
KEYS = {"ae-cv0-0": "message:cv0-0@2026-10-05T01:00:00Z", "ae-cv0-2": "message:cv0-2@2026-10-05T01:20:00Z"}


class Killed(Exception):
    """The process died here, its request for the message sent and the answer never read."""


async def _left_uncertain(how: str, emulator, settings) -> str:
    """A first run that stops cv0 with its refused message's outcome unknown, or before it; returns that message.

    `5xx`: cv0-0's request is answered 503, its retry refused (400): it may have landed, and stays `failed`.
    `kill`: the run dies with cv0-2's request on the wire: it stays `sending`.
    `lost answer`: cv0-0 landed but its answer was lost, and its repeat was refused (409): cv0 stops before cv0-2.
    """
    if how == "kill":
        original = ChatsClient.new_message

        async def dies_sending_cv0_2(self, payload):
            if payload["msgid"] == "ae-cv0-2":
                raise Killed
            return await original(self, payload)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ChatsClient, "new_message", dies_sending_cv0_2)
            with pytest.raises(Killed):
                await run_interval(settings)
        return "ae-cv0-2"
    refused = "ae-cv0-0" if how == "5xx" else "ae-cv0-2"
    lost_then_refused = [{"endpoint": "message", "lose": "500"}, {"endpoint": "message", "status": 409}]
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "message", "status": 503}] if how == "5xx" else
                                        lost_then_refused))
    first = await run_interval(settings)
    assert list(first.load.stopped) == ["ae-cv0"] and not first.load.api_rejected
    emulator.emulator.set_faults(Faults())
    return refused


def _source(tmp_path, refused: str) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(url, conversations=2, messages=4)
    edit_text(url, refused.removeprefix("ae-"), LONG)
    return url


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _chat_of(emulator, conversation: str) -> list[str]:
    """The msgids of a conversation's chat in amoCRM, in the order they landed."""
    return [m["msgid"] for chat in emulator.emulator.snapshot()["messages"].values() for m in chat
            if m["msgid"].startswith(conversation + "-")]


def _assert_refused_once_and_listed(emulator, ledger_url: str, refused: str, monkeypatch, tmp_path) -> None:
    """cv0 holds every message but the refused one, once each and in order; the refusal is a reject with the API's
    reason, listed by `amojo-etl rejects` and its CSV, without a secret."""
    assert _chat_of(emulator, "ae-cv0") == [f"ae-cv0-{n}" for n in range(4) if f"ae-cv0-{n}" != refused]
    held = landed(emulator)
    assert len(held) == 7 and {len(copies) for copies in held.values()} == {1}
    ledger = Ledger(ledger_url)
    assert ledger.messages.states([refused])[refused].status == MessageStatus.REJECTED
    rows = ledger.rejects.rows()
    ledger.close()
    assert [(r["source_key"], r["reason"]) for r in rows] == [(KEYS[refused], "api_400")]
    config = emulator.emulator.config
    for value in (rows[0]["detail"], rows[0]["row"]):
        assert config.channel_secret not in value and config.token not in value
    assert "text" in rows[0]["detail"]  # the API's own reason: the text is longer than the account takes
    assert LONG in rows[0]["row"]

    monkeypatch.setenv("AMOJO_ETL_STATE_URL", ledger_url)
    monkeypatch.setenv("COLUMNS", "1000")
    shown = CliRunner().invoke(cli.app, ["rejects"])
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert KEYS[refused] in shown.output and "api_400" in shown.output
    out = tmp_path / "rejects.csv"
    written = CliRunner().invoke(cli.app, ["rejects", "--csv", str(out)])
    assert written.exit_code == 0, (written.output, written.exception)
    with out.open(newline="") as f:
        listed = list(csv.DictReader(f))
    assert [(r["source_key"], r["reason"], r["interval"]) for r in listed] == [
        (KEYS[refused], "api_400", "2026-10-05..2026-10-06")]


@pytest.mark.parametrize("how", ["5xx", "kill", "lost answer"])
@pytest.mark.parametrize("emulator_config", [EmulatorConfig(text_limit=40)])
async def test_a_data_refusal_after_an_uncertain_attempt_is_a_listed_reject_and_its_conversation_goes_on(
        emulator, ledger_url, monkeypatch, tmp_path, how):
    refused = "ae-cv0-0" if how == "5xx" else "ae-cv0-2"
    settings = settings_for(emulator, _source(tmp_path, refused), ledger_url, concurrency=1)
    assert await _left_uncertain(how, emulator, settings) == refused

    second = await run_interval(settings)
    assert second.load.api_rejected == Counter({"api_400": 1}) and not second.load.stopped
    assert second.verdict.verdict == "complete", second.verdict
    _assert_refused_once_and_listed(emulator, ledger_url, refused, monkeypatch, tmp_path)

    third = await run_interval(settings)  # changes nothing: the reject waits for the source to change the row
    assert third.load.messages_sent == 0 and not third.load.api_rejected and not third.load.failed
    assert third.verdict.verdict == "complete", third.verdict
    _assert_refused_once_and_listed(emulator, ledger_url, refused, monkeypatch, tmp_path)


async def _reconcile_repair(settings) -> int:
    """`amojo-etl reconcile --repair` of the day without Prefect: the read-back, then `repair_day` (which marks what
    is missing and imports the day again: here through the harness, as the flow's child run would). Returns how
    many messages the read-back found missing."""
    import flows.day_runs as day_runs

    interval = Interval.days(DAY, DAY.replace(day=DAY.day + 1), settings.zone)
    ledger = Ledger(settings.state_url)
    try:
        async with open_api(settings, ledger) as api:
            verdict = await reconcile(api, ledger, interval.start_ms, interval.end_ms, reread_delay=0.1)
        if verdict.missing or verdict.mismatched:
            async def import_day(day, dry_run=False):
                result = await run_interval(settings)
                return None, RunSummary(interval=day.label, messages_sent=result.load.messages_sent,
                                        messages_edited=result.load.messages_edited)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(day_runs, "import_day", import_day)
                await day_runs.repair_day(settings, ledger, interval, verdict.missing, verdict.mismatched)
    finally:
        ledger.close()
    return len(verdict.missing)


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(text_limit=40)])
async def test_a_data_refusal_met_by_a_reconcile_repair_is_a_listed_reject_and_a_second_repair_does_nothing(
        emulator, ledger_url, monkeypatch, tmp_path):
    settings = settings_for(emulator, _source(tmp_path, "ae-cv0-0"), ledger_url, concurrency=1)
    refused = await _left_uncertain("5xx", emulator, settings)  # cv0-0 `failed`, cv0 stopped before the rest

    assert await _reconcile_repair(settings) == 4  # all of cv0
    _assert_refused_once_and_listed(emulator, ledger_url, refused, monkeypatch, tmp_path)
    assert await _reconcile_repair(settings) == 0  # the reject is not expected in amoCRM: nothing to repair
    _assert_refused_once_and_listed(emulator, ledger_url, refused, monkeypatch, tmp_path)
