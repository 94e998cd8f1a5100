"""backfill: every day of a date range, imported day by day, at most `max_parallel` days at a time.

Prefect has no backfill of its own; this one follows Airflow's: the ledger says which days are done, and
`reprocess` says which of them to take again. Stopped half-way and started again, it does only the rest.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.states import Failed, State
from pydantic import Field

from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import ConfigurationError, load_settings

from .import_chats import import_chats

Reprocess = Literal["missing", "failed", "all"]


def days_to_run(days: list[Interval], statuses: dict[tuple[str, str], str], reprocess: Reprocess) -> list[Interval]:
    """missing: days never run; failed: those and the failed or incomplete ones; all: every day."""
    def status(day: Interval) -> str | None:
        return statuses.get((day.start.isoformat(), day.end.isoformat()))

    if reprocess == "all":
        return days
    if reprocess == "failed":
        return [d for d in days if status(d) != "complete"]
    return [d for d in days if status(d) is None]


def validate_range(start: date, end: date, today: date) -> None:
    if end <= start:
        raise ConfigurationError(f"end ({end}) must be after start ({start}); end is exclusive")
    if start > today:
        raise ConfigurationError(f"the range starts in the future ({start}); nothing to import yet")


@flow(name="backfill", flow_run_name="backfill-{start}..{end}-{reprocess}")
async def backfill(
    start: date,
    end: date,
    reprocess: Reprocess = "missing",
    max_parallel: Annotated[int, Field(ge=1, le=32)] = 2,
    dry_run: bool = False,
) -> dict[str, Any] | State:
    """Import each day of [start, end) (days in AMOJO_ETL_TIMEZONE; end exclusive) that `reprocess` selects."""
    logger = get_run_logger()
    try:
        settings = load_settings()
        validate_range(start, end, datetime.now(settings.zone).date())
        days = Interval.days(start, end, settings.zone).daily()
        ledger = Ledger(settings.state_url)
        statuses = ledger.interval_statuses()
        ledger.close()
    except (ConfigurationError, ValueError) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    todo = days_to_run(days, statuses, reprocess)
    logger.info("backfill %s..%s: %d of %d days to run (reprocess=%s)", start, end, len(todo), len(days), reprocess)
    progress = await acreate_progress_artifact(0.0, key="backfill-progress",
                                               description=f"Days of {start}..{end} done")
    gate = asyncio.Semaphore(max_parallel)
    done = 0
    outcomes: dict[str, str] = {}

    async def run(day: Interval) -> None:
        nonlocal done
        async with gate:
            state = await import_chats(start=day.start.date(), end=day.start.date() + timedelta(days=1),
                                       dry_run=dry_run, return_state=True)
        if state.is_completed():
            result = await state.aresult()
            outcomes[day.label] = "dry run" if dry_run else result["verdict"]
        else:
            outcomes[day.label] = "failed"
        done += 1
        await aupdate_progress_artifact(progress, 100.0 * done / max(1, len(todo)))

    await asyncio.gather(*(run(day) for day in todo))
    await aupdate_progress_artifact(progress, 100.0)
    rows = [{"day": d.label,
             "outcome": outcomes.get(d.label, f"skipped ({statuses.get((d.start.isoformat(), d.end.isoformat()))})")}
            for d in days]
    await acreate_table_artifact(rows, key="backfill-days", description=f"Backfill {start}..{end}")
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("complete", "incomplete", "failed")}
    summary = {"days": len(days), "ran": len(todo), "skipped": len(days) - len(todo), **counts,
               "verdict": "complete" if not counts["incomplete"] and not counts["failed"] else "incomplete",
               "outcomes": outcomes}
    if counts["failed"]:
        return Failed(message=f"{counts['failed']} of {len(todo)} days failed", data=summary)
    return summary
