"""What a person reads at a glance: the run's headline and the progress card's line."""

from __future__ import annotations

import csv
import json
import re
import shlex
from datetime import date

from typer.testing import CliRunner

from etl import cli
from etl.ledger import Ledger
from etl.settings import Settings
from etl.summary import RunSummary, import_headline
from flows.backfill import days_done_line
from tasks.report import (
    REJECT_SAMPLES,
    artifact_key,
    backfill_days_markdown,
    progress_line,
    rejects_markdown,
    verdict_markdown,
)


def test_the_headline_names_the_counts_and_the_verdict():
    assert import_headline({"messages_sent": 2879, "rejected": 2, "missing": 0, "verdict": "complete"}) == \
        "2879 sent · 2 rejected · 0 missing · complete"
    assert import_headline({"messages_sent": 5, "messages_edited": 1, "messages_failed": 2, "rejected": 0,
                            "missing": 3, "quarantined": {"c": "ambiguous contact"}, "verdict": "incomplete",
                            "lookback": [{"outcome": "unchanged"}, {"outcome": "imported"}]}) == \
        "5 sent · 1 edited · 2 failed · 0 rejected · 3 missing · 1 quarantined · 1 earlier days again · incomplete"
    assert import_headline({"dry_run": True, "verdict": "incomplete"}).endswith("· dry run")


def test_progress_says_rows_of_total_rate_and_time_left():
    assert progress_line(12_000, 50_000, 20.0) == "12,000 of 50,000 source rows · 600 rows/s · about 1 min 4 s left"
    assert progress_line(900, 1_000, 3.0) == "900 of 1,000 source rows · 300 rows/s · about 1 s left"
    assert progress_line(1_000, 1_000, 4.0) == "1,000 of 1,000 source rows · 250 rows/s"
    assert progress_line(0, 1_000, 0.0) == "0 of 1,000 source rows"


def _summary_with_rejects(count: int, interval: str = "2026-10-01..2026-10-02") -> RunSummary:
    rows = [{"source_key": f"m{i}", "reason": "empty_text", "detail": "text is empty",
             "row": json.dumps({"id": f"m{i}", "conversation_id": "c7", "created_at": "2026-10-01 09:00:00",
                                "direction": "in", "text": "   ", "media_url": "https://example.com/" + "x" * 500})}
            for i in range(count)]
    return RunSummary(interval=interval, rejected=count, rejects_by_reason={"empty_text": count},
                      reject_samples=rows[:REJECT_SAMPLES])


def test_rejects_read_as_a_table_of_their_key_reason_and_fields():
    text = rejects_markdown(_summary_with_rejects(70))
    assert "| empty_text | 70 |" in text
    assert "### The first 20 of 70" in text
    header = next(line for line in text.splitlines() if line.startswith("| source key"))
    assert header == ("| source key | reason | detail | conversation id | created at | direction | manager id | type "
                      "| text |")
    assert "| m0 | empty_text | text is empty | c7 | 2026-10-01 09:00:00 | in |" in text
    assert "{" not in text and "example.com" not in text  # not the raw row
    assert sum(line.startswith("| m") for line in text.splitlines()) == REJECT_SAMPLES


def test_a_long_text_is_cut_with_an_ellipsis_on_one_line():
    summary = _summary_with_rejects(1)
    summary.reject_samples[0]["row"] = json.dumps({"text": "line one\nline | two " + "x" * 200})
    line = next(line for line in rejects_markdown(summary).splitlines() if line.startswith("| m0"))
    assert line.endswith("line one line \\| two " + "x" * 39 + "… |")
    assert "### All 1" in rejects_markdown(summary)


def test_a_rejected_text_shows_as_itself_not_as_markdown():
    """A client's text in the rejects table: a backslash before a pipe must not split the row, and markdown in it
    (an image that would load from elsewhere) must not render in the operator's UI."""
    summary = _summary_with_rejects(1)
    summary.reject_samples[0]["row"] = json.dumps({"text": "C:\\dir\\| ![x](https://evil.example/p.png) *b*"})
    text = rejects_markdown(summary)
    header = next(line for line in text.splitlines() if line.startswith("| source key"))
    line = next(line for line in text.splitlines() if line.startswith("| m0"))
    unescaped_pipes = len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))  # a pipe after an even run of backslashes
    assert unescaped_pipes == header.count("|")
    assert "![x](" not in text and "*b*" not in text


def test_no_rejects_is_one_line_not_an_empty_table():
    assert rejects_markdown(RunSummary(interval="2026-10-01..2026-10-02")) == \
        "Nothing rejected in 2026-10-01..2026-10-02: every source row was valid.\n"


