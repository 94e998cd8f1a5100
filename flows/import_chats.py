"""import_chats: one data interval from the source database into amoCRM chats, then read back and verified."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from amojo.errors import FATAL
from etl.api import open_api
from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import ConfigurationError, load_settings
from tasks.extract import extract_task
from tasks.load import load_task, resolve_senders_task
from tasks.reconcile import reconcile_task
from tasks.report import publish_artifacts, summarise
from tasks.transform import Senders, transform_task


def _run_name() -> str:
    params = flow_run.parameters
    return f"import-{params.get('start') or 'scheduled'}..{params.get('end') or ''}".rstrip(".")


def data_interval(start: date | None, end: date | None, timezone: str) -> Interval:
    """The dates given, or the day before the run's scheduled time (a late or retried nightly run still
    imports its own day)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)
    if start is None and end is None:
        scheduled = flow_run.scheduled_start_time
        return Interval.day_before(scheduled if scheduled else datetime.now(UTC), zone)
    if start is None or end is None:
        raise ConfigurationError("give both start and end, or neither (the day before the scheduled time)")
    return Interval.days(start, end, zone)


@flow(name="import-chats", flow_run_name=_run_name)
async def import_chats(start: date | None = None, end: date | None = None, dry_run: bool = False
                       ) -> dict[str, Any] | State:
    """Import the messages of [start, end) (days in AMOJO_ETL_TIMEZONE; end exclusive)."""
    logger = get_run_logger()
    began = time.monotonic()
    try:
        settings = load_settings()
        interval = data_interval(start, end, settings.timezone)
        ledger = Ledger(settings.state_url)
    except (ConfigurationError, ValueError) as exc:
        logger.error("configuration: %s", exc)
        return Failed(message=f"configuration error: {exc}")
    label = interval.label
    try:
        frames = extract_task(settings, interval.start, interval.end, label=label)
        if dry_run:
            transformed = transform_task(frames, Senders({}, settings.bot_id), settings.id_prefix,
                                         settings.source_timezone, label=label)
            summary = summarise(label, transformed, None, None, time.monotonic() - began, dry_run=True)
        else:
            async with open_api(settings, ledger) as api:
                senders = await resolve_senders_task(api, settings.bot_id)
                transformed = transform_task(frames, senders, settings.id_prefix, settings.source_timezone,
                                             label=label)
                ledger.save_rejects(transformed.rejects.to_dict("records"), interval.start.isoformat())
                report = await load_task(transformed, api, ledger, settings.concurrency, label=label)
                verdict = await reconcile_task(transformed, api, ledger, interval.start_ms,
                                               set(report.quarantined), label=label)
            summary = summarise(label, transformed, report, verdict, time.monotonic() - began)
            ledger.save_interval(interval.start.isoformat(), interval.end.isoformat(), summary.verdict,
                                 summary.as_dict())
        await publish_artifacts(summary, transformed.rejects)
        logger.info("import %s: %s sent, %s skipped, %s rejected, verdict %s", label, summary.messages_sent,
                    summary.messages_skipped, summary.rejected, summary.verdict)
        return summary.as_dict()
    except (ConfigurationError, *FATAL) as exc:
        # Expected ways to fail: say what to fix, without a traceback, and stop the run.
        logger.error("%s", exc)
        return Failed(message=str(exc))
    finally:
        ledger.close()
