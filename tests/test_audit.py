"""The audit: source, ledger and amoCRM compared day by day, every kind of difference named by message id, and
repaired through the exactly-once path with nothing sent twice."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

import pytest
from load_harness import edit_text, execute, write_source
from typer.testing import CliRunner

from etl import cli
from flows.audit import audit
from flows.import_chats import import_chats
from flows.outcome import summary_of

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]

DAYS = (date(2026, 10, 4), date(2026, 10, 5))
WRITES = ("message",)  # new_message and edit_message alike: the Chats API's one write route


def _last_audits() -> dict[str, dict]:
    """Day -> the last audit `status --json` shows beside the day's import."""
    result = CliRunner().invoke(cli.app, ["status", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return {f"{row['start'][:10]}..{row['end'][:10]}": row["last_audit"]
            for row in json.loads(result.output)["intervals"]}


def _held(emulator) -> Counter:
    return Counter(m["msgid"] for m in emulator.emulator.store.messages())


async def test_the_audit_names_every_difference_and_repair_leaves_only_what_it_must_not_undo(emulator, source_env):
    source = source_env
    for day in DAYS:
        write_source(source, conversations=2, messages=3, day=day, tag=f"d{day.day}-")
        assert (await import_chats(start=day, end=day + timedelta(days=1)))["verdict"] == "complete"
    end = DAYS[1] + timedelta(days=1)
    clean = await audit(start=DAYS[0], end=end)
    assert clean["verdict"] == "consistent" and clean["source"] == 12 and clean["amocrm"] == 12

    # What real data and amoCRM do after the fact:
    execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) VALUES "
                    "('late-1', 'd5-cv1', '2026-10-05 22:00:00', 'in', 'text', 'synced late')")  # a late row
    edit_text(source, "d4-cv0-1", "corrected at the source")  # an edited row
    execute(source, "DELETE FROM messages WHERE id = 'd5-cv0-2'")  # a deleted row
    store = emulator.emulator.store
    store.drop_message("ae-d4-cv1-0")  # a message amoCRM lost
    changed = next(m for m in store.messages() if m["msgid"] == "ae-d5-cv1-2")
    store.edit_message(changed["id"], {"text": "changed in amoCRM"})  # other content in amoCRM
    emulator.emulator.request_log.clear()

    state = await audit(start=DAYS[0], end=end, return_state=True)
    found = await summary_of(state)
    assert state.is_failed() and state.name == "Differs" and found["verdict"] == "differs"
    by_day = {day["day"]: day for day in found["by_day"]}
    first, second = by_day["2026-10-04..2026-10-05"], by_day["2026-10-05..2026-10-06"]
    assert (first["changed_at_source"], first["missing_in_amocrm"]) == (["ae-d4-cv0-1"], ["ae-d4-cv1-0"])
    assert (second["not_sent"], second["deleted_at_source"], second["other_content"]) == \
        (["ae-late-1"], ["ae-d5-cv0-2"], ["ae-d5-cv1-2"])
    assert second["source_valid"] == 6 and second["ledger"]["pending"] == 1
    assert not any(e[2] in WRITES for e in emulator.emulator.request_log)  # an audit writes nothing to amoCRM
    assert "1 not sent · 1 missing in amocrm · 1 other content" in state.message
    shown = _last_audits()
    assert [a["verdict"] for a in shown.values()] == ["differs", "differs"]
    assert shown["2026-10-05..2026-10-06"]["differences"]["not_sent"] == 1
    assert shown["2026-10-05..2026-10-06"]["source"] == 6 and not shown["2026-10-05..2026-10-06"]["repair"]

    repaired = await audit(start=DAYS[0], end=end, repair=True)
    assert repaired["verdict"] == "consistent" and repaired["repaired"] == 4  # late, lost: sent; two: edited
    assert sum(e[2] in WRITES for e in emulator.emulator.request_log) == 4  # each once, nothing else
    assert repaired["differences"] == {"not_sent": 0, "missing_in_amocrm": 0, "other_content": 0,
                                       "changed_at_source": 0, "deleted_at_source": 1, "duplicates": 0}
    held = _held(emulator)
    assert set(held.values()) == {1} and held["ae-late-1"] == 1 and held["ae-d4-cv1-0"] == 1
    assert held["ae-d5-cv0-2"] == 1  # deleted at the source: reported, never deleted in amoCRM
    texts = {m["msgid"]: m["message"].get("text") for m in store.messages()}
    assert texts["ae-d4-cv0-1"] == "corrected at the source" and texts["ae-d5-cv1-2"] != "changed in amoCRM"
    shown = _last_audits()
    assert [(a["verdict"], a["repair"], a["repaired"]) for a in shown.values()] == [
        ("consistent", True, 2), ("consistent", True, 2)]
    table = CliRunner().invoke(cli.app, ["status"], env={"COLUMNS": "200"}).output
    assert table.count("consistent (repaired)") == 2

    emulator.emulator.request_log.clear()
    again = await audit(start=DAYS[0], end=end)
    assert again["verdict"] == "consistent" and not any(e[2] in WRITES for e in emulator.emulator.request_log)


