"""What the commands print: tables, run summaries and one-line errors, with source data always shown as data.

Every value shown goes through `_plain`, never through Rich markup: control characters are escaped visibly and long
values cut; `--json`, `--csv` and the ledger keep them whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from ..errors import one_line, redact
from ..summary import (
    DIFFERENCES,
    AuditSummary,
    BackfillSummary,
    ReconcileSummary,
    Result,
    RunSummary,
    quarantine_notes,
)

console = Console(stderr=True)

CELL_WIDTH = 200  # the most characters of one value shown in a table; --json, --csv and the ledger keep it whole
ERROR_WIDTH = 2_000
# Characters that would act on the terminal instead of showing: C0 and C1 controls (ESC, CR, LF, TAB, ...), DEL,
# lone surrogates, line/paragraph separators and the bidirectional overrides and isolates (which reorder what is
# shown). Each is shown as its Python escape, e.g. \x1b, \n, \ud800, \u202e.
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000), 0x2028, 0x2029,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {code: repr(chr(code))[1:-1] for code in _UNSAFE}
# The same in JSON text, where they can only be inside strings (json.dumps escapes C0 itself; "\n" is indentation).
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _UNSAFE if code != ord("\n")}


def _plain(value: Any, *, style: str = "", limit: int | None = CELL_WIDTH, keep_newlines: bool = False) -> Text:
    """`value` as text safe to print: no markup, control characters escaped visibly, cut to `limit` with "…"."""
    text = value if isinstance(value, str) else str(value)
    escapes = {**_ESCAPES, ord("\n"): "\n"} if keep_newlines else _ESCAPES
    if limit is None or len(text) <= limit // 6:  # nothing to cut even if every character is escaped
        return Text(text.translate(escapes), style=style, overflow="fold")
    pieces = [escapes.get(ord(char), char) for char in text[:limit + 1]]
    if len(text) > limit or sum(map(len, pieces)) > limit:
        kept, used = [], 0
        for piece in pieces:  # whole pieces only: an escape is never cut in half
            if used + len(piece) > limit - 1:
                break
            kept.append(piece)
            used += len(piece)
        pieces = [*kept, "…"]
    return Text("".join(pieces), style=style, overflow="fold")


def _json_text(data: Any) -> Text:
    """`data` as highlighted JSON, the same values exactly, with every character that `_plain` escapes escaped."""
    encoded = json.dumps(data, ensure_ascii=False, indent=2, default=str).translate(_JSON_ESCAPES)
    return JSONHighlighter()(Text(encoded))


def _fail(message: str, code: int) -> typer.Exit:
    """Print `message` as one line on stderr, without any secret, and give the exit to raise."""
    console.print(Text.assemble(("error:", "bold red"), " ", _plain(one_line(redact(message)), limit=ERROR_WIDTH)),
                  soft_wrap=True)
    return typer.Exit(code)


def note(message: str) -> None:
    """A line about what a command did, on stderr (stdout is for its data): one line however long, the terminal
    wraps it."""
    console.print(_plain(message, limit=None), soft_wrap=True)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table of data: the title (which may name data) and every cell are shown literally, see `_plain`."""
    table = Table(title=_plain(title))
    for column in columns:
        table.add_column(_plain(column))
    for row in rows:
        table.add_row(*(_plain(value) for value in row))
    Console().print(table)


R = TypeVar("R", bound=Result)


def _finish(summary: R | Mapping[str, Any] | None, error: str | None, as_json: bool, render: Callable[[R], None],
            extra: Mapping[str, Any] | None = None) -> None:
    """Print the result (a table, or one JSON object with `extra` keys) and exit 0 only when it is good. An import
    summary may come as its JSON form too."""
    if summary is None:
        raise _fail(error or "the run failed", 1)
    summary = _typed(summary)
    if as_json:
        print(json.dumps({**summary.as_dict(), **(extra or {})}, ensure_ascii=False, default=str))
    else:
        render(summary)
    raise typer.Exit(0 if summary.ok else 1)


