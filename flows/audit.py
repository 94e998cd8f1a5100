"""audit: does amoCRM hold what the source database holds? Source, ledger and amoCRM compared day by day.

Per day, the source's rows created on it and what became of them (in amoCRM, rejected, or not there), the rows
created earlier and edited on it (each counted on the day it was created), the ledger's messages by status, and
the differences by message id: in the source but not sent; sent but missing in amoCRM; in amoCRM with other content;
changed at the source since it was sent; in amoCRM, or registered and never sent, but no longer in the source
(deleted at the source: reported, never deleted in amoCRM). With `repair`, what is missing is sent and what differs
is edited, through the same exactly-once path as an import (an import of the day). An audit writes nothing to
amoCRM without `repair`.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.states import State

from etl.api import open_api
from etl.intervals import Interval
from etl.ledger import DONE, MOVABLE, Ledger, MessageStatus
from etl.settings import Settings
from etl.summary import DIFFERENCES, AuditSummary, DayAudit
from tasks.interval import open_interval, transformed_chunks
from tasks.load import own_ids, resolve_senders_task
from tasks.reconcile import NOT_EXPECTED, reconcile_task
from tasks.report import artifact_key
from tasks.transform import Senders

from .day_runs import repair_day
from .outcome import FlowRun, days_of, final_state, run_flow

SHOWN = 20
"""Message ids shown per kind in the artifact; --json has them all."""
DIFFERS = "Differs"


@flow(name="audit", flow_run_name="audit-{start}..{end}")
async def audit(start: date, end: date, repair: bool = False) -> AuditSummary | State:
    """Compare source, ledger and amoCRM for each day of [start, end); with repair, send what is missing and edit
    what differs.

    Args:
        start: first day audited (inclusive), in AMOJO_ETL_TIMEZONE.
        end: the day after the last one (exclusive): start 2026-10-01, end 2026-11-01 is October.
        repair: send what amoCRM lacks and edit what differs, through the same exactly-once path as an import;
            messages deleted at the source are reported, never deleted in amoCRM.
    """
    async def body(run: FlowRun) -> State:
        settings, ledger = run.settings, run.ledger
        audits: list[DayAudit] = []
        async with open_api(settings, ledger) as api:
            senders = await resolve_senders_task(api.rest, settings.bot_id)
            for day in run.days:
                found = await _audit_day(settings, ledger, api, senders, day)
                if repair and not found.ok:
                    found = await _repair_day(settings, ledger, api, senders, day, found)
                ledger.audits.save(day.start.isoformat(), day.end.isoformat(), found.record(repair))
                audits.append(found)
        summary = AuditSummary.of(audits)
        await _publish(audits, start, end, settings)
        if not summary.ok:
            get_run_logger().warning("audit %s..%s: %s", start, end, summary.headline)
        return final_state(summary, summary.headline, bad=DIFFERS)

    return await run_flow(body, days_of(start, end))


async def _audit_day(settings: Settings, ledger: Ledger, api: Any, senders: Senders, day: Interval) -> DayAudit:
    """One day's three views and their differences. Reads the source, the ledger and the day's chat histories."""
    found = DayAudit(day.label)
    source: dict[str, int] = {}  # msgid -> content hash, of the day's valid rows
    created: set[str] = set()  # of those, the ones created on the day (the rest were edited on it)
    edited_rows = 0  # rows read for their edit on the day, valid or not
    stream = open_interval(settings, day)
    try:
        for frames, batch in transformed_chunks(stream, settings, senders, day.label):
            batch = own_ids(batch, ledger, register=False)
            source.update(zip(batch.messages["msgid"], batch.messages["content_hash"].astype("int64"), strict=True))
            created.update(batch.messages["msgid"][batch.messages["msec"] >= day.start_ms])
            edited_rows += int((frames.messages["created_ms"] < day.start_ms).sum())
            found.source_rejected += len(batch.rejects)
    finally:
        stream.close()
    found.source_valid = len(source)
    found.edited = edited_rows
    found.created = found.source_valid + found.source_rejected - edited_rows

    states = ledger.messages.states(source)
    for msgid, content_hash in source.items():
        state = states.get(msgid)
        status = state.status if state else None
        if status in DONE:
            found.ledger["sent"] = found.ledger.get("sent", 0) + 1
            if int(state.content_hash) != content_hash:
                found.changed_at_source.append(msgid)
        elif status == MessageStatus.REJECTED:  # refused by amoCRM for its data
            found.ledger["rejected"] = found.ledger.get("rejected", 0) + 1
            found.rejected += int(msgid in created)
        else:
            # The audit's ledger counts: sent, rejected, and the unsent as failed or pending.
            kind = "failed" if status == MessageStatus.FAILED else "pending"
            found.ledger[kind] = found.ledger.get(kind, 0) + 1
            found.not_sent.append(msgid)
    found.rejected += found.source_rejected - (edited_rows - (len(source) - len(created)))  # created on the day
    conversations = [c for c, _ in ledger.messages.conversations_between(day.start_ms, day.end_ms)]
    held = ledger.messages.between(conversations, day.start_ms, day.end_ms)
    # Sent, or never sent (an import of the day no longer expects these; one not run since still has them pending).
    found.deleted_at_source = sorted(row.msgid for row in held if (row.status in DONE or row.status in MOVABLE)
                                     and row.msgid not in source)

    verdict = await reconcile_task(api, ledger, day.start_ms, day.end_ms, label=day.label)
    gone = set(found.deleted_at_source)
    expected = {row.msgid for row in held if row.status not in NOT_EXPECTED} - gone  # what the read-back checked
    found.in_amocrm = len((created & expected) - set(verdict.missing))
    found.missing_in_amocrm = sorted(set(verdict.missing) - gone)
    found.other_content = sorted(set(verdict.mismatched) - set(found.changed_at_source))
    found.duplicates = sorted(verdict.duplicates)
    found.amocrm = verdict.expected - len(verdict.missing)
    return found


async def _repair_day(settings: Settings, ledger: Ledger, api: Any, senders: Senders, day: Interval,
                      found: DayAudit) -> DayAudit:
    """Send what is missing and edit what differs (`repair_day`, as reconcile does), then audit the day again."""
    redone = await repair_day(settings, ledger, day, found.missing_in_amocrm, found.other_content)
    again = await _audit_day(settings, ledger, api, senders, day)
    again.repaired = redone.messages_sent + redone.messages_edited
    return again


async def _publish(audits: list[DayAudit], start: date, end: date, settings: Settings) -> None:
    """A table per day (three counts, the differences, the verdict) and the first differences by message id."""
    await acreate_table_artifact([a.row() for a in audits], key=artifact_key("audit-days", settings),
                                 description=f"Audit {start}..{end}: source, ledger and amoCRM per day")
    lines = [f"## Audit {start}..{end}", ""]
    for a in audits:
        kinds = [(kind, getattr(a, kind)) for kind in DIFFERENCES if getattr(a, kind)]
        if not kinds:
            continue
        lines.append(f"### {a.day}: {a.verdict}")
        for kind, ids in kinds:
            shown = ", ".join(f"`{i}`" for i in ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN
                                                                 else "")
            lines.append(f"- {kind.replace('_', ' ')} ({len(ids)}): {shown}")
        lines.append("")
    if len(lines) == 2:
        lines.append("Every day is consistent: amoCRM holds what the source holds.")
    await acreate_markdown_artifact("\n".join(lines), key=artifact_key("audit-differences", settings),
                                    description=f"Audit {start}..{end}: the first differences by message id")
