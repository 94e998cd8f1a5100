"""import_chats: one data interval from the source database into amoCRM chats, then read back and verified."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import Field

from etl.api import open_api, rest_client
from etl.claims import ClaimLost, RunClaims, interval_key
from etl.errors import classify
from etl.intervals import Interval, check_range
from etl.ledger import Ledger
from etl.settings import ConfigurationError, Settings, load_settings, with_secret_blocks
from etl.source import SourceFrames, SourceStream, open_source
from etl.summary import RunSummary, import_headline
from tasks.extract import extract_task
from tasks.load import DryRun, load_task, own_ids, resolve_senders_task
from tasks.reconcile import reconcile_task
from tasks.report import ImportProgress, RunTotals, publish_artifacts
from tasks.transform import Batch, SeenIds, Senders, transform_task

from .outcome import emit_import_event, final_state


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
                       lookback_days: Annotated[int, Field(ge=0, le=31)] | None = None) -> dict[str, Any] | State:
    """Import the messages of [start, end) (days in AMOJO_ETL_TIMEZONE; end exclusive), then verify them.

    Then the `lookback_days` days before `start` are read again, and those whose source rows changed since they were
    recorded (rows that arrived late, edits) are imported again: only what the ledger has not seen is sent. Unset,
    a scheduled run (no dates) looks back AMOJO_ETL_LOOKBACK_DAYS days, and a run for given dates none.

    Args:
        start: first day imported (inclusive), in AMOJO_ETL_TIMEZONE. Leave start and end empty for the day
            before the run's scheduled time (what the nightly schedule does).
        end: the day after the last one imported (exclusive): start 2026-10-01, end 2026-10-08 is one week.
        dry_run: extract and transform, and say what would be sent; nothing is sent or written.
        lookback_days: earlier days (0-31) read again for rows that arrived late; empty means
            AMOJO_ETL_LOOKBACK_DAYS for a scheduled run, none for given dates.
    """
    logger = get_run_logger()
    began = time.monotonic()
    try:
        settings = with_secret_blocks(load_settings())
        interval = data_interval(start, end, settings.timezone)
    except (ConfigurationError, ValueError) as exc:
        logger.error("configuration: %s", exc)
        return Failed(message=f"configuration error: {exc}", data=ConfigurationError(str(exc)))
    try:
        summary = await _import(settings, interval, dry_run, began)
    except Exception as exc:
        _record_failure(settings, interval, dry_run, exc)
        if (error := _expected(exc)) is None:
            raise
        # An expected way to fail: say what to fix, without a traceback, and stop the run. The error is the state's
        # data, so that the CLI exits with its status (2: configuration, 1: the run).
        logger.error("%s", error)
        return Failed(message=str(error), data=error)
    except BaseException as exc:
        _record_failure(settings, interval, dry_run, exc)
        raise
    if lookback_days is None:
        lookback_days = settings.lookback_days if start is None and end is None else 0
    if lookback_days and not dry_run:
        summary.lookback = await _look_back(settings, interval, lookback_days)
        if any(day["outcome"] == "failed" or day.get("verdict") == "incomplete" for day in summary.lookback):
            summary.verdict = "incomplete"
    await publish_artifacts(summary)
    result = summary.as_dict()
    headline = import_headline(result)
    if summary.verdict == "complete" or dry_run:
        logger.info("import %s: %s", interval.label, headline)
    else:
        logger.warning("import %s is incomplete: %s. Run it again (`amojo-etl backfill --reprocess failed`), or "
                       "`amojo-etl reconcile --repair` for what amoCRM lost; `amojo-etl status` shows the days",
                       interval.label, headline)
    emit_import_event(settings, result)
    return final_state(result, headline)


def _expected(exc: BaseException) -> Exception | None:
    """`exc` when it is an expected way for an interval's import to fail (one line, no traceback), else None."""
    return classify(exc) or (exc if isinstance(exc, ClaimLost) else None)


async def _look_back(settings: Settings, interval: Interval, days: int) -> list[dict[str, Any]]:
    """Read each of the `days` days before `interval` again, oldest first, and import again those that need it
    (`days_to_revisit`), through the same exactly-once path. Returns what came of each day."""
    logger = get_run_logger()
    first = interval.start.date()
    days_back = [Interval.days(first - timedelta(days=n), first - timedelta(days=n - 1), settings.zone)
                 for n in range(days, 0, -1)]
    try:
        revisit = await days_to_revisit(settings, days_back)
    except Exception as exc:
        if (error := _expected(exc)) is None:
            raise
        # The run's own day is recorded already: the look-back fails alone, and the next run looks again.
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
            summary = await _import(settings, day, False, time.monotonic())
        except Exception as exc:
            _record_failure(settings, day, False, exc)
            if (error := _expected(exc)) is None:
                raise
            logger.warning("look-back: %s failed: %s", day.label, error)
            outcomes.append({"interval": day.label, "outcome": "failed", "reason": why, "error": str(error)})
            continue
        outcomes.append({"interval": day.label, "outcome": "imported", "reason": why,
                         "messages_sent": summary.messages_sent, "messages_edited": summary.messages_edited,
                         "verdict": summary.verdict})
    return outcomes


