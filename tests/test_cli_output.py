"""Source data is printed as data: no value in a row can break the CLI's output (issue 11, point 5).

Rich markup, ANSI escapes and other control characters, newlines and very long values in the summary, in `rejects`
and in `status` are shown literally (escaped where invisible, cut where very long); `--json` and `--csv` stay exact.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, date, datetime

import pytest
from typer.testing import CliRunner

from etl.cli import commands as cli
from etl.ledger import Ledger
from etl.summary import RunSummary

LONG = "x" * 10_000
NASTY = ["[/bold]", "[red]x", "\x1b[31mred", "a\nb", LONG]


@pytest.fixture(autouse=True)
def plain_wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """A console wide enough not to wrap a cell, and no colours: the output is the text itself."""
    monkeypatch.setenv("COLUMNS", "1000")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ledger_url(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/l.db"
    monkeypatch.setenv("AMOJO_ETL_STATE_URL", url)
    return url


def assert_shown_as_data(output: str) -> None:
    assert "[/bold]" in output
    assert "[red]x" in output
    assert "\\x1b[31mred" in output
    assert "a\\nb" in output
    assert "\x1b" not in output
    assert "x" * 200 + "…" not in output and "x" * 199 + "…" in output  # cut to the cell width, visibly
    assert LONG not in output


def nasty_summary() -> dict:
    summary = RunSummary(interval="2026-10-01..2026-10-02").as_dict()
    summary.update(
        rejected=5,
        rejects_by_reason={value: 1 for value in NASTY},
        quarantined={value: value for value in NASTY},
        reject_samples=[{"source_key": f"message:{value}", "reason": value, "detail": value} for value in NASTY],
        verdict="[/bold]incomplete",
    )
    return summary


def test_safe_text_escapes_controls_and_cuts_long_values() -> None:
    assert cli._plain("[/bold]").plain == "[/bold]"
    assert cli._plain("\x1b[31mred\r\n\t\x00\x7f\x85\x9b\ud800\u202e").plain == \
        "\\x1b[31mred\\r\\n\\t\\x00\\x7f\\x85\\x9b\\ud800\\u202e"
    assert cli._plain("C:\\new").plain == "C:\\new"  # a backslash in the data is shown as it is
    assert cli._plain("привет 👋").plain == "привет 👋"
    assert cli._plain(None).plain == "None" and cli._plain(3).plain == "3"
    assert cli._plain("y" * 200).plain == "y" * 200
    cut = cli._plain(LONG).plain
    assert len(cut) == 200 and cut.endswith("…")
    cut = cli._plain("a" * 198 + "\x1b[0m").plain  # an escape sequence is never cut in half
    assert cut == "a" * 198 + "…"
    assert cli._plain(LONG, limit=None).plain == LONG
    assert cli._plain("a\nb", keep_newlines=True).plain == "a\nb"


def test_summary_prints_markup_escapes_and_long_values_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    cli._print_summary(nasty_summary())
    output = capsys.readouterr().out
    assert_shown_as_data(output)
    assert "message:[/bold]" in output
    assert "[/bold]incomplete" in output  # the verdict, data too


def test_dry_run_sample_payloads_print_exactly_without_raw_controls(capsys: pytest.CaptureFixture[str]) -> None:
    payloads = [{"text": value + "\x9b2J\u202e"} for value in NASTY]
    summary = nasty_summary()
    summary.update(dry_run=True, plan={"chats_to_create": 1, "messages_to_send": 5, "messages_to_edit": 0,
                                       "messages_to_skip": 0, "sample_payloads": payloads})
    cli._print_summary(summary)
    output = capsys.readouterr().out
    for raw in ("\x1b", "\x9b", "\u202e"):
        assert raw not in output
    printed = output.split("sample payloads, exactly as they would be sent:\n", 1)[1]
    assert json.loads(printed) == payloads  # the same JSON values, every character of them


def test_the_audit_on_screen_adds_up_and_names_the_differences_by_id(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The headline and each day's row count the rows created on the day and what became of each; the rows edited
    on it (created earlier) beside them; the differences by message id, the first few, and how to see them all."""
    from etl.cli.render import audit_table
    from etl.summary import AuditSummary, DayAudit

    monkeypatch.setenv("COLUMNS", "200")
    lost = [f"ae-lost-{i:02d}" for i in range(14)]
    day = DayAudit("2026-10-05..2026-10-06", source_valid=121, source_rejected=2, created=110, rejected=2,
                   in_amocrm=94, edited=13, amocrm=94, ledger={"sent": 119}, missing_in_amocrm=lost)
    audit_table(date(2026, 10, 5), date(2026, 10, 6))(AuditSummary.of([day]))
    shown = capsys.readouterr()
    screen = shown.out + shown.err
    assert "110 created in the source = 94 in amoCRM + 2 rejected + 14 not in amoCRM · 13 edited" in screen
    header = next(line for line in shown.out.splitlines() if "created" in line and "edited" in line)
    assert [word in header for word in ("in amoCRM", "rejected", "not in amoCRM")] == [True] * 3
    assert all(msgid in screen for msgid in lost[:10]) and lost[10] not in screen
    assert "and 4 more" in screen and "--json" in screen  # how to get every one of them


