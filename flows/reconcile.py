"""reconcile: read the chats of a date range back from amoCRM, day by day; with `repair`, send what is missing and
edit what differs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.states import Failed, State

from etl.api import open_api
from etl.errors import RunError, classify
from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import ConfigurationError, Settings, load_settings, with_secret_blocks
from tasks.reconcile import reconcile_task
from tasks.report import artifact_key

from .backfill import validate_range
from .import_chats import import_chats
from .outcome import child_run_tags, final_state, summary_of


async def repair_day(settings: Settings, ledger: Ledger, day: Interval, missing: Iterable[str],
                     changed: Iterable[str]) -> dict[str, Any]:
    """Send what amoCRM lost and edit what it holds with other content, by importing the day again (a run of its
    own, with this run's tags); the day's new import summary. Marked failed, a message is first looked up in the
    chat, then sent if it is not there; one marked changed is edited."""
    ledger.messages.mark(missing, "failed")
    ledger.messages.mark_needs_edit(changed)
    with child_run_tags(settings):
        state = await import_chats(start=day.start.date(), end=day.start.date() + timedelta(days=1),
                                   return_state=True)
    if (redone := await summary_of(state)) is None:
        raise RunError(f"the repair of {day.label} failed: {state.message}")
    return redone


@flow(name="reconcile", flow_run_name="reconcile-{start}..{end}")
async def reconcile(start: date, end: date, repair: bool = False) -> dict[str, Any] | State:
    """Compare each day of [start, end) in amoCRM with the ledger; repair sends the missing messages again.

    Args:
        start: first day read back (inclusive), in AMOJO_ETL_TIMEZONE.
        end: the day after the last one (exclusive).
        repair: send again what amoCRM lacks and edit what differs, through the same exactly-once path.
    """
    logger = get_run_logger()
    try:
        settings = with_secret_blocks(load_settings())
        settings.require_api()
        validate_range(start, end, datetime.now(settings.zone).date())
        days = Interval.days(start, end, settings.zone).daily()
        ledger = Ledger(settings.state_url)
    except ConfigurationError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    rows: list[dict[str, Any]] = []
    try:
        async with open_api(settings, ledger) as api:
            for day in days:
                verdict = await reconcile_task(api, ledger, day.start_ms, day.end_ms, label=day.label)
                row = {"day": day.label, "expected": verdict.expected, "confirmed": verdict.confirmed,
                       "missing": len(verdict.missing), "duplicates": len(verdict.duplicates),
                       "mismatched": len(verdict.mismatched), "surplus": len(verdict.surplus),
                       "verdict": verdict.verdict, "repaired": 0}
                if repair and (verdict.missing or verdict.mismatched):
                    redone = await repair_day(settings, ledger, day, verdict.missing, verdict.mismatched)
                    row.update(repaired=redone["messages_sent"] + redone["messages_edited"], verdict=redone["verdict"])
                rows.append(row)
    except Exception as exc:
        error = classify(exc)
        if error is None:
            raise
        logger.error("%s", error)
        return Failed(message=str(error), data=error)
    finally:
        ledger.close()
    complete = all(r["verdict"] == "complete" for r in rows)
    summary = {"days": len(rows), "verdict": "complete" if complete else "incomplete",
               "missing": sum(r["missing"] for r in rows), "duplicates": sum(r["duplicates"] for r in rows),
               "repaired": sum(r["repaired"] for r in rows), "by_day": rows}
    headline = (f"{sum(r['confirmed'] for r in rows)} confirmed · {summary['missing']} missing · "
                f"{sum(r['mismatched'] for r in rows)} changed · {summary['repaired']} repaired · {summary['verdict']}")
    await acreate_table_artifact(rows, key=artifact_key("reconcile-days", settings),
                                 description=f"Reconcile {start}..{end}: {headline}")
    return final_state(summary, headline)
