"""Report: the run's totals, chunk by chunk, its summary, and the artifacts a Prefect user reads it in."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

import pandas as pd
from prefect import task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.urls import url_for

from etl.settings import Settings, load_settings
from etl.summary import RunSummary, quarantine_notes

from .load import LoadReport
from .reconcile import Verdict
from .transform import NOT_YET, Batch, source_digest

REJECT_SAMPLES = 20


def artifact_key(kind: str, settings: Settings | None = None) -> str:
    """`import-summary-mycompany`: the artifact's kind and the account it is about (`Settings.account`), so that one
    Prefect server serving several accounts keeps one history per account and key. Prefect keys hold lowercase
    letters, digits and dashes only."""
    account = (settings or load_settings()).account or ""
    slug = re.sub(r"[^a-z0-9]+", "-", account.lower()).strip("-")
    return f"{kind}-{slug}" if slug else kind


@dataclass
class RunTotals:
    """What the chunks of one run add up to; memory stays flat however many chunks there are."""

    label: str
    dry_run: bool = False
    chunks: int = 0
    conversations: int = 0
    messages_valid: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    reject_samples: list[dict] = field(default_factory=list)
    load: LoadReport = field(default_factory=LoadReport)
    source_rows: int = 0
    source_digest: int = 0

    def add_source(self, batch: Batch) -> None:
        """Fold a chunk as transformed (before the ledger owns its ids) into the interval's source digest."""
        rows, digest = source_digest(batch)
        self.source_rows += rows
        self.source_digest = (self.source_digest + digest) % 2**64

    def add_batch(self, batch: Batch) -> None:
        self.chunks += 1
        self.conversations += len(batch.conversations)
        self.messages_valid += batch.message_count
        self.rejects_by_reason.update(batch.rejects["reason"].value_counts().to_dict())
        self.warnings.update(batch.warnings)
        room = REJECT_SAMPLES - len(self.reject_samples)
        if room > 0 and len(batch.rejects):
            self.reject_samples += batch.rejects.head(room).to_dict("records")

    def summary(self, verdict: Verdict | None, duration_s: float, conversations: int | None = None) -> RunSummary:
        """Source rejects and API rejects together; the verdict from the read-back (none on a dry run)."""
        load = self.load
        by_reason = Counter(self.rejects_by_reason)
        by_reason.update(load.api_rejected)
        summary = RunSummary(
            interval=self.label,
            dry_run=self.dry_run,
            chunks=self.chunks,
            conversations=conversations if conversations is not None else self.conversations,
            chats_created=load.chats_created,
            contacts_created=load.contacts_created,
            contacts_matched=load.contacts_matched,
            links_created=load.links_created,
            messages_valid=self.messages_valid,
            messages_sent=load.messages_sent,
            messages_skipped=load.messages_skipped,
            messages_edited=load.messages_edited,
            messages_failed=load.failed,
            rejected=sum(by_reason.values()),
            rejects_by_reason={str(k): int(v) for k, v in sorted(by_reason.items())},
            warnings={str(k): int(v) for k, v in sorted(self.warnings.items()) if v},
            quarantined=dict(load.quarantined),
            replies_quoted=load.replies_quoted,
            quotes_dropped={str(k): int(v) for k, v in sorted(load.quotes_dropped.items()) if v},
            duration_s=round(duration_s, 2),
            reject_samples=self.reject_samples,
            source_rows=self.source_rows,
            source_digest=f"{self.source_digest:016x}",
        )
        if verdict is not None:
            summary.expected = verdict.expected
            summary.confirmed = verdict.confirmed
            summary.missing = len(verdict.missing)
            summary.duplicates = len(verdict.duplicates)
            summary.mismatched = len(verdict.mismatched)
            summary.surplus = len(verdict.surplus)
            # Rows held back as not yet due leave the interval to a later run, however complete the read-back.
            summary.verdict = "incomplete" if NOT_YET & set(by_reason) else verdict.verdict
        return summary


class ImportProgress:
    """The `import-progress` artifact: source rows handled out of the interval's, moved chunk by chunk and, while
    a chunk is being sent, at most every two seconds (each update is a round trip to the Prefect server)."""

    EVERY_S = 2.0

    def __init__(self, artifact_id: UUID, total: int) -> None:
        self._id = artifact_id
        self._total = max(1, total)
        self._done = 0
        self._began = self._shown = time.monotonic()

    @classmethod
    async def start(cls, label: str, total: int) -> ImportProgress:
        artifact_id = await acreate_progress_artifact(0.0, key=artifact_key("import-progress"),
                                                      description=f"Source rows of {label} sent or rejected")
        return cls(artifact_id, total)

    async def sending(self, sent_in_chunk: int) -> None:
        if time.monotonic() - self._shown >= self.EVERY_S:
            self._shown = time.monotonic()
            await self._show(min(self._total - 1, self._done + sent_in_chunk))

    async def chunk_done(self, rows: int) -> None:
        self._done += rows
        await self._show(min(self._total, self._done))

    async def _show(self, done: int) -> None:
        await aupdate_progress_artifact(self._id, round(100.0 * done / self._total, 1),
                                        description=progress_line(done, self._total, time.monotonic() - self._began))


def progress_line(done: int, total: int, seconds: float) -> str:
    """"12,000 of 50,000 source rows · 600 rows/s · about 1 min 4 s left": what a person reads on the card."""
    rate = done / seconds if seconds > 0 else 0.0
    line = f"{done:,} of {total:,} source rows"
    if rate >= 0.1:
        line += f" · {rate:,.0f} rows/s"
        if done < total:
            left = math.ceil((total - done) / rate)
            line += f" · about {left // 60} min {left % 60} s left" if left >= 60 else f" · about {left} s left"
    return line


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        # A backslash first, so that one before a pipe cannot undo the pipe's escape and split the row.
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


