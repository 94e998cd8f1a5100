"""import_chats: one data interval from the source database into amoCRM chats, then read back and verified."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import Field

from etl.api import open_api
from etl.claims import ClaimLost, RunClaims, interval_key
from etl.intervals import Interval, check_range
from etl.ledger import Ledger
from etl.settings import ConfigurationError, Settings
from etl.source import SourceStream
from etl.summary import RunSummary
from tasks.interval import days_to_revisit, open_interval, read_senders, transformed_chunks
from tasks.load import DryRun, load_task, own_ids, resolve_senders_task, withdraw_unseen
from tasks.media import MediaReport, media_links, media_task
from tasks.reconcile import reconcile_task
from tasks.report import ImportProgress, RunTotals, publish_artifacts

from .outcome import FlowRun, emit_import_event, expected_failure, final_state, run_flow


def _run_name() -> str:
    params = flow_run.parameters
    return f"import-{params.get('start') or 'scheduled'}..{params.get('end') or ''}".rstrip(".")


def data_interval(start: date | None, end: date | None, timezone: str) -> Interval:
    """The dates given, or the day before the run's scheduled time (a late or retried nightly run still
    imports its own day)."""
    zone = ZoneInfo(timezone)
    if start is None and end is None:
        scheduled = flow_run.scheduled_start_time
        return Interval.day_before(scheduled if scheduled else datetime.now(UTC), zone)
    if start is None or end is None:
        raise ConfigurationError("give both start and end, or neither (the day before the scheduled time)")
    check_range(start, end, datetime.now(zone).date())
    return Interval.days(start, end, zone)


@flow(name="import-chats", flow_run_name=_run_name)
async def import_chats(start: date | None = None, end: date | None = None, dry_run: bool = False,
                       lookback_days: Annotated[int, Field(ge=0, le=31)] | None = None) -> RunSummary | State:
    """Import the messages of [start, end) (days in AMOJO_ETL_TIMEZONE; end exclusive), then verify them.

    First the `lookback_days` days before `start` are read again, and those not complete (failed, incomplete, never
    imported) or whose source rows changed since they were recorded (rows that arrived late, edits) are imported
    again, oldest first, before [start, end): a conversation's messages go in time order after a night that failed.
    Only what the ledger has not seen is sent. Unset, a scheduled run (no dates) looks back AMOJO_ETL_LOOKBACK_DAYS
    days, and a run for given dates none.

    Args:
        start: first day imported (inclusive), in AMOJO_ETL_TIMEZONE. Leave start and end empty for the day
            before the run's scheduled time (what the nightly schedule does).
        end: the day after the last one imported (exclusive): start 2026-10-01, end 2026-10-08 is one week.
        dry_run: extract and transform, and say what would be sent; nothing is sent or written.
        lookback_days: earlier days (0-31) read again for rows that arrived late; empty means
            AMOJO_ETL_LOOKBACK_DAYS for a scheduled run, none for given dates.
    """
    began = time.monotonic()
    scheduled = start is None and end is None

    async def body(run: FlowRun) -> RunSummary | State:
        settings, interval = run.settings, run.interval
        days_back = lookback_days if lookback_days is not None else settings.lookback_days if scheduled else 0
        # The earlier days first: a conversation's messages of a day that failed or was left incomplete go before
        # its messages of this run's own day, and those it could not send hold its later ones back.
        lookback: list[dict[str, Any]] = []
        held: dict[str, str] = {}
        if days_back and not dry_run:
            lookback = await _look_back(settings, interval, days_back, held)
        try:
            summary = await _import(settings, interval, dry_run, began, held)
        except BaseException as exc:
            _record_failure(settings, interval, dry_run, exc)
            raise
        summary.lookback = lookback
        if any(day["outcome"] == "failed" or day.get("verdict") == "incomplete" for day in lookback):
            summary.verdict = "incomplete"
        return await _finish(settings, summary)

    return await run_flow(body, lambda settings: data_interval(start, end, settings.timezone), api=False)


async def _finish(settings: Settings, summary: RunSummary) -> State:
    """The artifacts, the log line, the event, and the final state of an interval's import."""
    await publish_artifacts(summary)
    if summary.ok:
        get_run_logger().info("import %s: %s", summary.interval, summary.headline)
    else:
        get_run_logger().warning(
            "import %s is incomplete: %s. Run it again (`amojo-etl backfill --reprocess failed`), or `amojo-etl "
            "reconcile --repair` for what amoCRM lost; `amojo-etl status` shows the days", summary.interval,
            summary.headline)
    emit_import_event(settings, summary)
    return final_state(summary, summary.headline)


