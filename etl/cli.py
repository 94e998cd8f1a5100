"""`amojo-etl`: the console script. Its commands run the same Prefect flows a deployment runs.

Exit status: 0 when the verdict is complete, 1 when the run failed or is incomplete, 2 for a configuration or
usage error. (The one module of etl/ that reaches up to flows/: it is the entry point above them.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from .errors import EtlError, RunError, classify, one_line, redact
from .intervals import check_range
from .settings import SAMPLE_DB, ConfigurationError, Settings, load_settings

# Prefect's temporary server records telemetry in its SQLite file at start, racing the first flow run for the
# lock ("database is locked" tracebacks); a CLI run has no use for it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Its first start on a machine builds its database: 29 s measured here on 2 busy cores, past Prefect's 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])
console = Console(stderr=True)

StartOption = Annotated[date, typer.Option("--start", formats=["%Y-%m-%d"],
                                           help="first day, inclusive (YYYY-MM-DD, in AMOJO_ETL_TIMEZONE)")]
EndOption = Annotated[date, typer.Option("--end", formats=["%Y-%m-%d"],
                                         help="day after the last, exclusive: --start 2026-10-01 --end 2026-10-08 "
                                              "is the first week of October")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the run summary as one JSON object on stdout")]


# Source data is printed as data: every value shown goes through `_plain`, never through Rich markup.
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


_debug = False
"""--debug or AMOJO_ETL_DEBUG=1: tracebacks are shown, expected failures' too."""


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", envvar="AMOJO_ETL_DEBUG", help="show the traceback of a failure (also AMOJO_ETL_DEBUG=1)")
        ] = False) -> None:
    """amojo-etl: import chat history into amoCRM chats."""
    global _debug
    _debug = debug


@contextmanager
def _reported() -> Iterator[None]:
    """The one place a command's failure becomes its output: an expected one (`classify`) is one line naming what
    to fix and exit status 2 (configuration) or 1 (the run); anything else, one line saying it is a defect."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):  # exits and usage errors: typer's own
        raise
    except Exception as exc:
        error = classify(exc)
        if _debug:
            console.print_exception()
        if error is None:
            raise _fail(f"{type(exc).__name__}: {exc} (a defect of amojo-etl: run again with --debug or "
                        "AMOJO_ETL_DEBUG=1 for the traceback, and report it)", 1) from None
        raise _fail(str(error), error.exit_code) from None


F = TypeVar("F", bound=Callable[..., Any])


def command(name: str | None = None) -> Callable[[F], F]:
    """`app.command`, with the command's failures reported by `_reported`."""
    def register(function: F) -> F:
        @functools.wraps(function)
        def reported(*args: Any, **kwargs: Any) -> Any:
            with _reported():
                return function(*args, **kwargs)

        app.command(name)(reported)
        return function

    return register


def _preflight(api: bool = True, days: tuple[date, date] | None = None) -> Settings:
    """Every check that needs no Prefect, before Prefect starts: the settings, the range, the source and its
    queries, the ledger, one request to each API (without retries). A failure raises one of `etl.errors`."""
    from .api import check_api
    from .ledger import Ledger
    from .source import check_source

    settings = load_settings()
    if days is not None:
        check_range(*days, datetime.now(settings.zone).date())
    if api:
        settings.require_api()
    check_source(settings.source_url, settings.mapping)
    Ledger(settings.state_url).close()
    asyncio.run(check_api(settings, chats=api))
    return settings


class _PlainExpectedErrors(logging.Filter):
    """Drops the traceback from a log record of an expected failure: Prefect logs a failed task's exception with
    it; the message (which names the setting) stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and classify(record.exc_info[1]) is not None:
            record.exc_info = None
            record.exc_text = None
        return True


def _plain_prefect_logs() -> None:
    """Put `_PlainExpectedErrors` on every log handler Prefect has set up (not with --debug)."""
    if _debug:
        return
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for handler in {handler for logger in loggers for handler in logger.handlers}:
        if not any(isinstance(f, _PlainExpectedErrors) for f in handler.filters):
            handler.addFilter(_PlainExpectedErrors())


def _run(flow: Any, **parameters: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Run a flow here, as a deployment would; (summary, None) when it finished, (None, reason) when it failed.
    An expected failure inside the run (its state's data) is raised, for `_reported`."""
    from prefect import tags

    _announce_prefect()
    _plain_prefect_logs()
    try:
        with tags(*run_tags(load_settings())):
            state = asyncio.run(flow(**parameters, return_state=True))
    except RuntimeError as exc:
        if not str(exc).startswith(EPHEMERAL_TIMEOUT):
            raise
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
        raise RunError(f"Prefect's temporary server did not start within {timeout} s "
                       "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): raise it, or run a Prefect server and "
                       "set PREFECT_API_URL (see README, Running it with Prefect)") from None
    if state.is_failed() or state.is_crashed():
        try:
            outcome = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no result kept: the message is all there is
            outcome = None
        if isinstance(outcome, EtlError):
            raise outcome
        if isinstance(outcome, dict):
            return outcome, None  # a run that finished incomplete (its state is Failed, named Incomplete)
        return None, state.message or "the run failed"
    return state.result(), None