def _print_summary(summary: RunSummary | Mapping[str, Any]) -> None:
    """An import's summary as a table: what was created, sent and rejected, and what the read-back found; a dry
    run's plan and sample payloads. Takes the summary's JSON form too (as --json prints it)."""
    summary = _typed(summary)
    rows = _summary_rows(summary)
    if summary.dry_run:
        plan = summary.plan
        rows = rows[:1] + [
            ("chats to create", plan["chats_to_create"]),
            ("messages to send", plan["messages_to_send"]),
            ("messages to edit", plan["messages_to_edit"]),
            ("messages already in amoCRM", plan["messages_to_skip"]),
        ] + [r for r in rows if r[0].startswith(("rejected", "  "))] + [
            ("media URLs checked", _media_checked(summary.media)),
            ("verdict", "dry run: nothing sent"),
        ]
    table = Table(title=_plain(f"amojo-etl import {summary.interval}"), show_header=False)
    for name, value in rows:
        table.add_row(_plain(name), value if isinstance(value, Text) else _plain(value))
    Console().print(table)
    if summary.reject_samples:
        _table("rejected rows (the first few; `amojo-etl rejects` lists all of them from the ledger)",
               ["source key", "reason", "detail"],
               [[r["source_key"], r["reason"], r["detail"]] for r in summary.reject_samples[:5]])
    unreachable = summary.media.get("unreachable_urls") or []
    if unreachable:
        _table("media URLs that did not answer (amoCRM downloads media from its URL: fix them at the source)",
               ["message id", "URL", "why", "message"],
               [[u["message_id"], u["url"], u["why"], u["outcome"]] for u in unreachable])
        if summary.media["unreachable"] > len(unreachable):
            note(f"and {summary.media['unreachable'] - len(unreachable)} more; `amojo-etl rejects --reason "
                 "media_unreachable` lists the rejected ones")
    _print_quarantines(summary.quarantined)
    if summary.dry_run and summary.plan["sample_payloads"]:
        Console().print("sample payloads, exactly as they would be sent:")
        # soft_wrap: a long line is left to the terminal, not broken by a newline inside a JSON string
        Console().print(_json_text(summary.plan["sample_payloads"]), soft_wrap=True)


def _media_checked(media: Mapping[str, Any]) -> str:
    """How many media messages had their URL asked, and how many did not answer; or how to ask."""
    if not media.get("checked"):
        return "not asked (AMOJO_ETL_MEDIA_CHECK=dry-run asks each URL)"
    return f"{media['checked']}, {media['unreachable']} not answering"


def _print_quarantines(quarantined: Mapping[str, str]) -> None:
    """Quarantined conversations by reason, with the contacts and the fix the reason names."""
    if quarantined:
        Console().print(_plain("quarantined conversations (none of their messages is sent until this is fixed):",
                               style="yellow", limit=None))
        for line in quarantine_notes(quarantined):
            Console().print(_plain(f"  {line}", limit=None))


def _typed(summary: R | Mapping[str, Any]) -> Any:
    """An import summary's JSON form (as --json prints it and the ledger keeps it) as a `RunSummary`."""
    return RunSummary(**summary) if isinstance(summary, Mapping) else summary


def _summary_rows(summary: RunSummary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("conversations", summary.conversations),
        ("chats created", summary.chats_created),
        ("contacts created / matched", f"{summary.contacts_created} / {summary.contacts_matched}"),
        ("chats linked", summary.links_created),
        ("messages sent", summary.messages_sent),
        ("messages skipped (already in amoCRM)", summary.messages_skipped),
        ("messages edited", summary.messages_edited),
        ("messages failed", summary.messages_failed),
        ("rejected rows", summary.rejected),
    ]
    rows += [(f"  {reason}", count) for reason, count in summary.rejects_by_reason.items()]
    if summary.media.get("checked"):
        rows.append(("media URLs checked", _media_checked(summary.media)))
    if summary.replies_quoted or summary.quotes_dropped:
        rows += [("replies quoted / unquoted", f"{summary.replies_quoted} / {sum(summary.quotes_dropped.values())}")]
        rows += [(f"  {reason}", count) for reason, count in summary.quotes_dropped.items()]
    return rows + [
        ("quarantined conversations", len(summary.quarantined)),
        ("confirmed by read-back", f"{summary.confirmed} of {summary.expected}"),
        ("missing / duplicates / mismatched", f"{summary.missing} / {summary.duplicates} / {summary.mismatched}"),
        ("verdict", _plain(summary.verdict, style="green" if summary.verdict == "complete" else "red")),
        ("duration", f"{summary.duration_s} s"),
    ]