async def _look_back(settings: Settings, interval: Interval, days: int,
                     held: dict[str, str]) -> list[dict[str, Any]]:
    """Read each of the `days` days before `interval` again, oldest first, and import again those that need it
    (`days_to_revisit`: new, failed, incomplete or changed), through the same exactly-once path, before `interval`
    itself. Returns what came of each day; `held` gains the conversations a day left unsent (conversation -> why),
    whose later messages must wait for the next run."""
    logger = get_run_logger()
    first = interval.start.date()
    days_back = [Interval.days(first - timedelta(days=n), first - timedelta(days=n - 1), settings.zone)
                 for n in range(days, 0, -1)]
    try:
        revisit = await days_to_revisit(settings, days_back)
    except Exception as exc:
        if (error := expected_failure(exc)) is None:
            raise
        # The look-back fails alone: the run's own day is imported all the same, and the next run looks again.
        logger.warning("look-back: could not tell which days changed: %s", error)
        return [{"interval": day.label, "outcome": "failed", "error": str(error)} for day in days_back]
    outcomes: list[dict[str, Any]] = []
    for day in days_back:
        if day.label not in revisit:
            outcomes.append({"interval": day.label, "outcome": "unchanged"})
            continue
        why = revisit[day.label]
        logger.info("look-back: %s is %s: importing it again", day.label, why)
        try:
            summary = await _import(settings, day, False, time.monotonic(), held)
        except Exception as exc:
            _record_failure(settings, day, False, exc)
            if (error := expected_failure(exc)) is None:
                raise
            logger.warning("look-back: %s failed: %s", day.label, error)
            outcomes.append({"interval": day.label, "outcome": "failed", "reason": why, "error": str(error)})
            held.update(_unsent(settings, day, f"{day.label} failed: {error}"))
            continue
        if summary.verdict != "complete":
            held.update(_unsent(settings, day, f"{day.label} is {summary.verdict}"))
        outcomes.append({"interval": day.label, "outcome": "imported", "reason": why,
                         "messages_sent": summary.messages_sent, "messages_edited": summary.messages_edited,
                         "verdict": summary.verdict})
    return outcomes


def _unsent(settings: Settings, day: Interval, why: str) -> dict[str, str]:
    """The conversations with messages of `day` the ledger holds unsent (conversation -> `why`): their later
    messages would land before those."""
    ledger = Ledger(settings.state_url)
    try:
        conversations = [conversation for conversation, _ in ledger.messages.conversations_between(day.start_ms,
                                                                                                  day.end_ms)]
        return dict.fromkeys(ledger.messages.earliest_unsent(conversations, [(day.start_ms, day.end_ms)]), why)
    except Exception:  # noqa: BLE001 - the ledger may be what failed the day; the next run settles it first again
        get_run_logger().warning("look-back: could not read which conversations %s left unsent", day.label)
        return {}
    finally:
        ledger.close()


def _record_failure(settings: Settings, interval: Interval, dry_run: bool, error: BaseException) -> None:
    """A failed interval is marked so in the ledger: a backfill with reprocess=failed takes it again. Not when the run
    lost its claims to another run that holds the interval now: that one's outcome is the interval's."""
    if dry_run:
        return
    try:
        ledger = Ledger(settings.state_url)
        if isinstance(error, ClaimLost) and interval_key(interval) in {c.key for c in ledger.leases.live("interval")}:
            ledger.close()
            return  # the run that took this one's work over records the outcome
        ledger.intervals.save(interval.start.isoformat(), interval.end.isoformat(), "failed",
                             {"interval": interval.label, "error": f"{type(error).__name__}: {error}"})
        ledger.close()
    except Exception:  # noqa: BLE001 - the ledger itself may be what failed; the run's own error matters more
        get_run_logger().warning("could not record the failure in the ledger")