def run_tags(settings: Settings) -> list[str]:
    """The tags of a run started here: beside the deployments' `amojo-etl`, where it came from and for which channel
    and account, so that a server serving several accounts can filter their runs apart."""
    return ["amojo-etl", "cli", *settings.account_tags]


EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"
"""How Prefect's temporary server says it did not start in time (a RuntimeError, prefect/server/api/server.py)."""


def _announce_prefect() -> None:
    """One line on where the flow runs: the Prefect server of PREFECT_API_URL (which must answer), or a temporary
    one, whose first start on this machine builds its database (tens of seconds: say so rather than wait)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    current = get_current_settings()
    if current.api.url:
        shown = redact(current.api.url)
        with get_client(sync_client=True) as client:  # Prefect's own client: PREFECT_API_KEY too, for Cloud
            unhealthy = client.api_healthcheck()
        if unhealthy is not None:
            raise ConfigurationError(f"the Prefect server at PREFECT_API_URL ({shown}) does not answer "
                                     f"({type(unhealthy).__name__}): start it (prefect server start), or unset "
                                     "PREFECT_API_URL to run on a temporary server")
        console.print(_plain(f"running on the Prefect server at {shown} (PREFECT_API_URL)", limit=None),
                      soft_wrap=True)
        return
    database = current.server.database.connection_url
    url = database.get_secret_value() if database is not None else ""
    path = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else None
    if path and path != ":memory:" and not Path(path).exists():
        console.print(_plain(f"preparing Prefect's local database, once ({path}; PREFECT_HOME={current.home})",
                             limit=None), soft_wrap=True)


def _run_import(start: date, end: date, dry_run: bool) -> tuple[dict[str, Any] | None, str | None]:
    from flows.import_chats import import_chats

    return _run(import_chats, start=start, end=end, dry_run=dry_run)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=_plain(f"amojo-etl import {summary['interval']}"), show_header=False)
    rows = [
        ("conversations", summary["conversations"]),
        ("chats created", summary["chats_created"]),
        ("contacts created / matched", f"{summary['contacts_created']} / {summary['contacts_matched']}"),
        ("chats linked", summary["links_created"]),
        ("messages sent", summary["messages_sent"]),
        ("messages skipped (already in amoCRM)", summary["messages_skipped"]),
        ("messages edited", summary["messages_edited"]),
        ("messages failed", summary["messages_failed"]),
        ("rejected rows", summary["rejected"]),
    ]
    rows += [(f"  {reason}", count) for reason, count in summary["rejects_by_reason"].items()]
    rows += [
        ("quarantined conversations", len(summary["quarantined"])),
        ("confirmed by read-back", f"{summary['confirmed']} of {summary['expected']}"),
        ("missing / duplicates / mismatched",
         f"{summary['missing']} / {summary['duplicates']} / {summary['mismatched']}"),
        ("verdict", _plain(summary["verdict"], style="green" if summary["verdict"] == "complete" else "red")),
        ("duration", f"{summary['duration_s']} s"),
    ]
    if summary.get("dry_run"):
        plan = summary["plan"]
        rows = rows[:1] + [
            ("chats to create", plan["chats_to_create"]),
            ("messages to send", plan["messages_to_send"]),
            ("messages to edit", plan["messages_to_edit"]),
            ("messages already in amoCRM", plan["messages_to_skip"]),
        ] + [r for r in rows if r[0].startswith(("rejected", "  "))] + [("verdict", "dry run: nothing sent")]
    for name, value in rows:
        table.add_row(_plain(name), value if isinstance(value, Text) else _plain(value))
    Console().print(table)
    if summary["reject_samples"]:
        _table("rejected rows (the first few; `amojo-etl rejects` lists all of them from the ledger)",
               ["source key", "reason", "detail"],
               [[r["source_key"], r["reason"], r["detail"]] for r in summary["reject_samples"][:5]])
    if summary.get("dry_run") and summary["plan"]["sample_payloads"]:
        Console().print("sample payloads, exactly as they would be sent:")
        # soft_wrap: a long line is left to the terminal, not broken by a newline inside a JSON string
        Console().print(_json_text(summary["plan"]["sample_payloads"]), soft_wrap=True)


def _finish(summary: dict[str, Any] | None, error: str | None, as_json: bool,
            render: Callable[[dict[str, Any]], None] = _print_summary, good: str = "complete") -> None:
    """Print the summary (a table, or one JSON object) and exit 0 only when the verdict is `good`."""
    if summary is None:
        raise _fail(error or "the run failed", 1)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, default=str))
    else:
        render(summary)
    raise typer.Exit(0 if summary.get("dry_run") or summary["verdict"] == good else 1)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table of data: the title (which may name data) and every cell are shown literally, see `_plain`."""
    table = Table(title=_plain(title))
    for column in columns:
        table.add_column(_plain(column))
    for row in rows:
        table.add_row(*(_plain(value) for value in row))
    Console().print(table)


