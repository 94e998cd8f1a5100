"""The commands of `amojo-etl`, each a few lines: check what it can before Prefect starts, run its flow (or read
the ledger), print what came of it."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..settings import SAMPLE_DB, ConfigurationError, load_settings
from ..summary import RunSummary
from .app import DryRunOption, EndOption, JsonOption, StartOption, _reported, app
from .emulator import emulator, importer_env, view_url
from .render import (
    _fail,
    _finish,
    _plain,
    _print_summary,
    _table,
    audit_table,
    backfill_table,
    console,
    reconcile_table,
    status_tables,
)
from .runner import _announce_prefect, _preflight, _run

F = TypeVar("F", bound=Callable[..., Any])


def command(name: str | None = None) -> Callable[[F], F]:
    """`app.command`, with the command's failures reported by `_reported`."""
    def register(function: F) -> F:
        @functools.wraps(function)
        def run_reported(*args: Any, **kwargs: Any) -> Any:
            with _reported():
                return function(*args, **kwargs)

        app.command(name)(run_reported)
        return function

    return register


def _run_import(start: date, end: date, dry_run: bool) -> tuple[RunSummary | None, str | None]:
    from flows.import_chats import import_chats

    return _run(import_chats, start=start, end=end, dry_run=dry_run)  # type: ignore[return-value]


@command("import")
def import_(start: StartOption, end: EndOption, dry_run: DryRunOption = False, as_json: JsonOption = False) -> None:
    """Import one data interval [start, end) into amoCRM, then read the chats back and verify them."""
    _preflight(api=not dry_run, days=(start, end))
    _finish(*_run_import(start, end, dry_run), as_json, _print_summary)


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
             dry_run: DryRunOption = False, as_json: JsonOption = False) -> None:
    """Import every day of [start, end) the ledger does not have yet (see --reprocess), a few days at a time."""
    from flows.backfill import backfill as backfill_flow

    _preflight(api=not dry_run, days=(start, end))
    _finish(*_run(backfill_flow, start=start, end=end, reprocess=reprocess.value, max_parallel=max_parallel,
                  dry_run=dry_run), as_json, backfill_table(start, end))


@command()
def reconcile(start: StartOption, end: EndOption,
              repair: Annotated[bool, typer.Option("--repair", help="send the missing messages again")] = False,
              as_json: JsonOption = False) -> None:
    """Read the chats of [start, end) back from amoCRM and compare them with the ledger, day by day."""
    from flows.reconcile import reconcile as reconcile_flow

    _preflight(days=(start, end))
    _finish(*_run(reconcile_flow, start=start, end=end, repair=repair), as_json, reconcile_table(start, end))


@command()
def audit(start: StartOption, end: EndOption,
          repair: Annotated[bool, typer.Option("--repair", help="send what amoCRM lacks, edit what differs")] = False,
          as_json: JsonOption = False) -> None:
    """Compare source, ledger and amoCRM for each day of [start, end): three counts, the differences by message id
    and a verdict; exit 0 when amoCRM holds what the source holds."""
    from flows.audit import audit as audit_flow

    _preflight(days=(start, end))
    _finish(*_run(audit_flow, start=start, end=end, repair=repair), as_json, audit_table(start, end))


@command()
def status(as_json: JsonOption = False) -> None:
    """The ledger's view of each interval: done or not, messages sent, rejects, verdict, and its last audit."""
    from ..claims import interval_label
    from ..ledger import Ledger

    ledger = Ledger(load_settings().state_url)
    intervals = _with_last_audits(ledger.intervals.rows(), ledger.audits.last())
    counts = ledger.messages.status_counts()
    unplaced = sum(ledger.rejects.counts("unplaced").values())
    quarantined = ledger.chats.quarantined()
    now = ledger.clock()  # claims expire by the ledger's clock, not this machine's
    running = [{"interval": interval_label(row.key), "alive": row.expires_at >= now,
                "registered_through": datetime.fromtimestamp(row.frontier_ms / 1000, UTC).isoformat()}
               for row in ledger.leases.live("interval", expired_within_s=math.inf)]
    ledger.close()
    if as_json:
        print(json.dumps({"intervals": intervals, "messages_by_status": counts, "running": running,
                          "unplaced": unplaced, "quarantined": quarantined}, ensure_ascii=False, default=str))
        return
    status_tables(intervals, counts, unplaced, running, quarantined)