async def _import(settings: Settings, interval: Interval, dry_run: bool, began: float,
                  held: dict[str, str] | None = None) -> RunSummary:
    """extract -> transform -> load, chunk by chunk, then reconcile the whole interval. `held`: conversations an
    earlier day of the same run left unsent, none of whose messages is sent here; it gains those that fail here."""
    source = open_interval(settings, interval)
    ledger = Ledger(settings.state_url)
    try:
        if dry_run:
            return await _rehearse(settings, interval, source, ledger, began)
        totals = RunTotals(interval.label)
        progress = await ImportProgress.start(interval.label, source.count())
        media = MediaReport()
        async with open_api(settings, ledger) as api, RunClaims(ledger, settings.claim_timeout_s,
                                                                request_s=settings.timeout_s) as claims, \
                media_links(settings) as links:
            api.guard(claims.check)  # no request goes out once this run's lease is gone
            await claims.hold_interval(interval)
            ledger.rejects.clear(interval.label)  # what is still bad is rejected again below
            senders = await resolve_senders_task(api.rest, settings.bot_id)
            registered = interval.start_ms
            # Conversations that failed (here or on an earlier day): their later chunks wait for the next run.
            stopped = held if held is not None else {}
            seen_pending: set[str] = set()  # the source's rows still unsent after their chunk: expected still
            for frames, batch in transformed_chunks(source, settings, senders, interval.label):
                chunk = f"{interval.label}#{source.chunks}"
                totals.add_source(batch)
                batch = await media_task(batch, ledger, links, media, settings.media_check == "always",
                                         settings.media_unreachable == "reject", True, label=chunk)
                batch = own_ids(batch, ledger)  # registered as pending: what is sent from here on is known
                totals.add_batch(batch)
                # Chunks come in time order: a short one is the last, and then all of the interval is registered.
                if frames.rows_read < settings.chunk_size:
                    registered = interval.end_ms
                elif len(batch.messages):
                    registered = max(registered, int(batch.messages["msec"].max()))
                report = await load_task(batch, api, ledger, claims, registered, interval.label,
                                         settings.concurrency, progress.sending, stopped, label=chunk)
                stopped.update(report.stopped)
                totals.load.add(report)
                seen_pending |= ledger.messages.pending(batch.messages["msgid"])
                await progress.chunk_done(frames.rows_read)
            claims.advance(interval.end_ms)
            # Unsent rows the source no longer has in the interval (deleted, moved out, now invalid): not expected.
            if withdrawn := withdraw_unseen(ledger, claims.holder, interval.start_ms, interval.end_ms, seen_pending):
                get_run_logger().info("%s: %d unsent messages are no longer in the source there: not expected",
                                      interval.label, withdrawn)
            verdict = await reconcile_task(api, ledger, interval.start_ms, interval.end_ms, label=interval.label)
            summary = totals.summary(verdict, time.monotonic() - began)
            summary.media = asdict(media)
            # Recorded while the interval is still claimed: whoever waits for it then finds the outcome.
            ledger.intervals.save(interval.start.isoformat(), interval.end.isoformat(), summary.verdict,
                                 summary.as_dict())
        return summary
    finally:
        source.close()
        ledger.close()


async def _rehearse(settings: Settings, interval: Interval, source: SourceStream, ledger: Ledger,
                    began: float) -> RunSummary:
    """A dry run: extract and transform, and say what load would do; no Chats API call, nothing written."""
    totals = RunTotals(interval.label, dry_run=True)
    plan = DryRun()
    media = MediaReport()
    async with media_links(settings) as links:
        for _, batch in transformed_chunks(source, settings, await read_senders(settings, ledger), interval.label):
            # URLs are checked when asked for; never presigned: a dry run sends nothing, and shows its payloads
            batch = await media_task(batch, ledger, links, media, settings.media_check != "off",
                                     settings.media_unreachable == "reject", False, label=interval.label)
            batch = own_ids(batch, ledger, register=False)
            totals.add_batch(batch)
            plan.add(batch, ledger)
    summary = totals.summary(None, time.monotonic() - began)
    summary.plan = asdict(plan)
    summary.media = asdict(media)
    return summary
