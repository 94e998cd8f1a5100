"""backfill: every day of a date range, imported day by day, at most `max_parallel` days at a time.

Prefect has no backfill of its own; this one follows Airflow's: the ledger says which days are done, and
`reprocess` says which of them to take again. Stopped half-way and started again, it does only the rest. Several
backfills over the same range, on several workers, share its days out through the ledger's claims.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_progress_artifact, aupdate_progress_artifact
from prefect.states import Failed, State
from pydantic import Field

from etl.claims import RunClaims, interval_key
from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import Settings
from etl.summary import BackfillSummary
from tasks.extract import extract_unplaced_task
from tasks.interval import days_to_revisit
from tasks.report import artifact_key, backfill_days_markdown
from tasks.transform import unplaced_rejects

from .day_runs import import_day
from .outcome import FlowRun, child_run_tags, days_of, final_state, run_flow

Reprocess = Literal["missing", "failed", "changed", "all"]
UNPLACED_LABEL = "unplaced"
"""The rejects of source rows that belong to no interval are kept under this label."""
WAIT_S = 2.0
"""How often a backfill looks again at a day another run holds."""


def days_to_run(days: list[Interval], statuses: dict[tuple[str, str], str], reprocess: Reprocess) -> list[Interval]:
    """missing: days never run; failed: those and the failed or incomplete ones; all: every day. (changed: those of
    `failed` and the complete days whose source rows changed since, found by `days_to_revisit`.)"""
    def status(day: Interval) -> str | None:
        return statuses.get((day.start.isoformat(), day.end.isoformat()))

    if reprocess == "all":
        return days
    if reprocess == "failed":
        return [d for d in days if status(d) != "complete"]
    return [d for d in days if status(d) is None]


@flow(name="backfill", flow_run_name="backfill-{start}..{end}-{reprocess}")
async def backfill(
    start: date,
    end: date,
    reprocess: Reprocess = "missing",
    max_parallel: Annotated[int, Field(ge=1, le=32)] = 2,
    dry_run: bool = False,
) -> BackfillSummary | State:
    """Import each day of [start, end) (days in AMOJO_ETL_TIMEZONE; end exclusive) that `reprocess` selects.

    Args:
        start: first day of the range (inclusive), in AMOJO_ETL_TIMEZONE.
        end: the day after the last one (exclusive): start 2026-10-01, end 2026-11-01 is October.
        reprocess: missing: days never run; failed: also the failed and incomplete ones; changed: also the days
            whose source rows changed since (late rows, edits); all: every day.
        max_parallel: days imported at once, 1-32 (they share the account's rate limits).
        dry_run: extract and transform each day, and say what would be sent; nothing is sent or written.
    """
    async def body(run: FlowRun) -> BackfillSummary | State:
        settings, ledger, days = run.settings, run.ledger, run.days
        unplaced = _report_unplaced(settings, ledger, dry_run)
        statuses = ledger.intervals.statuses()
        if reprocess == "changed":
            revisit = await days_to_revisit(settings, days)
            todo = [d for d in days if d.label in revisit]
        else:
            todo = days_to_run(days, statuses, reprocess)
        get_run_logger().info("backfill %s..%s: %d of %d days to run (reprocess=%s)", start, end, len(todo),
                              len(days), reprocess)
        # The day runs, tasks of their own, copy the context with these tags.
        with child_run_tags(settings):
            async with RunClaims(ledger, settings.claim_timeout_s) as own:
                dispatch = _Dispatch(todo, ledger, own, reprocess, max_parallel, dry_run, (start, end))
                await dispatch.run_all()
        outcomes, by_others, runs = dispatch.outcomes, dispatch.by_others, dispatch.runs
        summary = _summary(days, todo, outcomes, by_others, unplaced)
        rows = [{"day": d.label, **runs.get(d.label, {}),
                 "outcome": (f"{outcomes[d.label]} (by another run)" if d.label in by_others else outcomes[d.label])
                 if d.label in outcomes else f"skipped ({statuses.get((d.start.isoformat(), d.end.isoformat()))})"}
                for d in days]
        title = f"Backfill {start}..{end}: {summary.headline}"
        await acreate_markdown_artifact(backfill_days_markdown(title, rows),
                                        key=artifact_key("backfill-days", settings), description=title)
        if summary.failed:
            return Failed(message=summary.headline, data=summary)
        return final_state(summary, summary.headline)

    return await run_flow(body, days_of(start, end), api=False, secret_blocks=False)


def _summary(days: list[Interval], todo: list[Interval], outcomes: dict[str, str], by_others: set[str],
             unplaced: int | None) -> BackfillSummary:
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("complete", "incomplete", "failed")}
    return BackfillSummary(days=len(days), ran=len(todo) - len(by_others), skipped=len(days) - len(todo),
                           by_other_runs=len(by_others), **counts, unplaced=unplaced,
                           verdict="complete" if not counts["incomplete"] and not counts["failed"] else "incomplete",
                           outcomes=outcomes)


def _report_unplaced(settings: Settings, ledger: Ledger, dry_run: bool) -> int | None:
    """Count the source's messages no interval can ever select, and keep them in the rejects (not on a dry run);
    None when a mapping has no `unplaced` query to find them."""
    frame = extract_unplaced_task(settings.source_url, settings.mapping)
    if frame is None:
        return None
    if not dry_run:
        ledger.rejects.clear(UNPLACED_LABEL)
        ledger.rejects.save(unplaced_rejects(frame, settings.source_zone).to_dict("records"), UNPLACED_LABEL)
    if len(frame):
        get_run_logger().warning("%d source messages have no readable created_at, or one before 1970, so no day "
                                 "can import them; `amojo-etl rejects` lists them", len(frame))
    return len(frame)


class _Dispatch:
    """A backfill's days, imported `max_parallel` at a time, earliest first, with what came of each: `outcomes` (day
    label -> verdict), `by_others` (the days other runs did meanwhile) and `runs` (day label -> the counts and flow
    run id of the days this backfill imported).

    Several backfills over one range share it out: each claims the earliest day no live run holds ("dispatch"),
    and waits for the days others hold only when none is left (taking one over if its run died). Its days not
    started yet are reserved, so that runs of later days keep conversation order. When an earlier day than all
    it runs becomes free (its run died), it starts that one at once, beyond `max_parallel`: later days may be
    waiting for it.
    """

    def __init__(self, todo: list[Interval], ledger: Ledger, own: RunClaims, reprocess: Reprocess,
                 max_parallel: int, dry_run: bool, span: tuple[date, date]) -> None:
        self.todo, self.ledger, self.own, self.reprocess = todo, ledger, own, reprocess
        self.max_parallel, self.dry_run, self.span = max_parallel, dry_run, span
        self.queue = list(todo)
        self.running: dict[asyncio.Task[None], Interval] = {}
        self.outcomes: dict[str, str] = {}
        self.by_others: set[str] = set()
        self.runs: dict[str, dict[str, Any]] = {}
        self.progress: Any = None

    async def run_all(self) -> None:
        start, end = self.span
        self.progress = await acreate_progress_artifact(0.0, key=artifact_key("backfill-progress"),
                                                        description=f"Days of {start}..{end} done")
        if not self.dry_run:
            self.own.reserve(self.todo)
        try:
            while self.queue or self.running:
                day = self.next_day() if self.queue else None
                if day is not None:
                    self.queue.remove(day)
                    self.running[asyncio.create_task(self.run(day))] = day
                    continue
                if self.running:
                    finished, _ = await asyncio.wait(self.running, timeout=WAIT_S,
                                                     return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        self.running.pop(task)
                        task.result()
                else:
                    await asyncio.sleep(WAIT_S)  # the rest is held by other runs: wait for their outcome
        finally:
            # A backfill that stops (its claims lost, a bug) stops its days before it gives up their claims.
            for task in self.running:
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)
        await aupdate_progress_artifact(self.progress, 100.0, description=self.done_line())

    async def run(self, day: Interval) -> None:
        try:
            statuses = self.ledger.intervals.statuses()
            if not self.dry_run and self.reprocess in ("missing", "failed") \
                    and not days_to_run([day], statuses, self.reprocess):
                self.outcomes[day.label] = statuses[(day.start.isoformat(), day.end.isoformat())]
                self.by_others.add(day.label)  # done meanwhile by another run
                return
            state, result = await import_day(day, self.dry_run)
            self.runs[day.label] = {"run": state.state_details.flow_run_id}
            if result is None:
                self.outcomes[day.label] = "failed"
            else:
                self.outcomes[day.label] = "dry run" if self.dry_run else result.verdict
                self.runs[day.label].update(sent=result.messages_sent, rejected=result.rejected,
                                            missing=result.missing)
        finally:
            self.own.release("dispatch", [interval_key(day)])
            if not self.dry_run:
                self.own.unreserve(day)
            await aupdate_progress_artifact(self.progress, 100.0 * len(self.outcomes) / max(1, len(self.todo)),
                                            description=self.done_line())

    def next_day(self) -> Interval | None:
        """The earliest day of the queue no other run holds, now claimed by this backfill; with all slots
        taken, only a day earlier than every day running (a catch-up)."""
        if len(self.running) > self.max_parallel:
            return None
        before = min(d.start for d in self.running.values()) if len(self.running) == self.max_parallel else None
        held = {r.key for kind in ("interval", "dispatch") for r in self.ledger.leases.live(kind, self.own.holder)}
        for day in self.queue:
            if before is not None and day.start >= before:
                return None
            if interval_key(day) not in held and self.own.take("dispatch", [interval_key(day)]):
                return day
        return None

    def done_line(self) -> str:
        return days_done_line(*self.span, self.outcomes, len(self.todo))


def days_done_line(start: date, end: date, outcomes: dict[str, str], todo: int) -> str:
    """"Days of 2026-10-01..2026-10-08: 3 of 7 done · 2 complete · 1 incomplete": the progress card's line."""
    tally = Counter(outcomes.values())
    return f"Days of {start}..{end}: {len(outcomes)} of {todo} done" + "".join(
        f" · {count} {outcome}" for outcome, count in sorted(tally.items()))