def _with_last_audits(intervals: list[dict[str, Any]],
                      audits: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each interval with its last audit (`last_audit`, None if never audited); a day audited but never imported is
    listed too, with no status, in time order."""
    rows = [{**row, "last_audit": audits.get((row["start"], row["end"]))} for row in intervals]
    imported = {(row["start"], row["end"]) for row in intervals}
    rows += [{"start": start, "end": end, "status": None, "summary": {}, "updated_at": None, "last_audit": audit}
             for (start, end), audit in audits.items() if (start, end) not in imported]
    return sorted(rows, key=lambda row: (row["start"], row["end"]))


@command("rejects")
def rejects_(
    reason: Annotated[str | None, typer.Option(help="only this reason, e.g. empty_text")] = None,
    interval: Annotated[str | None, typer.Option(help="only this interval's, e.g. 2026-10-01..2026-10-02")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many rows (0: all) [default: 50 shown, all in a "
                                                   "CSV file]", show_default=False)] = None,
    csv: Annotated[Path | None, typer.Option(help="write them to this CSV file instead")] = None,
) -> None:
    """Show the source rows that were not sent, with the reason, from the ledger (AMOJO_ETL_STATE_URL)."""
    from ..ledger import Ledger

    if limit is None:
        limit = 0 if csv else 50
    ledger = Ledger(load_settings().state_url)
    rows = ledger.rejects.rows(reason, limit or None, interval_label=interval)
    ledger.close()
    if csv:
        _write_rejects(rows, csv)
        return
    _table(f"rejected rows ({len(rows)} shown)", ["source key", "reason", "detail", "row"],
           [[r["source_key"], r["reason"], r["detail"], r["row"] or ""] for r in rows])


def _write_rejects(rows: list[dict[str, Any]], csv: Path) -> None:
    import pandas as pd

    columns = ["interval_label", "source_key", "reason", "detail", "row", "updated_at"]
    frame = pd.DataFrame(rows, columns=columns).rename(columns={"interval_label": "interval"})
    # the ledger keeps Unix seconds; the file shows them as the source keys beside them show theirs: ISO 8601 UTC
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        frame.to_csv(csv, index=False)
    except OSError as exc:
        raise ConfigurationError(f"cannot write --csv {csv}: {exc.strerror or exc}; choose a path in a "
                                 "writable directory") from None
    console.print(_plain(f"{len(rows)} rejected rows written to {csv}", limit=None))


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

    from ..sample import SampleSize, write_sample
    from ..settings import database_url

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


command()(emulator)


@command("alerts-install")
def alerts_install(notify: Annotated[str, typer.Option(
        help="the notification block to send through, as type/name (slack-webhook/night-watch) or a bare name")]
                   ) -> None:
    """Create (or replace) the Prefect automations that notify when an import fails or ends incomplete, and when
    no nightly import finished in 26 hours. Needs PREFECT_API_URL: automations live on the Prefect server."""
    from prefect.settings import get_current_settings

    from ..alerts import install_alerts

    if not get_current_settings().api.url:
        raise ConfigurationError("automations live on a Prefect server: set PREFECT_API_URL to it (see README, "
                                 "Running it with Prefect)")
    _announce_prefect()
    for name in asyncio.run(install_alerts(notify)):
        console.print(_plain(f"installed automation: {name}", limit=None), soft_wrap=True)


@command()
def demo(as_json: JsonOption = False,
         stay: Annotated[bool, typer.Option("--stay", help="keep the emulator running after the import, to look at "
                                                          "the chats in a browser; Ctrl-C ends it")] = False) -> None:
    """Import the sample database into a local emulator and verify it: the whole pipeline in one command."""
    from amojo.emulator.config import EmulatorConfig
    from amojo.emulator.server import start as start_emulator

    from ..sample import write_sample

    if not SAMPLE_DB.exists():
        write_sample(f"sqlite:///{SAMPLE_DB}")
    first, last = _sample_range(f"sqlite:///{SAMPLE_DB}")
    config = EmulatorConfig()
    began = time.monotonic()
    with start_emulator(config) as running, tempfile.TemporaryDirectory(prefix="amojo-etl-demo-") as workdir:
        os.environ.update({"AMOJO_ETL_SOURCE_URL": f"sqlite:///{SAMPLE_DB}",
                           "AMOJO_ETL_STATE_URL": f"sqlite:///{workdir}/ledger.db",
                           **importer_env(config, running.url, account=False)})
        console.print(_plain(f"demo: emulator at {running.url}; importing {first} .. {last} (end exclusive)",
                             limit=None))
        console.print(_plain(f"demo: the chats as amoCRM shows them (while the demo runs; --stay keeps them up): "
                             f"{view_url(running.url)}", limit=None), soft_wrap=True)
        summary, error = _run_import(first, last, dry_run=False)
        extra = {"demo_total_s": round(time.monotonic() - began, 2),
                 "emulator_requests": sum(running.emulator.request_counts().values())}
        try:
            _finish(summary, error, as_json, _print_summary, extra)
        finally:  # the outcome is printed first; its exit status waits for the person looking
            if stay:
                _stay(view_url(running.url))


def _stay(url: str) -> None:
    """Wait until Ctrl-C (or SIGTERM), the emulator serving `url` meanwhile. Our own handlers: the flow run leaves
    SIGINT with a handler of Prefect's that does not end the wait."""
    import signal
    import threading

    ended = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: ended.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    console.print(_plain(f"demo: the emulator stays up: {url} (Ctrl-C ends it)", limit=None), soft_wrap=True)
    try:
        ended.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sample_range(url: str) -> tuple[date, date]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        low, high = conn.execute(sa.text("SELECT MIN(created_at), MAX(created_at) FROM messages")).one()
    engine.dispose()
    return date.fromisoformat(str(low)[:10]), date.fromisoformat(str(high)[:10]) + timedelta(days=1)