async def test_an_audit_read_while_another_run_writes_into_the_chats_finds_only_what_differs(
        emulator, source_env, monkeypatch):
    """Another run imports the day while the audit reads its history back: between two pages it edits a message
    the source corrected (which does not move the pages) and sends a late row (which does). The audit reports what
    really differs, a message amoCRM lost, and not the edit it saw half-way; the repair sends the lost one only."""
    from amojo.chats import ChatsClient

    source, day, end = source_env, DAYS[0], DAYS[0] + timedelta(days=1)
    write_source(source, conversations=2, messages=120, day=day)  # cv0: three history pages
    assert (await import_chats(start=day, end=end))["verdict"] == "complete"
    store = emulator.emulator.store
    store.drop_message("ae-cv0-5")  # a message amoCRM lost: a true difference
    read_page = ChatsClient.history_page
    meanwhile = []

    async def another_run_writes(self, chat_id, offset=0, limit=50):
        page = await read_page(self, chat_id, offset, limit)
        if not meanwhile and page and page[0]["message"]["client_id"].startswith("ae-cv0-"):
            meanwhile.append(offset)
            edit_text(source, "ae-cv0-30"[3:], "corrected at the source meanwhile")
            execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) VALUES "
                            "('late-1', 'cv0', :t, 'in', 'text', 'synced late')", t=f"{day} 23:30:00")
            other = await summary_of(await import_chats(start=day, end=end, return_state=True))
            assert (other["messages_sent"], other["messages_edited"]) == (1, 1)  # the late row; the correction
        return page

    monkeypatch.setattr(ChatsClient, "history_page", another_run_writes)
    found = await summary_of(await audit(start=day, end=end, return_state=True))
    monkeypatch.setattr(ChatsClient, "history_page", read_page)
    assert meanwhile == [0]
    (audited,) = found["by_day"]
    assert audited["missing_in_amocrm"] == ["ae-cv0-5"]
    assert audited["other_content"] == audited["duplicates"] == audited["changed_at_source"] == []

    emulator.emulator.request_log.clear()
    repaired = await audit(start=day, end=end, repair=True)
    assert repaired["verdict"] == "consistent" and repaired["repaired"] == 1
    assert sum(e[2] in WRITES for e in emulator.emulator.request_log) == 1  # the lost message, sent once
    held = _held(emulator)
    assert set(held.values()) == {1} and len(held) == 241
    texts = {m["msgid"]: m["message"].get("text") for m in store.messages()}
    assert texts["ae-cv0-30"] == "corrected at the source meanwhile" and texts["ae-late-1"] == "synced late"


async def test_the_headline_adds_up_rows_created_on_a_day_apart_from_rows_edited_on_it(emulator, source_env):
    """A row edited on a later day is read again on that day (the edits pass), and a rejected row is never in
    amoCRM: the headline counts the rows created in the range, and what became of each, so that a consistent
    audit reads `created = in amoCRM + rejected`, the edits beside it, not a shortfall."""
    source = source_env
    for day in DAYS:
        write_source(source, conversations=2, messages=3, day=day, tag=f"d{day.day}-")
    execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) VALUES "
                    "('blank-1', 'd5-cv1', '2026-10-05 21:00:00', 'in', 'text', '   ')")  # rejected: empty_text
    execute(source, "UPDATE messages SET text = 'corrected the next day', updated_at = '2026-10-05 09:00:00' "
                    "WHERE id = 'd4-cv0-1'")  # created on the 4th, edited on the 5th
    for day in DAYS:
        await import_chats(start=day, end=day + timedelta(days=1))

    found = await audit(start=DAYS[0], end=DAYS[1] + timedelta(days=1))
    assert found["verdict"] == "consistent"
    assert (found["created"], found["in_amocrm"], found["rejected"], found["edited"]) == (13, 12, 1, 1)
    assert found.headline.startswith("13 created in the source = 12 in amoCRM + 1 rejected · 1 edited")
    by_day = {day["day"]: day for day in found.as_dict()["by_day"]}
    second = by_day["2026-10-05..2026-10-06"]
    assert (second["created"], second["in_amocrm"], second["rejected"], second["edited"]) == (7, 6, 1, 1)
