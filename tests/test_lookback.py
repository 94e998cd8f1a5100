"""Late rows: a run reads the days before its own again, and sends what arrived since those days were imported."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import pandas as pd
import pytest
from load_harness import execute, write_source

from tasks.transform import Batch, source_digest

DAYS = [date(2026, 10, 4) + timedelta(days=n) for n in range(5)]  # 10-04 .. 10-08


def _batch(messages: list[tuple[str, int, int]], rejects: list[tuple[str, str]] = ()) -> Batch:
    return Batch(pd.DataFrame(), pd.DataFrame(messages, columns=["msgid", "msec", "content_hash"]),
                 pd.DataFrame(list(rejects), columns=["source_key", "reason"]))


def test_the_source_digest_does_not_depend_on_chunks_and_sees_every_change():
    rows = [("a", 1, 10), ("b", 2, 20), ("c", 3, 30)]
    whole = source_digest(_batch(rows, [("k", "empty_text")]))
    parts = [source_digest(_batch(rows[:1])), source_digest(_batch(rows[1:], [("k", "empty_text")]))]
    assert whole == (4, sum(d for _, d in parts) % 2**64)
    assert source_digest(_batch(rows[::-1], [("k", "empty_text")])) == whole
    for changed in ([("a", 1, 11), *rows[1:]], [("a", 5, 10), *rows[1:]], [*rows, ("d", 4, 40)], rows[:2]):
        assert source_digest(_batch(changed, [("k", "empty_text")]))[1] != whole[1]
    assert source_digest(_batch(rows, [("k", "unknown_type")]))[1] != whole[1]


def _add_late_message(url: str, conversation: str, day: date) -> str:
    execute(url, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                 "VALUES ('late-1', :c, :t, 'in', 'text', 'synced late from a phone')",
            c=conversation, t=f"{day.isoformat()} 23:30:00")
    return "ae-late-1"


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
async def test_a_late_row_reaches_amocrm_with_the_next_run_and_nothing_else_is_sent_again(emulator, source_env):
    from flows.import_chats import import_chats

    source = source_env
    for day in DAYS:
        write_source(source, conversations=2, messages=3, day=day, tag=f"d{day.day}-")
    for day in DAYS[:4]:
        summary = await import_chats(start=day, end=day + timedelta(days=1))
        assert summary["verdict"] == "complete" and summary["messages_sent"] == 6
    late = _add_late_message(source, "d5-cv0", DAYS[1])
    emulator.emulator.request_log.clear()

    summary = await import_chats(start=DAYS[4], end=DAYS[4] + timedelta(days=1), lookback_days=3)

    assert summary["verdict"] == "complete" and summary["messages_sent"] == 6
    assert [(d["interval"], d["outcome"]) for d in summary["lookback"]] == [
        ("2026-10-05..2026-10-06", "imported"), ("2026-10-06..2026-10-07", "unchanged"),
        ("2026-10-07..2026-10-08", "unchanged")]
    assert summary["lookback"][0]["messages_sent"] == 1 and summary["lookback"][0]["verdict"] == "complete"
    held = Counter(m["msgid"] for messages in emulator.emulator.snapshot()["messages"].values() for m in messages)
    assert held[late] == 1 and set(held.values()) == {1} and len(held) == 4 * 6 + 6 + 1
    requests = Counter(endpoint for _, _, endpoint, _ in emulator.emulator.request_log)
    # The day's six messages and the late one; history reads for the changed day's and the new day's chats only.
    assert requests["message"] == 7 and requests["history"] == 2 + 2

    summary = await import_chats(start=DAYS[4], end=DAYS[4] + timedelta(days=1), lookback_days=3)
    assert [d["outcome"] for d in summary["lookback"]] == ["unchanged"] * 3 and summary["messages_sent"] == 0


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
async def test_a_backfill_of_changed_days_takes_the_day_that_gained_a_row_and_no_other(emulator, source_env):
    from flows.backfill import backfill

    source = source_env
    for day in DAYS[:4]:
        write_source(source, conversations=2, messages=3, day=day, tag=f"d{day.day}-")
    first = await backfill(start=DAYS[0], end=DAYS[4], max_parallel=1)
    assert first["verdict"] == "complete" and first["ran"] == 4
    late = _add_late_message(source, "d5-cv0", DAYS[1])

    assert (await backfill(start=DAYS[0], end=DAYS[4]))["ran"] == 0  # missing: every day is there
    changed = await backfill(start=DAYS[0], end=DAYS[4], reprocess="changed")

    assert changed["ran"] == 1 and changed["outcomes"] == {"2026-10-05..2026-10-06": "complete"}
    held = Counter(m["msgid"] for messages in emulator.emulator.snapshot()["messages"].values() for m in messages)
    assert held[late] == 1 and set(held.values()) == {1} and len(held) == 4 * 6 + 1
    assert (await backfill(start=DAYS[0], end=DAYS[4], reprocess="changed"))["ran"] == 0


async def test_a_look_back_that_loses_its_claims_or_cannot_read_is_a_failed_day_not_a_crashed_run(tmp_path,
                                                                                                 monkeypatch):
    """A look-back day whose claims are lost (a stall; the main day's path expects it too), or days whose change
    cannot be told (amoCRM's users do not answer), are failed days of the look-back, and the run goes on to its own
    day and ends with its summary."""
    import logging
    from types import SimpleNamespace
    from zoneinfo import ZoneInfo

    import flows.import_chats as flow
    from amojo.errors import Transient
    from etl.claims import ClaimLost
    from etl.intervals import Interval

    settings = SimpleNamespace(state_url=f"sqlite:///{tmp_path / 'ledger.db'}", zone=ZoneInfo("UTC"))
    interval = Interval.days(DAYS[4], DAYS[4] + timedelta(days=1), settings.zone)
    monkeypatch.setattr(flow, "get_run_logger", lambda: logging.getLogger("test"))

    async def every_day_changed(settings, days):
        return {day.label: "changed" for day in days}

    async def claims_lost(settings, day, dry_run, began, held):
        raise ClaimLost("this run could not keep its claims")

    monkeypatch.setattr(flow, "days_to_revisit", every_day_changed)
    monkeypatch.setattr(flow, "_import", claims_lost)
    outcomes = await flow._look_back(settings, interval, 2, {})
    assert [(d["interval"], d["outcome"]) for d in outcomes] == [
        ("2026-10-06..2026-10-07", "failed"), ("2026-10-07..2026-10-08", "failed")]

    async def users_unanswered(settings, days):
        raise Transient("REST v4 answered 503", status=503)

    monkeypatch.setattr(flow, "days_to_revisit", users_unanswered)
    outcomes = await flow._look_back(settings, interval, 2, {})
    assert [d["outcome"] for d in outcomes] == ["failed", "failed"] and "503" in outcomes[0]["error"]


def _chat_order(emulator, conversation_prefix: str) -> list[str]:
    """The msgids amoCRM holds whose ids start with `conversation_prefix`, in the order it stored them."""
    return [m["msgid"] for m in emulator.emulator.store.messages() if m["msgid"].startswith(conversation_prefix)]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("failure", [
    {"endpoint": "connect", "status": 403},  # the night failed before it registered anything
    {"endpoint": "message", "status": 401, "times": 2},  # it registered its messages, then failed sending them
], ids=["before-registering", "mid-send"])
async def test_after_a_failed_night_the_next_night_settles_the_earlier_day_before_its_own(emulator, source_env,
                                                                                        failure):
    """A conversation open across two days: the night of its first day fails; the next night's run (its own day,
    looking back two days, as the nightly schedule runs it) sends the first day's messages before its own day's,
    and both days end complete."""
    from amojo.emulator.config import Faults
    from flows.import_chats import import_chats

    source = source_env
    for day in DAYS[:3]:
        write_source(source, conversations=2, messages=3, day=day, tag=f"d{day.day}-")
    for m in range(3):  # the client of d5-cv0 writes again the next day
        execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                        "VALUES (:i, 'd5-cv0', :t, 'in', 'text', 'the next day')",
                i=f"d5-cv0-next{m}", t=f"{DAYS[2].isoformat()} 0{m}:30:00")
    assert (await import_chats(start=DAYS[0], end=DAYS[1]))["verdict"] == "complete"

    emulator.emulator.set_faults(Faults(script=[failure]))
    failed = await import_chats(start=DAYS[1], end=DAYS[2], return_state=True)
    assert failed.is_failed() and failed.name != "Incomplete"  # the run failed, not merely incomplete
    emulator.emulator.set_faults(Faults())

    night = await import_chats(start=DAYS[2], end=DAYS[3], lookback_days=2)

    assert night["verdict"] == "complete" and night["messages_sent"] == 6 + 3
    assert [(d["interval"], d["outcome"], d.get("verdict")) for d in night["lookback"]] == [
        ("2026-10-04..2026-10-05", "unchanged", None), ("2026-10-05..2026-10-06", "imported", "complete")]
    held = _chat_order(emulator, "ae-d5-cv0-")
    assert held == [f"ae-d5-cv0-{m}" for m in range(3)] + [f"ae-d5-cv0-next{m}" for m in range(3)]
    held_all = Counter(m["msgid"] for m in emulator.emulator.store.messages())
    assert set(held_all.values()) == {1} and len(held_all) == 3 * 6 + 3


async def test_what_a_look_back_day_leaves_unsent_holds_back_its_conversations_later_messages(tmp_path,
                                                                                           monkeypatch):
    """An earlier day that fails again, or ends incomplete, leaves some conversations' messages unsent: the run's
    own day sends none of theirs (they would land before those), and the next run settles both days in order. The
    conversations it did send, or never had, are not held."""
    import logging
    from types import SimpleNamespace
    from zoneinfo import ZoneInfo

    import flows.import_chats as flow
    from amojo.errors import Transient
    from etl.intervals import Interval
    from etl.ledger import Ledger, MessageStatus
    from etl.summary import RunSummary

    settings = SimpleNamespace(state_url=f"sqlite:///{tmp_path / 'ledger.db'}", zone=ZoneInfo("UTC"))
    days = [Interval.days(day, day + timedelta(days=1), settings.zone) for day in DAYS[:3]]
    ledger = Ledger(settings.state_url)
    rows = [("ae-a-1", "ae-a", days[0]), ("ae-b-1", "ae-b", days[0]), ("ae-c-1", "ae-c", days[1])]
    ledger.messages.register([{"msgid": msgid, "conversation_id": conversation, "msec": day.start_ms + 1000,
                               "content_hash": 1, "text_hash": 1} for msgid, conversation, day in rows])
    ledger.messages.mark(["ae-b-1"], MessageStatus.SENDING)
    ledger.messages.mark(["ae-b-1"], MessageStatus.SENT)
    ledger.close()
    monkeypatch.setattr(flow, "get_run_logger", lambda: logging.getLogger("test"))

    async def both_unfinished(settings, days):
        return {days[0].label: "incomplete", days[1].label: "failed"}

    async def first_incomplete_then_down(settings, day, dry_run, began, held):
        if day == days[0]:
            return RunSummary(interval=day.label, verdict="incomplete")
        raise Transient("amojo answered 503", status=503)

    monkeypatch.setattr(flow, "days_to_revisit", both_unfinished)
    monkeypatch.setattr(flow, "_import", first_incomplete_then_down)
    held: dict[str, str] = {}
    outcomes = await flow._look_back(settings, days[2], 2, held)

    assert [d["outcome"] for d in outcomes] == ["imported", "failed"]
    assert sorted(held) == ["ae-a", "ae-c"]
    assert "incomplete" in held["ae-a"] and "503" in held["ae-c"]