def backfill_table(start: date, end: date) -> Callable[[BackfillSummary], None]:
    def render(summary: BackfillSummary) -> None:
        _table(f"backfill {start}..{end} ({summary.ran} days run, {summary.skipped} skipped)",
               ["day", "outcome"], [list(item) for item in summary.outcomes.items()])
        if summary.unplaced:
            Console().print(_plain(unplaced_note(summary.unplaced), style="yellow", limit=None))

    return render


RECONCILE_COLUMNS = ["day", "expected", "confirmed", "missing", "duplicates", "mismatched", "surplus", "repaired",
                     "verdict"]


def reconcile_table(start: date, end: date) -> Callable[[ReconcileSummary], None]:
    def render(summary: ReconcileSummary) -> None:
        _table(f"reconcile {start}..{end}", RECONCILE_COLUMNS,
               [[getattr(row, column) for column in RECONCILE_COLUMNS] for row in summary.by_day])

    return render


AUDIT_IDS_SHOWN = 10
"""Message ids shown per day and kind of difference; --json has every one."""


def audit_table(start: date, end: date) -> Callable[[AuditSummary], None]:
    def render(summary: AuditSummary) -> None:
        rows = [[day.day, day.created, day.in_amocrm, day.rejected, day.not_in_amocrm, day.edited,
                 ", ".join(f"{n} {status}" for status, n in sorted(day.ledger.items())) or "none",
                 sum(len(getattr(day, kind)) for kind in DIFFERENCES), day.verdict]
                for day in summary.by_day]
        _table(f"audit {start}..{end}", ["day", "created", "in amoCRM", "rejected", "not in amoCRM", "edited",
                                          "ledger", "differences", "verdict"], rows)
        Console().print(_plain(summary.headline, limit=None))
        more = False
        for day in summary.by_day:
            for kind in DIFFERENCES:
                ids = getattr(day, kind)
                if ids:
                    more = more or len(ids) > AUDIT_IDS_SHOWN
                    note(f"{day.day} {kind.replace('_', ' ')} ({len(ids)}): {', '.join(ids[:AUDIT_IDS_SHOWN])}"
                         + (f" and {len(ids) - AUDIT_IDS_SHOWN} more" if len(ids) > AUDIT_IDS_SHOWN else ""))
        if more:
            note(f"every message id: amojo-etl audit --start {start} --end {end} --json")

    return render


def status_tables(intervals: list[dict[str, Any]], counts: dict[str, int], unplaced: int,
                  running: list[dict[str, Any]], quarantined: Mapping[str, str] | None = None) -> None:
    """The ledger's intervals with their last audits, its messages by status, its quarantined conversations, and
    the intervals running now."""
    rows = []
    for row in intervals:
        summary = row["summary"]
        updated = datetime.fromtimestamp(row["updated_at"]).strftime("%Y-%m-%d %H:%M") if row["updated_at"] else ""
        audit = row["last_audit"] or {}
        audited = datetime.fromtimestamp(audit["audited_at"]).strftime("%Y-%m-%d %H:%M") if audit else ""
        rows.append([summary.get("interval", f"{row['start'][:10]}..{row['end'][:10]}"), row["status"] or "",
                     summary.get("messages_sent", ""), summary.get("messages_skipped", ""),
                     summary.get("rejected", ""), summary.get("missing", ""), updated,
                     audit.get("verdict", "") + (" (repaired)" if audit.get("repaired") else ""), audited])
    _table("intervals in the ledger", ["interval", "status", "sent", "skipped", "rejected", "missing", "updated",
                                       "last audit", "audited"], rows)
    Console().print(_plain("messages by status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                           limit=None))
    if unplaced:
        Console().print(_plain(unplaced_note(unplaced), style="yellow", limit=None))
    _print_quarantines(quarantined or {})
    if running:
        _table("intervals being imported now (a dead run's is taken over once its claim expires)",
               ["interval", "run", "messages registered through"],
               [[r["interval"], "alive" if r["alive"] else "dead", r["registered_through"]] for r in running])


def unplaced_note(count: int) -> str:
    return (f"{count} source messages have no readable created_at, or one before 1970: no interval can import "
            "them (amojo-etl rejects --reason no_timestamp / bad_timestamp lists them)")