async def days_to_revisit(settings: Settings, days: list[Interval]) -> dict[str, str]:
    """The days (label -> why) that an import would change: never imported as that interval (`new`), not complete
    (their status), or whose source rows differ from those recorded (`changed`: late rows, edits, deletes). A day
    recorded complete with the same rows and digest needs nothing: it costs its source query, no API request."""
    ledger = Ledger(settings.state_url)
    senders = await _senders(settings, ledger)
    revisit: dict[str, str] = {}
    try:
        for day in days:
            recorded = ledger.intervals.record(day.start.isoformat(), day.end.isoformat())
            if recorded is None:
                revisit[day.label] = "new"
            elif recorded[0] != "complete":
                revisit[day.label] = recorded[0]
            else:
                rows, digest = _source_digest(settings, day, senders)
                if (recorded[1].get("source_rows"), recorded[1].get("source_digest")) != (rows, f"{digest:016x}"):
                    revisit[day.label] = "changed"
    finally:
        ledger.close()
    return revisit


def _source_digest(settings: Settings, day: Interval, senders: Senders) -> tuple[int, int]:
    """The day's source rows and their digest, as an import of the day records them; reads only the source."""
    source = open_source(settings.source_url, settings.mapping, day.start, day.end, settings.source_zone,
                         settings.chunk_size)
    try:
        totals = RunTotals(day.label)
        for _, batch in transformed_chunks(source, settings, senders, day.label):
            totals.add_source(batch)
        return totals.source_rows, totals.source_digest
    finally:
        source.close()


def transformed_chunks(source: SourceStream, settings: Settings, senders: Senders,
                       label: str) -> Iterator[tuple[SourceFrames, Batch]]:
    """The interval's chunks in time order, each as the source gave it and as transformed: the one loop of the
    import, the dry run, the look-back and the audit."""
    seen = SeenIds(source.repeated_ids())
    while (frames := extract_task(source, label=f"{label}#{source.chunks + 1}")) is not None:
        yield frames, transform_task(frames, senders, settings.id_prefix, settings.source_timezone, seen,
                                     settings.text_limit, label=f"{label}#{source.chunks}")


async def _senders(settings: Settings, ledger: Ledger) -> Senders:
    """Managers by email, read with a REST client of its own (runs that send nothing open no Chats API client)."""
    rest = rest_client(settings, ledger)
    try:
        return await resolve_senders_task(rest, settings.bot_id)
    finally:
        if rest is not None:
            await rest.aclose()


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


async def _import(settings: Settings, interval: Interval, dry_run: bool, began: float) -> RunSummary:
    """extract -> transform -> load, chunk by chunk, then reconcile the whole interval."""
    source = open_source(settings.source_url, settings.mapping, interval.start, interval.end,
                         settings.source_zone, settings.chunk_size)
    ledger = Ledger(settings.state_url)
    try:
        if dry_run:
            return await _rehearse(settings, interval, source, ledger, began)
        totals = RunTotals(interval.label)
        progress = await ImportProgress.start(interval.label, source.count())
        async with open_api(settings, ledger) as api, RunClaims(ledger, settings.claim_timeout_s,
                                                                request_s=settings.timeout_s) as claims:
            api.guard(claims.check)  # no request goes out once this run's lease is gone
            await claims.hold_interval(interval)
            ledger.rejects.clear(interval.label)  # what is still bad is rejected again below
            senders = await resolve_senders_task(api.rest, settings.bot_id)
            registered = interval.start_ms
            stopped: dict[str, str] = {}  # conversations that failed: their later chunks wait for the next run
            for frames, batch in transformed_chunks(source, settings, senders, interval.label):
                chunk = f"{interval.label}#{source.chunks}"
                totals.add_source(batch)
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
                await progress.chunk_done(frames.rows_read)
            claims.advance(interval.end_ms)
            verdict = await reconcile_task(api, ledger, interval.start_ms, interval.end_ms, label=interval.label)
            summary = totals.summary(verdict, time.monotonic() - began)
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
    for _, batch in transformed_chunks(source, settings, await _senders(settings, ledger), interval.label):
        batch = own_ids(batch, ledger, register=False)
        totals.add_batch(batch)
        plan.add(batch, ledger)
    summary = totals.summary(None, time.monotonic() - began)
    summary.plan = asdict(plan)
    return summary