@command("import")
def import_(start: StartOption, end: EndOption,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="transform and report; send nothing")] = False,
            as_json: JsonOption = False) -> None:
    """Import one data interval [start, end) into amoCRM, then read the chats back and verify them."""
    _preflight(api=not dry_run, days=(start, end))
    _finish(*_run_import(start, end, dry_run), as_json)


class Reprocess(StrEnum):
    missing = "missing"
    failed = "failed"
    changed = "changed"
    all = "all"


@command()
def backfill(start: StartOption, end: EndOption,
             reprocess: Annotated[Reprocess, typer.Option(
                 help="missing: days never run; failed: those and the failed or incomplete ones; changed: those and "
                      "the days whose source rows changed since (late rows, edits); all: every day")
             ] = Reprocess.missing,
             max_parallel: Annotated[int, typer.Option(min=1, max=32, help="days imported at once")] = 2,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="transform and report; send nothing")] = False,
             as_json: JsonOption = False) -> None:
    """Import every day of [start, end) the ledger does not have yet (see --reprocess), a few days at a time."""
    from flows.backfill import backfill as backfill_flow

    _preflight(api=not dry_run, days=(start, end))

    def render(summary: dict[str, Any]) -> None:
        _table(f"backfill {start}..{end} ({summary['ran']} days run, {summary['skipped']} skipped)",
               ["day", "outcome"], [list(item) for item in summary["outcomes"].items()])
        if summary.get("unplaced"):
            Console().print(_plain(_unplaced_note(summary["unplaced"]), style="yellow", limit=None))

    _finish(*_run(backfill_flow, start=start, end=end, reprocess=reprocess.value, max_parallel=max_parallel,
                  dry_run=dry_run), as_json, render)


@command()
def reconcile(start: StartOption, end: EndOption,
              repair: Annotated[bool, typer.Option("--repair", help="send the missing messages again")] = False,
              as_json: JsonOption = False) -> None:
    """Read the chats of [start, end) back from amoCRM and compare them with the ledger, day by day."""
    from flows.reconcile import reconcile as reconcile_flow

    _preflight(days=(start, end))
    columns = ["day", "expected", "confirmed", "missing", "duplicates", "mismatched", "surplus", "repaired", "verdict"]
    _finish(*_run(reconcile_flow, start=start, end=end, repair=repair), as_json,
            lambda summary: _table(f"reconcile {start}..{end}", columns,
                                   [[row[c] for c in columns] for row in summary["by_day"]]))


