"""reconcile: read the chats of a date range back from amoCRM, day by day; with `repair`, send what is missing and
edit what differs."""

from __future__ import annotations

from datetime import date

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.states import State

from etl.api import open_api
from etl.summary import ReconcileDay, ReconcileSummary
from tasks.reconcile import reconcile_task
from tasks.report import artifact_key

from .day_runs import repair_day
from .outcome import FlowRun, days_of, final_state, run_flow


@flow(name="reconcile", flow_run_name="reconcile-{start}..{end}")
async def reconcile(start: date, end: date, repair: bool = False) -> ReconcileSummary | State:
    """Compare each day of [start, end) in amoCRM with the ledger; repair sends the missing messages again.

    Args:
        start: first day read back (inclusive), in AMOJO_ETL_TIMEZONE.
        end: the day after the last one (exclusive).
        repair: send again what amoCRM lacks and edit what differs, through the same exactly-once path.
    """
    async def body(run: FlowRun) -> State:
        rows: list[ReconcileDay] = []
        async with open_api(run.settings, run.ledger) as api:
            for day in run.days:
                verdict = await reconcile_task(api, run.ledger, day.start_ms, day.end_ms, label=day.label)
                row = ReconcileDay(day.label, expected=verdict.expected, confirmed=verdict.confirmed,
                                   missing=len(verdict.missing), duplicates=len(verdict.duplicates),
                                   mismatched=len(verdict.mismatched), surplus=len(verdict.surplus),
                                   verdict=verdict.verdict)
                if repair and (verdict.missing or verdict.mismatched):
                    redone = await repair_day(run.settings, run.ledger, day, verdict.missing, verdict.mismatched)
                    row.repaired, row.verdict = redone.messages_sent + redone.messages_edited, redone.verdict
                rows.append(row)
        summary = ReconcileSummary.of(rows)
        await acreate_table_artifact([row.as_dict() for row in rows], key=artifact_key("reconcile-days", run.settings),
                                     description=f"Reconcile {start}..{end}: {summary.headline}")
        return final_state(summary, summary.headline)

    return await run_flow(body, days_of(start, end))