def test_the_rejects_pointer_writes_every_reject_of_the_interval(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOJO_ETL_STATE_URL", f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.chdir(tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.rejects.save([{"source_key": f"m{i}", "reason": "empty_text", "detail": "", "row": "{}"}
                         for i in range(70)], "2026-10-01..2026-10-02")
    ledger.rejects.save([{"source_key": "other", "reason": "empty_text", "detail": "", "row": "{}"}],
                        "2026-10-02..2026-10-03")
    ledger.close()
    command = re.search(r"`amojo-etl ([^`]+)`", rejects_markdown(_summary_with_rejects(70))).group(1)
    result = CliRunner().invoke(cli.app, shlex.split(command))
    assert result.exit_code == 0, (result.output, result.exception)
    with (tmp_path / "rejects.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source_key"] for r in rows) == sorted(f"m{i}" for i in range(70))  # all, beyond the 50 shown
    assert {r["interval"] for r in rows} == {"2026-10-01..2026-10-02"}


RUN_ID = "0b6c3f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
DAYS = [{"day": "2026-10-01..2026-10-02", "outcome": "complete", "sent": 120, "rejected": 2, "missing": 0,
         "run": RUN_ID},
        {"day": "2026-10-02..2026-10-03", "outcome": "skipped (complete)"}]


def test_backfill_days_have_counts_and_a_link_to_each_days_run():
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    with temporary_settings({PREFECT_UI_URL: "http://prefect.example:4300"}):
        text = backfill_days_markdown("Backfill 2026-10-01..2026-10-03", DAYS)
    assert "| day | outcome | sent | rejected | missing | run |" in text
    assert f"| 2026-10-01..2026-10-02 | complete | 120 | 2 | 0 | [open](http://prefect.example:4300/runs/flow-run/" \
           f"{RUN_ID}) |" in text
    assert "| 2026-10-02..2026-10-03 | skipped (complete) |  |  |  |  |" in text


def test_without_a_ui_the_days_run_is_named_by_its_id():
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_UI_URL, PREFECT_API_URL}):
        text = backfill_days_markdown("Backfill", DAYS)
    assert f"| 0 | `{RUN_ID}` |" in text


def test_backfill_progress_says_days_done_and_their_outcomes():
    assert days_done_line(date(2026, 10, 1), date(2026, 10, 8),
                          {"a": "complete", "b": "incomplete", "c": "complete"}, 7) == \
        "Days of 2026-10-01..2026-10-08: 3 of 7 done · 2 complete · 1 incomplete"


def test_artifact_keys_tell_accounts_apart():
    def key(url: str | None) -> str:
        return artifact_key("import-summary", Settings(amocrm_url=url))

    assert key("https://MyCompany.amocrm.ru") == "import-summary-mycompany"
    assert key("https://shop_2.kommo.com/") == "import-summary-shop-2"
    assert key("http://127.0.0.1:8123") == "import-summary-127-0-0-1-8123"
    assert key(None) == "import-summary"
    assert key("https://mycompany.amocrm.ru.") == "import-summary-mycompany"  # the same account, with a root dot
    assert key("https://компания.amocrm.ru") == "import-summary-xn-80aqeigdi5k"  # a name, not no account
    assert all(re.fullmatch(r"[a-z0-9-]+", key(u)) for u in ("https://Ünï.amocrm.com", "http://[::1]:80"))


def test_the_verdict_names_each_quarantine_with_its_contacts_and_the_fix():
    reason = ("ambiguous contact: 2 contacts match the client's phone (3100301, 3100302); merge them in amoCRM, "
              "then run again")
    text = verdict_markdown(RunSummary(interval="2026-10-01..2026-10-02", verdict="incomplete",
                                       quarantined={"ae-cv5": reason, "ae-cv7": reason}))
    assert "quarantined conversations: 2" in text
    assert "3100301, 3100302" in text and "merge them in amoCRM, then run again" in text
    assert "ae-cv5, ae-cv7" in text


def test_a_row_dated_after_the_workers_clock_leaves_its_day_incomplete_for_a_later_run():
    """A worker whose clock is behind the source's sees the newest rows in the future: they are held back
    (`future_timestamp`, listed with the rejects), not judged, so their day is not complete and the next run (the
    nightly look-back, `backfill --reprocess failed`) takes them once they are due. Other rejects do not."""
    import pandas as pd

    from tasks.reconcile import Verdict
    from tasks.report import RunTotals
    from tasks.transform import Batch

    def verdict_with(reason: str) -> str:
        totals = RunTotals("2026-10-05..2026-10-06")
        totals.add_batch(Batch(pd.DataFrame(), pd.DataFrame(columns=["msgid", "msec", "content_hash"]),
                               pd.DataFrame([("message:m1@1", reason)], columns=["source_key", "reason"])))
        summary = totals.summary(Verdict(), 1.0)
        assert summary.rejects_by_reason == {reason: 1}
        return summary.verdict

    assert verdict_with("future_timestamp") == "incomplete"
    assert verdict_with("empty_text") == "complete"