@command()
def audit(start: StartOption, end: EndOption,
          repair: Annotated[bool, typer.Option("--repair", help="send what amoCRM lacks, edit what differs")] = False,
          as_json: JsonOption = False) -> None:
    """Compare source, ledger and amoCRM for each day of [start, end): three counts, the differences by message id
    and a verdict; exit 0 when amoCRM holds what the source holds."""
    from flows.audit import audit as audit_flow

    _preflight(days=(start, end))

    def render(summary: dict[str, Any]) -> None:
        from flows.audit import DIFFERENCES

        rows = [[day["day"], f"{day['source_valid'] + day['source_rejected']} ({day['source_rejected']} rejected)",
                 ", ".join(f"{n} {status}" for status, n in sorted(day["ledger"].items())) or "none",
                 day["amocrm"], sum(len(day[kind]) for kind in DIFFERENCES), day["verdict"]]
                for day in summary["by_day"]]
        _table(f"audit {start}..{end}: {summary['verdict']}",
               ["day", "source", "ledger", "amoCRM", "differences", "verdict"], rows)
        for day in summary["by_day"]:
            for kind, ids in day.items():
                if isinstance(ids, list) and ids:
                    console.print(_plain(f"{day['day']} {kind.replace('_', ' ')}: {', '.join(ids[:10])}"
                                         + (f" and {len(ids) - 10} more" if len(ids) > 10 else ""), limit=None),
                                  soft_wrap=True)

    _finish(*_run(audit_flow, start=start, end=end, repair=repair), as_json, render, good="consistent")


@command()
def status(as_json: JsonOption = False) -> None:
    """The ledger's view of each interval: done or not, messages sent, rejects, verdict, and its last audit."""
    from .claims import interval_label
    from .ledger import Ledger

    ledger = Ledger(load_settings().state_url)
    intervals = _with_last_audits(ledger.intervals.rows(), ledger.audits.last())
    counts = ledger.messages.status_counts()
    unplaced = sum(ledger.rejects.counts("unplaced").values())
    now = ledger.clock()  # claims expire by the ledger's clock, not this machine's
    running = [{"interval": interval_label(row.key), "alive": row.expires_at >= now,
                "registered_through": datetime.fromtimestamp(row.frontier_ms / 1000, UTC).isoformat()}
               for row in ledger.leases.live("interval", expired_within_s=math.inf)]
    ledger.close()
    if as_json:
        print(json.dumps({"intervals": intervals, "messages_by_status": counts, "running": running,
                          "unplaced": unplaced}, ensure_ascii=False, default=str))
        return
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
        Console().print(_plain(_unplaced_note(unplaced), style="yellow", limit=None))
    if running:
        _table("intervals being imported now (a dead run's is taken over once its claim expires)",
               ["interval", "run", "messages registered through"],
               [[r["interval"], "alive" if r["alive"] else "dead", r["registered_through"]] for r in running])


