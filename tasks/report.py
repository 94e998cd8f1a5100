"""Report: one run's summary from its stages, and the artifacts a Prefect user reads it in."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from etl.summary import RunSummary

from .load import LoadReport
from .reconcile import Verdict
from .transform import Transformed

REJECT_SAMPLES = 20


def summarise(label: str, transformed: Transformed, report: LoadReport | None, verdict: Verdict | None,
              duration_s: float, dry_run: bool = False) -> RunSummary:
    """Source rejects and API rejects together; the verdict from the read-back (none on a dry run)."""
    report = report or LoadReport()
    by_reason = transformed.rejects["reason"].value_counts().to_dict() if len(transformed.rejects) else {}
    for reason, count in report.api_rejected.items():
        by_reason[reason] = by_reason.get(reason, 0) + count
    summary = RunSummary(
        interval=label,
        dry_run=dry_run,
        conversations=len(transformed.conversations),
        chats_created=report.chats_created,
        contacts_created=report.contacts_created,
        contacts_matched=report.contacts_matched,
        links_created=report.links_created,
        messages_valid=transformed.message_count,
        messages_sent=report.messages_sent,
        messages_skipped=report.messages_skipped,
        messages_edited=report.messages_edited,
        messages_failed=report.failed,
        rejected=sum(by_reason.values()),
        rejects_by_reason={str(k): int(v) for k, v in sorted(by_reason.items())},
        quarantined=dict(report.quarantined),
        duration_s=round(duration_s, 2),
        reject_samples=transformed.rejects.head(REJECT_SAMPLES).to_dict("records"),
    )
    if verdict is not None:
        summary.confirmed = verdict.confirmed
        summary.missing = len(verdict.missing)
        summary.duplicates = len(verdict.duplicates)
        summary.mismatched = len(verdict.mismatched)
        summary.verdict = verdict.verdict
    return summary


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


@task(name="publish-artifacts", cache_policy=NO_CACHE)
async def publish_artifacts(summary: RunSummary, rejects: pd.DataFrame) -> None:
    """The summary table, the rejects with their reasons, and the verdict, in the flow run's artifacts."""
    rows = [{"what": k.replace("_", " "), "count": v} for k, v in summary.as_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)]
    await acreate_table_artifact(rows, key="import-summary", description=f"Import {summary.interval}")
    reasons = "\n".join(f"| {reason} | {count} |" for reason, count in summary.rejects_by_reason.items())
    first = _markdown_table(rejects.head(REJECT_SAMPLES)) if len(rejects) else "_none_"
    await acreate_markdown_artifact(
        f"## Rejected rows, {summary.interval}\n\n| reason | rows |\n|---|---|\n{reasons}\n\n"
        f"### First {REJECT_SAMPLES}\n\n{first}\n",
        key="import-rejects",
        description="Rows that were not sent, with the reason",
    )
    await acreate_markdown_artifact(
        f"## Reconciliation: **{summary.verdict}**\n\n"
        f"- confirmed in amoCRM: {summary.confirmed} of {summary.messages_valid}\n"
        f"- missing: {summary.missing}\n- duplicates: {summary.duplicates}\n"
        f"- content mismatches: {summary.mismatched}\n- quarantined conversations: {len(summary.quarantined)}\n",
        key="import-verdict",
        description="What the chat history read-back found",
    )