def test_rejects_prints_source_keys_literally(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.rejects.save([{"source_key": f"message:{value}", "reason": "empty_text", "detail": value,
                          "row": json.dumps({"msgid": value}, ensure_ascii=False)} for value in NASTY],
                        "2026-10-01..2026-10-02")
    ledger.close()
    result = CliRunner().invoke(cli.app, ["rejects"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "message:[/bold]" in result.output
    assert_shown_as_data(result.output)


def test_rejects_csv_stays_exact(ledger_url: str, tmp_path) -> None:
    ledger = Ledger(ledger_url)
    ledger.rejects.save([{"source_key": f"message:{value}", "reason": "empty_text", "detail": value, "row": value}
                         for value in NASTY], "2026-10-01..2026-10-02")
    ledger.close()
    out = tmp_path / "rejects[1].csv"
    result = CliRunner().invoke(cli.app, ["rejects", "--csv", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source_key"] for r in rows) == sorted(f"message:{value}" for value in NASTY)
    assert sorted(r["detail"] for r in rows) == sorted(NASTY)


def test_rejects_csv_writes_its_times_in_iso_8601_utc(ledger_url: str, tmp_path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    ledger = Ledger(ledger_url)
    ledger.rejects.save([{"source_key": "message:m1@2026-10-01T10:00:00Z", "reason": "empty_text", "detail": "",
                          "row": "{}"}], "2026-10-01..2026-10-02")
    ledger.close()
    out = tmp_path / "rejects.csv"
    result = CliRunner().invoke(cli.app, ["rejects", "--csv", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    # the same form as the times in the source keys beside it: 2026-10-01T10:00:00Z
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["updated_at"]), row["updated_at"]
    assert before <= datetime.fromisoformat(row["updated_at"]) <= datetime.now(UTC)


def test_status_prints_ledger_summaries_as_data(ledger_url: str) -> None:
    summary = nasty_summary()
    summary.update(interval="[/bold]", messages_sent="[red]x", messages_skipped="\x1b[31mred", rejected="a\nb",
                   missing=LONG)
    ledger = Ledger(ledger_url)
    ledger.intervals.save("2026-10-01", "2026-10-02", "[/bold]", summary)
    ledger.close()
    result = CliRunner().invoke(cli.app, ["status"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert_shown_as_data(result.output)

    result = CliRunner().invoke(cli.app, ["status", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.output)["intervals"][0]["summary"] == summary  # --json: the data, exactly


def test_fail_prints_the_message_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = cli._fail("cannot read message:[/bold] [red]x \x1b[31mred", 2)
    assert exit_.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read message:[/bold] [red]x \\x1b[31mred")
    assert "\x1b" not in err


AMBIGUOUS = ("ambiguous contact: 2 contacts match the client's phone (3100301, 3100302); merge them in amoCRM, "
             "then run again")


def test_a_quarantine_shows_its_reason_contacts_and_fix_in_the_plain_output(
        ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 25: a quarantine was only a count outside --json; a person needs the contacts and what to do."""
    cli._print_summary(RunSummary(interval="2026-10-01..2026-10-02", quarantined={"ae-cv5": AMBIGUOUS}))
    output = capsys.readouterr().out
    assert "3100301, 3100302" in output and "merge them in amoCRM, then run again" in output and "ae-cv5" in output

    ledger = Ledger(ledger_url)
    ledger.chats.save([{"conversation_id": "ae-cv5", "chat_id": "c5", "quarantine": AMBIGUOUS}])
    ledger.chats.save([{"conversation_id": "ae-cv6", "chat_id": "c6", "contact_id": 7}])
    ledger.close()
    result = CliRunner().invoke(cli.app, ["status"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "3100301, 3100302" in result.output and "merge them in amoCRM" in result.output
    assert "ae-cv5" in result.output and "ae-cv6" not in result.output
    result = CliRunner().invoke(cli.app, ["status", "--json"])
    assert json.loads(result.output)["quarantined"] == {"ae-cv5": AMBIGUOUS}