def _with_last_audits(intervals: list[dict[str, Any]],
                      audits: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each interval with its last audit (`last_audit`, None if never audited); a day audited but never imported is
    listed too, with no status, in time order."""
    rows = [{**row, "last_audit": audits.get((row["start"], row["end"]))} for row in intervals]
    imported = {(row["start"], row["end"]) for row in intervals}
    rows += [{"start": start, "end": end, "status": None, "summary": {}, "updated_at": None, "last_audit": audit}
             for (start, end), audit in audits.items() if (start, end) not in imported]
    return sorted(rows, key=lambda row: (row["start"], row["end"]))


def _unplaced_note(count: int) -> str:
    return (f"{count} source messages have no readable created_at, or one before 1970: no interval can import "
            "them (amojo-etl rejects --reason no_timestamp / bad_timestamp lists them)")


@command("rejects")
def rejects_(
    reason: Annotated[str | None, typer.Option(help="only this reason, e.g. empty_text")] = None,
    interval: Annotated[str | None, typer.Option(help="only this interval's, e.g. 2026-10-01..2026-10-02")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many rows (0: all) [default: 50 shown, all in a "
                                                   "CSV file]", show_default=False)] = None,
    csv: Annotated[Path | None, typer.Option(help="write them to this CSV file instead")] = None,
) -> None:
    """Show the source rows that were not sent, with the reason, from the ledger (AMOJO_ETL_STATE_URL)."""
    import pandas as pd

    from .ledger import Ledger

    if limit is None:
        limit = 0 if csv else 50
    ledger = Ledger(load_settings().state_url)
    rows = ledger.rejects.rows(reason, limit or None, interval_label=interval)
    ledger.close()
    if csv:
        columns = ["interval_label", "source_key", "reason", "detail", "row", "updated_at"]
        try:
            pd.DataFrame(rows, columns=columns).rename(columns={"interval_label": "interval"}).to_csv(csv, index=False)
        except OSError as exc:
            raise ConfigurationError(f"cannot write --csv {csv}: {exc.strerror or exc}; choose a path in a "
                                     "writable directory") from None
        console.print(_plain(f"{len(rows)} rejected rows written to {csv}", limit=None))
        return
    _table(f"rejected rows ({len(rows)} shown)", ["source key", "reason", "detail", "row"],
           [[r["source_key"], r["reason"], r["detail"], r["row"] or ""] for r in rows])


@command("sample-data")
def sample_data(
    path: Annotated[Path, typer.Option(help="SQLite file to create")] = SAMPLE_DB,
    url: Annotated[str | None, typer.Option(help="SQLAlchemy URL instead of a SQLite file")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same rows")] = 7,
    messages: Annotated[int, typer.Option(min=1, max=50_000_000, help="messages in all (the rest scales with it)")
                        ] = 3_000,
) -> None:
    """Create a deterministic sample source database in the canonical schema (data/schema.sql)."""
    import sqlalchemy as sa

    from .sample import SampleSize, write_sample
    from .settings import database_url

    if url is None:
        if path.exists():
            raise _fail(f"{path} exists; remove it first or choose another --path", 2)
        url = f"sqlite:///{path}"
    option = "--url" if url != f"sqlite:///{path}" else "--path"
    try:
        database_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"{option}: {exc}") from None
    shown = sa.make_url(url).render_as_string(hide_password=True)
    try:
        counts = write_sample(url, seed=seed, size=SampleSize(messages=messages))
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip()
        raise ConfigurationError(f"cannot write the sample to {shown} ({option}): {reason}") from None
    console.print(_plain(f"sample source written to {shown}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
                         limit=None))


class DuplicateMsgid(StrEnum):
    idempotent = "idempotent"
    reject = "reject"


class Md5Check(StrEnum):
    strict = "strict"
    lenient = "lenient"


class HistoryLimit(StrEnum):
    clamp = "clamp"
    reject = "reject"


class RefIdParticipants(StrEnum):
    reject = "reject"
    accept = "accept"


class ParticipantUpdates(StrEnum):
    merge = "merge"
    keep = "keep"


class RetryAfter(StrEnum):
    seconds = "seconds"
    http_date = "http-date"
    none = "none"


def _error_rates(values: list[str]) -> dict[int, float]:
    rates = {}
    for value in values:
        status, _, rate = value.partition("=")
        try:
            code, share = int(status), float(rate)
        except ValueError:
            code, share = 0, -1.0
        if not (400 <= code <= 599 and 0 <= share <= 1):
            raise typer.BadParameter(f"{value!r}: use STATUS=RATE with a STATUS from 400 to 599 and a RATE from 0 to 1,"
                                     " e.g. 503=0.05")
        rates[code] = share
    return rates


@command()
def emulator(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    channel_id: Annotated[str | None, typer.Option(
        envvar="AMOJO_ETL_CHANNEL_ID", help="channel id (default: the demo channel)")] = None,
    channel_secret: Annotated[str | None, typer.Option(
        envvar="AMOJO_ETL_CHANNEL_SECRET", show_default=False,
        help="channel secret (default: the demo secret); better from the environment or --config than as a "
             "flag, which every user of the machine sees in ps")] = None,
    account_id: Annotated[str | None, typer.Option(envvar="AMOJO_ETL_ACCOUNT_ID", help="the account's amojo_id")
                          ] = None,
    token: Annotated[str | None, typer.Option(
        envvar="AMOJO_ETL_AMOCRM_TOKEN", show_default=False,
        help="REST v4 bearer token; better from the environment or --config, as the channel secret")] = None,
    bot_id: Annotated[str | None, typer.Option(envvar="AMOJO_ETL_BOT_ID", help="the channel bot's id")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", envvar="AMOJO_ETL_CONFIG",
        help="TOML file with channel_id, channel_secret, account_id, amocrm_token, bot_id: the importer's own "
             "settings file, for what neither a flag nor the environment gives")] = None,
    state: Annotated[Path | None, typer.Option(help="SQLite file to keep state in (default: memory)")] = None,
    duplicate_msgid: Annotated[DuplicateMsgid, typer.Option(help="a repeated msgid: original ids back, or 400")
                               ] = DuplicateMsgid.idempotent,
    content_md5: Annotated[Md5Check, typer.Option(help="check Content-MD5 against the body, or only sign it")
                           ] = Md5Check.strict,
    legacy_signatures: Annotated[bool, typer.Option(help="also accept body-only HMAC on the old methods")] = False,
    history_limit: Annotated[HistoryLimit, typer.Option(help="history limit over 50: clamp, or 400")
                             ] = HistoryLimit.clamp,
    text_limit: Annotated[int | None, typer.Option(help="longest text accepted (default: no limit)")] = None,
    ref_id_participants: Annotated[RefIdParticipants, typer.Option(
        help="a participant given by ref_id alone: refused (as the reference reads), or taken for the known one")
    ] = RefIdParticipants.reject,
    participant_updates: Annotated[ParticipantUpdates, typer.Option(
        help="what a later request says about a user: replaces what is held, or leaves it")
    ] = ParticipantUpdates.merge,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body; larger ones get 413")] = 1 << 20,
    rest_batch_max: Annotated[int, typer.Option(help="most contacts or links in one REST write")] = 250,
    rest_rate: Annotated[float, typer.Option(help="REST v4 requests per second per token (0: no limit)")] = 7.0,
    amojo_rate: Annotated[float, typer.Option(help="Chats API requests per second (0: no limit)")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of every injected fault")] = 0,
    latency_ms: Annotated[float, typer.Option(help="added to every answer")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="random extra latency, up to this")] = 0.0,
    error_rate: Annotated[list[str] | None, typer.Option(
        help="STATUS=RATE, answered before any effect; repeat for several (429, 408, 503, ...)")] = None,
    retry_after: Annotated[RetryAfter, typer.Option(help="Retry-After of injected 429/503: seconds or HTTP date")
                           ] = RetryAfter.seconds,
    retry_after_s: Annotated[float, typer.Option(help="the wait Retry-After asks for")] = 1.0,
    lost_answer_rate: Annotated[float, typer.Option(help="request done, then a 500 or a dropped connection")] = 0.0,
    lost_answer_endpoint: Annotated[list[str] | None, typer.Option(
        help="where answers are lost (repeat): message, create_chat, contacts, contacts_chats, history, ...")] = None,
    hang_rate: Annotated[float, typer.Option(help="requests that hang for --hang-seconds")] = 0.0,
    hang_seconds: Annotated[float, typer.Option(help="how long a hang lasts")] = 60.0,
    history_lag_ms: Annotated[float, typer.Option(help="a stored message shows in history only after this")] = 0.0,
) -> None:
    """Run the local amoCRM stand-in (Chats API + REST v4 subset) in the foreground.

    Faults can also be changed while it runs: POST /_emulator/faults with the same names as JSON.
    """
    from amojo.emulator.config import EmulatorConfig, Faults
    from amojo.emulator.server import serve

    try:
        faults = Faults(seed=seed, latency_ms=latency_ms, jitter_ms=jitter_ms,
                        error_rates=_error_rates(error_rate or []), lost_answer_rate=lost_answer_rate,
                        hang_rate=hang_rate, hang_seconds=hang_seconds, history_lag_ms=history_lag_ms,
                        retry_after=retry_after.value, retry_after_s=retry_after_s,
                        lost_answer_endpoints=tuple(lost_answer_endpoint or ("message",)))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    config = EmulatorConfig(
        state_path=str(state) if state else None, duplicate_msgid=duplicate_msgid.value,
        content_md5=content_md5.value, legacy_signatures=legacy_signatures, history_limit=history_limit.value,
        text_limit=text_limit, rest_rate=rest_rate or None, amojo_rate=amojo_rate or None, faults=faults,
        ref_id_participants=ref_id_participants.value, participant_updates=participant_updates.value,
        max_body_bytes=max_body_bytes, rest_batch_max=rest_batch_max,
    )
    given = _emulator_identity(config_file, channel_id=channel_id, channel_secret=channel_secret,
                               account_id=account_id, token=token, bot_id=bot_id)
    for name, value in given.items():
        setattr(config, name, value)
    channel_secret, token = given.get("channel_secret"), given.get("token")
    url = f"http://{host}:{port}"
    # Lines a shell takes as they are: paste them where the importer (or a Prefect worker) runs.
    console.print(Text(
        f"# amoCRM emulator on {url}; the importer's settings for it:\n"
        f"export AMOJO_ETL_AMOJO_URL={url}\nexport AMOJO_ETL_AMOCRM_URL={url}\n"
        f"export AMOJO_ETL_CHANNEL_ID={config.channel_id}\n"
        + ("# AMOJO_ETL_CHANNEL_SECRET: as given\n" if channel_secret
           else f"export AMOJO_ETL_CHANNEL_SECRET={config.channel_secret}\n")
        + ("# AMOJO_ETL_AMOCRM_TOKEN: as given\n" if token else f"export AMOJO_ETL_AMOCRM_TOKEN={config.token}\n")
        + f"export AMOJO_ETL_ACCOUNT_ID={config.account_id}\nexport AMOJO_ETL_BOT_ID={config.bot_id}\n"
        f"# inspect: {url}/_emulator/state   faults: {url}/_emulator/faults"
    ), soft_wrap=True)
    serve(config, host=host, port=port)


def _emulator_identity(config_file: Path | None, **given: str | None) -> dict[str, str]:
    """The emulator's channel and account: each from its flag or variable (the names the importer reads), else
    from the settings file, else the demo's (left out here). The secrets never need to be on the command line."""
    from .settings import config_file_values

    from_file = config_file_values(str(config_file)) if config_file else {}
    from_file = {"token" if k == "amocrm_token" else k: v for k, v in from_file.items()}
    chosen = {name: value if value else from_file.get(name) for name, value in given.items()}
    return {name: str(value) for name, value in chosen.items() if value}


@command("alerts-install")
def alerts_install(notify: Annotated[str, typer.Option(
        help="the notification block to send through, as type/name (slack-webhook/night-watch) or a bare name")]
                   ) -> None:
    """Create (or replace) the Prefect automations that notify when an import fails or ends incomplete, and when
    no nightly import finished in 26 hours. Needs PREFECT_API_URL: automations live on the Prefect server."""
    from prefect.settings import get_current_settings

    from .alerts import install_alerts

    if not get_current_settings().api.url:
        raise ConfigurationError("automations live on a Prefect server: set PREFECT_API_URL to it (see README, "
                                 "Running it with Prefect)")
    _announce_prefect()
    for name in asyncio.run(install_alerts(notify)):
        console.print(_plain(f"installed automation: {name}", limit=None), soft_wrap=True)


@command()
def demo(as_json: JsonOption = False) -> None:
    """Import the sample database into a local emulator and verify it: the whole pipeline in one command."""
    from amojo.emulator.config import EmulatorConfig
    from amojo.emulator.server import start as start_emulator

    from .sample import write_sample

    if not SAMPLE_DB.exists():
        write_sample(f"sqlite:///{SAMPLE_DB}")
    first, last = _sample_range(f"sqlite:///{SAMPLE_DB}")
    config = EmulatorConfig()
    began = time.monotonic()
    with start_emulator(config) as running, tempfile.TemporaryDirectory(prefix="amojo-etl-demo-") as workdir:
        os.environ.update({
            "AMOJO_ETL_SOURCE_URL": f"sqlite:///{SAMPLE_DB}",
            "AMOJO_ETL_STATE_URL": f"sqlite:///{workdir}/ledger.db",
            "AMOJO_ETL_AMOJO_URL": running.url,
            "AMOJO_ETL_AMOCRM_URL": running.url,
            "AMOJO_ETL_CHANNEL_ID": config.channel_id,
            "AMOJO_ETL_CHANNEL_SECRET": config.channel_secret,
            "AMOJO_ETL_AMOCRM_TOKEN": config.token,
            "AMOJO_ETL_BOT_ID": config.bot_id,
        })
        console.print(_plain(f"demo: emulator at {running.url}; importing {first} .. {last} (end exclusive)",
                             limit=None))
        summary, error = _run_import(first, last, dry_run=False)
        if summary is not None:
            summary["demo_total_s"] = round(time.monotonic() - began, 2)
            summary["emulator_requests"] = sum(running.emulator.request_counts().values())
    _finish(summary, error, as_json)


def _sample_range(url: str) -> tuple[date, date]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        low, high = conn.execute(sa.text("SELECT MIN(created_at), MAX(created_at) FROM messages")).one()
    engine.dispose()
    return date.fromisoformat(str(low)[:10]), date.fromisoformat(str(high)[:10]) + timedelta(days=1)

