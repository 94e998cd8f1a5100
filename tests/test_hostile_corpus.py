"""Every row accounted for on a hostile source: a backfill over three days, in chunks of 100, against the emulator.

Each source database is paired with another ledger database, so that the three sources and the three ledgers
all run: SQLite -> PostgreSQL, PostgreSQL -> MariaDB, MariaDB -> SQLite. After the backfill:
- every valid row is in amoCRM exactly once, in its own chat, each chat in time order;
- every bad row is in the ledger's rejects with its reason, and nowhere in amoCRM;
- per day, valid + rejected = the rows whose time lies in that day; the rejects table holds exactly the rows the
  days' summaries counted, plus the rows no day can select (reported by the backfill and `status`).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pandas as pd
import pytest
from conftest import etl_env
from hostile_source import DAYS, TEXT_LIMIT, ZONE, build, write
from typer.testing import CliRunner

from etl.cli import app
from etl.ledger import Ledger
from flows.backfill import backfill

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]



def _url(kind: str, tmp_path, request, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / name}"
    return request.getfixturevalue(f"{kind}_url")


def _reject_identity(reject: dict) -> tuple:
    row = json.loads(reject["row"])
    return row.get("id"), row.get("conversation_id"), row.get("text")


def _row_identity(values: dict) -> tuple:
    text = values.get("text")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode("utf-8")
    return values.get("id"), values.get("conversation_id"), text


async def _backfill(reprocess: str = "missing") -> dict:
    state = await backfill(start=DAYS[0], end=DAYS[-1] + timedelta(days=1), max_parallel=1, reprocess=reprocess,
                           return_state=True)
    assert state.is_completed(), state.message
    return await state.aresult()


@pytest.mark.parametrize(("source_kind", "ledger_kind"),
                         [("sqlite", "postgres"), ("postgres", "mariadb"), ("mariadb", "sqlite")])
async def test_every_row_of_a_hostile_source_is_sent_once_or_rejected_with_its_reason(
        source_kind, ledger_kind, emulator, tmp_path, request, monkeypatch):
    source = _url(source_kind, tmp_path, request, "source.db")
    ledger_url = _url(ledger_kind, tmp_path, request, "ledger.db")
    rows = write(source, build())
    assert len({r.kind for r in rows}) >= 40, "the corpus holds at least 40 kinds of rows"
    for key, value in {**etl_env(emulator, source, ledger_url), "AMOJO_ETL_TIMEZONE": ZONE.key,
                       "AMOJO_ETL_SOURCE_TIMEZONE": "UTC", "AMOJO_ETL_CHUNK_SIZE": "100",
                       "AMOJO_ETL_TEXT_LIMIT": str(TEXT_LIMIT)}.items():
        monkeypatch.setenv(key, value)

    summary = await _backfill()
    assert summary["failed"] == 0, summary
    unplaced = [r for r in rows if r.expect.outcome == "unplaced"]
    assert summary["unplaced"] == len(unplaced)

    snapshot = emulator.emulator.snapshot()
    chat_of = {chat["id"]: chat["conversation_id"] for chat in snapshot["chats"]}
    landed = Counter((m["msgid"], chat_of[chat]) for chat, ms in snapshot["messages"].items() for m in ms)
    expected_sent = Counter((f"ae-{r.values['id']}", f"ae-{r.expect.chat}") for r in rows
                            if r.expect.outcome == "sent")
    assert landed == expected_sent, "every valid row exactly once, in its own chat, and nothing else"
    for messages in snapshot["messages"].values():
        assert [m["msec_timestamp"] for m in messages] == sorted(m["msec_timestamp"] for m in messages)
    texts = {m["msgid"]: m["message"].get("text") for ms in snapshot["messages"].values() for m in ms}
    assert texts["ae-reused"] == "first, day one"  # the later row with its id did not edit it
    assert texts["ae-ctrl-inside"] == "bell removed" and texts["ae-[/bold]"] == "x"
    assert texts["ae-edited"] == "as edited"

    ledger = Ledger(ledger_url)
    rejects = ledger.rejects.rows()
    by_row = Counter((_reject_identity(r), r["reason"]) for r in rejects)
    expected_rejects = Counter((_row_identity(r.values), r.expect.reason) for r in rows
                               if r.expect.outcome in ("rejected", "unplaced"))
    assert by_row == expected_rejects, "every bad row rejected once, with its reason"

    days = {row["summary"]["interval"]: row["summary"] for row in ledger.intervals.rows()}
    for day in DAYS:
        label = f"{day.isoformat()}..{(day + timedelta(days=1)).isoformat()}"
        selected = [r for r in rows if r.day == day]
        edited = [r for r in rows if r.edited == day and r.day != day]  # read again by the edits pass
        day_summary = days[label]
        assert day_summary["messages_valid"] + day_summary["rejected"] == len(selected) + len(edited), label
        assert day_summary["rejected"] == sum(1 for r in selected if r.expect.outcome == "rejected"), label
        assert day_summary["verdict"] == "complete", (label, day_summary)
    assert len(rejects) == sum(s["rejected"] for s in days.values()) + len(unplaced)
    ledger.close()

    # What the user reads: `status` counts the rows no day can import; `rejects` lists every rejected row.
    cli = CliRunner()
    status = cli.invoke(app, ["status", "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["unplaced"] == len(unplaced)
    listed = cli.invoke(app, ["rejects", "--limit", "0", "--csv", str(tmp_path / "rejects.csv")])
    assert listed.exit_code == 0 and len(pd.read_csv(tmp_path / "rejects.csv")) == len(rejects)
    shown = cli.invoke(app, ["rejects", "--limit", "0"])
    assert shown.exit_code == 0, shown.output

    if source_kind == "sqlite":  # again, everything: nothing sent twice, the same rejects under the same keys
        keys = {r["source_key"] for r in rejects}
        await _backfill(reprocess="all")
        again = emulator.emulator.snapshot()
        assert Counter(m["msgid"] for ms in again["messages"].values() for m in ms) == Counter(
            msgid for msgid, _ in landed.elements())
        ledger = Ledger(ledger_url)
        assert {r["source_key"] for r in ledger.rejects.rows()} == keys
        ledger.close()