REJECT_FIELDS = ("conversation_id", "created_at", "direction", "manager_id", "type", "text")
"""The source fields a person needs to find a rejected row and see what was wrong with it."""
TEXT_SHOWN = 60


def rejects_markdown(summary: RunSummary) -> str:
    """The rejects of a run: counts by reason, then the first rows as a table of their source key, reason, detail
    and the fields that matter (not the raw row), and the command that writes them all to a CSV file."""
    if not summary.rejected:
        return f"Nothing rejected in {summary.interval}: every source row was valid.\n"
    reasons = pd.DataFrame(list(summary.rejects_by_reason.items()), columns=["reason", "rows"])
    lines = [f"## {summary.rejected} rows not sent, {summary.interval}", "", _markdown_table(reasons), ""]
    shown = [_reject_row(r) for r in summary.reject_samples]
    if shown:
        title = f"All {len(shown)}" if len(shown) == summary.rejected else \
            f"The first {len(shown)} of {summary.rejected}"
        lines += [f"### {title}", "", _markdown_table(pd.DataFrame(shown)), ""]
    command = f"`amojo-etl rejects --interval {summary.interval} --csv rejects.csv`"
    lines.append(f"A dry run keeps no rejects: once the interval is imported, {command} writes every one of them."
                 if summary.dry_run else
                 f"Every one of them, with all its source fields: {command} (with this run's `AMOJO_ETL_STATE_URL`).")
    return "\n".join(lines) + "\n"


def _reject_row(reject: dict) -> dict[str, str]:
    try:
        row = json.loads(reject.get("row") or "{}")
    except (TypeError, ValueError):
        row = {}
    fields = {name.replace("_", " "): _shown(row.get(name)) for name in REJECT_FIELDS}
    return {"source key": _plain(str(reject.get("source_key", ""))), "reason": str(reject.get("reason", "")),
            "detail": _plain(str(reject.get("detail") or "")), **fields}


MARKDOWN = frozenset("\\`*_[]<>!#~&")
"""Characters that markdown (or the HTML inside it) would read as markup; a pipe is the table cell's to escape."""


def _plain(text: str) -> str:
    """Text from the source shown as itself: a client's message must not render as markdown in the operator's UI
    (an image loaded from elsewhere, a link, a backslash that undoes the escape of a pipe). Entities, not
    backslashes: a cell's own escaping doubles backslashes."""
    return "".join(f"&#{ord(c)};" if c in MARKDOWN else c for c in text)


def _shown(value: object) -> str:
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return _plain(text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN - 1] + "…")


@task(name="publish-artifacts", cache_policy=NO_CACHE)
async def publish_artifacts(summary: RunSummary) -> None:
    """The summary table, the rejects with their reasons, and the verdict, in the flow run's artifacts."""
    rows = [{"what": k.replace("_", " "), "count": v} for k, v in summary.as_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)]
    headline = summary.headline
    settings = load_settings()
    await acreate_table_artifact(rows, key=artifact_key("import-summary", settings),
                                 description=f"Import {summary.interval}: {headline}")
    await acreate_markdown_artifact(
        rejects_markdown(summary), key=artifact_key("import-rejects", settings),
        description=f"Rows of {summary.interval} not sent: {summary.rejected}"
                    + "".join(f" · {count} {reason}" for reason, count in summary.rejects_by_reason.items()),
    )
    await acreate_markdown_artifact(
        verdict_markdown(summary),
        key=artifact_key("import-verdict", settings),
        description=f"Read-back of {summary.interval}: {summary.confirmed} of {summary.expected} confirmed, "
                    f"{summary.missing} missing · {summary.verdict}",
    )


def verdict_markdown(summary: RunSummary) -> str:
    """The read-back's verdict and its counts; each quarantine with its contacts and the fix."""
    return (
        f"## Reconciliation: **{summary.verdict}**\n\n"
        f"- confirmed in amoCRM: {summary.confirmed} of {summary.expected}\n"
        f"- missing: {summary.missing}\n- duplicates: {summary.duplicates}\n"
        f"- content mismatches: {summary.mismatched}\n- quarantined conversations: {len(summary.quarantined)}\n"
        f"- surplus (in amoCRM with an id of ours the ledger does not know): {summary.surplus}\n"
        f"- warnings: {json.dumps(summary.warnings, ensure_ascii=False)}\n"
        + "".join(f"\n**Quarantined** (none of its messages is sent until this is fixed): {_plain(line)}\n"
                  for line in quarantine_notes(summary.quarantined))
    )


def run_link(flow_run_id: object) -> str:
    """A flow run as a link to its page in the Prefect UI (PREFECT_UI_URL, else derived from PREFECT_API_URL), or
    its id where no UI is known (a temporary server's runs have no page that outlives the command)."""
    if not flow_run_id:
        return ""
    url = url_for("flow-run", obj_id=str(flow_run_id))
    return f"[open]({url})" if url else f"`{flow_run_id}`"


def backfill_days_markdown(title: str, days: list[dict]) -> str:
    """One row per day: its outcome, sent, rejected and missing messages, and a link to its import run."""
    frame = pd.DataFrame([{"day": d["day"], "outcome": d["outcome"],
                           **{k: "" if d.get(k) is None else d[k] for k in ("sent", "rejected", "missing")},
                           "run": run_link(d.get("run"))} for d in days],
                         columns=["day", "outcome", "sent", "rejected", "missing", "run"])
    return f"## {title}\n\n{_markdown_table(frame)}\n"
