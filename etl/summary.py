"""What each flow returns: an import's summary, a backfill's, a reconcile's and an audit's, for people and `--json`.

Each is a dataclass the flows fill in and the command line and the artifacts read by field; `as_dict()` is its JSON
form, the one `--json` prints and the ledger keeps. A result is read by key too (`summary["verdict"]`), as its JSON
is, so that a script written against `--json` reads a flow's return value the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


class Result:
    """A flow's result: its JSON form, its verdict, and whether that verdict is the good one."""

    GOOD: ClassVar[str] = "complete"
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)} | {"verdict"}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    @property
    def ok(self) -> bool:
        """The run did what it was asked: Completed in Prefect, exit status 0."""
        return self.verdict == self.GOOD


@dataclass
class RunSummary(Result):
    """One import of an interval: what was sent and what the read-back found."""

    interval: str
    dry_run: bool = False
    chunks: int = 0
    conversations: int = 0
    chats_created: int = 0
    contacts_created: int = 0
    contacts_matched: int = 0
    links_created: int = 0
    messages_valid: int = 0
    messages_sent: int = 0
    messages_skipped: int = 0
    messages_edited: int = 0
    messages_failed: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    replies_quoted: int = 0  # replies sent quoting the message they answer
    quotes_dropped: dict[str, int] = field(default_factory=dict)  # replies sent unquoted, by why (tasks/load/replies)
    expected: int = 0
    confirmed: int = 0
    missing: int = 0
    duplicates: int = 0
    mismatched: int = 0
    surplus: int = 0
    verdict: str = "incomplete"
    duration_s: float = 0.0
    reject_samples: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)  # a dry run's: what would be created and sent
    source_rows: int = 0  # valid and rejected, as the source held them when read
    source_digest: str = ""  # of those rows (tasks.transform.source_digest): a changed day is found by it
    lookback: list[dict[str, Any]] = field(default_factory=list)  # the earlier days read again, and what came of it
    # media URLs: presigned, sizes found, checked, and those that did not answer (the first few named)
    media: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.dry_run or self.verdict == self.GOOD

    @property
    def headline(self) -> str:
        return import_headline(self.as_dict())


def import_headline(summary: dict[str, Any]) -> str:
    """"2879 sent · 2 rejected · 0 missing · complete", with edits, failures and quarantines when there are any; of
    an import summary's JSON form, whole or in part."""
    parts = [f"{summary.get('messages_sent', 0)} sent"]
    parts += [f"{summary[key]} {word}" for key, word in (("messages_edited", "edited"), ("messages_failed", "failed"))
              if summary.get(key)]
    parts += [f"{summary.get('rejected', 0)} rejected", f"{summary.get('missing', 0)} missing"]
    if summary.get("quarantined"):
        parts.append(f"{len(summary['quarantined'])} quarantined")
    lookback = [d for d in summary.get("lookback", []) if d.get("outcome") != "unchanged"]
    if lookback:
        parts.append(f"{len(lookback)} earlier days again")
    return " · ".join([*parts, "dry run" if summary.get("dry_run") else summary.get("verdict", "incomplete")])


def quarantine_notes(quarantined: Mapping[str, str], most: int = 10) -> list[str]:
    """A line per quarantine reason (which says the contacts and the fix) with its conversations, the first `most`
    of them: what a person needs to act on it, in the plain output, `status` and the artifacts alike."""
    by_reason: dict[str, list[str]] = {}
    for conversation_id, reason in sorted(quarantined.items()):
        by_reason.setdefault(reason, []).append(conversation_id)
    return [f"{reason} — conversation{'s' if len(ids) > 1 else ''} {', '.join(ids[:most])}"
            + (f" and {len(ids) - most} more" if len(ids) > most else "") for reason, ids in by_reason.items()]


@dataclass
class BackfillSummary(Result):
    """A backfill: how many of the range's days it ran, skipped or left to other runs, and each day's outcome."""

    days: int
    ran: int
    skipped: int
    by_other_runs: int
    complete: int
    incomplete: int
    failed: int
    unplaced: int | None  # source messages no day can import; None when the mapping cannot tell
    verdict: str
    outcomes: dict[str, str]  # day label -> verdict, "failed" or "dry run"

    @property
    def headline(self) -> str:
        return (f"{self.complete} complete · {self.incomplete} incomplete · {self.failed} failed · "
                f"{self.skipped} skipped of {self.days} days")


@dataclass
class ReconcileDay(Result):
    """One day read back from amoCRM: the counts of `tasks.reconcile.Verdict`, and what a repair sent again."""

    day: str
    expected: int
    confirmed: int
    missing: int
    duplicates: int
    mismatched: int
    surplus: int
    verdict: str
    repaired: int = 0


@dataclass
class ReconcileSummary(Result):
    """A reconcile of a range, day by day."""

    days: int
    verdict: str
    missing: int
    duplicates: int
    repaired: int
    by_day: list[ReconcileDay]

    @classmethod
    def of(cls, rows: list[ReconcileDay]) -> ReconcileSummary:
        return cls(days=len(rows), verdict="complete" if all(r.ok for r in rows) else "incomplete",
                   missing=sum(r.missing for r in rows), duplicates=sum(r.duplicates for r in rows),
                   repaired=sum(r.repaired for r in rows), by_day=rows)

    @property
    def headline(self) -> str:
        return (f"{sum(r.confirmed for r in self.by_day)} confirmed · {self.missing} missing · "
                f"{sum(r.mismatched for r in self.by_day)} changed · {self.repaired} repaired · {self.verdict}")


DIFFERENCES = ("not_sent", "missing_in_amocrm", "other_content", "changed_at_source", "deleted_at_source",
               "duplicates")
"""The kinds of difference an audit finds, each a list of message ids (ours, as amoCRM knows them)."""
REPORTED_ONLY = ("deleted_at_source",)
"""Differences an audit reports and no repair undoes (amoCRM's messages are never deleted): not in the verdict."""


@dataclass
class DayAudit(Result):
    """One day audited: the source's rows, the ledger's messages by status, amoCRM's, and the differences.

    The source's rows of a day are those created on it and those created before it and edited on it (read again
    for their edit: `edited`). What became of the rows created on the day adds up:
    `created = in_amocrm + rejected + not_in_amocrm`; an edited row is counted on the day it was created.
    """

    GOOD: ClassVar[str] = "consistent"

    day: str
    source_valid: int = 0  # every row read for the day, created or edited on it
    source_rejected: int = 0
    created: int = 0  # rows created on the day, valid or not
    rejected: int = 0  # of those: rejected at the source, or refused by amoCRM for their data (api_NNN)
    in_amocrm: int = 0  # of those: shown by amoCRM
    edited: int = 0  # rows created before the day and edited on it
    ledger: dict[str, int] = field(default_factory=dict)  # sent (with confirmed), rejected, pending, failed
    amocrm: int = 0  # messages of the day amoCRM shows, those deleted at the source since included
    not_sent: list[str] = field(default_factory=list)
    missing_in_amocrm: list[str] = field(default_factory=list)
    other_content: list[str] = field(default_factory=list)
    changed_at_source: list[str] = field(default_factory=list)
    deleted_at_source: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    repaired: int = 0

    @property
    def verdict(self) -> str:  # type: ignore[override]
        return "differs" if any(getattr(self, kind) for kind in DIFFERENCES if kind not in REPORTED_ONLY) \
            else "consistent"

    @property
    def not_in_amocrm(self) -> int:
        """Rows created on the day, valid, that amoCRM does not show (not sent, or missing there)."""
        return self.created - self.rejected - self.in_amocrm

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "not_in_amocrm": self.not_in_amocrm, "verdict": self.verdict}

    def row(self) -> dict[str, Any]:
        """The day as a row of the audit's table artifact."""
        return {"day": self.day, "created": self.created, "in amoCRM": self.in_amocrm, "rejected": self.rejected,
                "not in amoCRM": self.not_in_amocrm, "edited": self.edited, "ledger sent": self.ledger.get("sent", 0),
                "ledger rejected": self.ledger.get("rejected", 0), "ledger pending": self.ledger.get("pending", 0),
                "ledger failed": self.ledger.get("failed", 0),
                **{kind.replace("_", " "): len(getattr(self, kind)) for kind in DIFFERENCES},
                "repaired": self.repaired, "verdict": self.verdict}

    def record(self, repair: bool) -> dict[str, Any]:
        """What the ledger keeps of the day's audit, for `status`: the verdict, the counts, the differences by kind."""
        return {"verdict": self.verdict, "source": self.source_valid + self.source_rejected,
                "source_rejected": self.source_rejected, "ledger": self.ledger, "amocrm": self.amocrm,
                "differences": {kind: len(getattr(self, kind)) for kind in DIFFERENCES}, "repair": repair,
                "repaired": self.repaired}


@dataclass
class AuditSummary(Result):
    """An audit of a range: the days' counts summed, the differences by kind, and each day's audit. `created`,
    `in_amocrm`, `rejected` and `edited` are as in `DayAudit`; `source` (every row read, edits included) and
    `amocrm` (every message of the range amoCRM shows) are kept for readers of the JSON."""

    GOOD: ClassVar[str] = "consistent"

    days: int
    verdict: str
    source: int
    amocrm: int
    differences: dict[str, int]
    repaired: int
    by_day: list[DayAudit]
    created: int = 0
    in_amocrm: int = 0
    rejected: int = 0
    edited: int = 0

    @classmethod
    def of(cls, audits: list[DayAudit]) -> AuditSummary:
        return cls(days=len(audits), verdict="consistent" if all(a.ok for a in audits) else "differs",
                   source=sum(a.source_valid + a.source_rejected for a in audits),
                   amocrm=sum(a.amocrm for a in audits),
                   differences={kind: sum(len(getattr(a, kind)) for a in audits) for kind in DIFFERENCES},
                   repaired=sum(a.repaired for a in audits), by_day=audits,
                   created=sum(a.created for a in audits), in_amocrm=sum(a.in_amocrm for a in audits),
                   rejected=sum(a.rejected for a in audits), edited=sum(a.edited for a in audits))

    @property
    def not_in_amocrm(self) -> int:
        return self.created - self.rejected - self.in_amocrm

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "not_in_amocrm": self.not_in_amocrm, "by_day": [a.as_dict() for a in self.by_day]}

    @property
    def headline(self) -> str:
        """What became of the rows created in the range, which adds up, then the edits of earlier rows and the
        differences: `5621 created in the source = 5550 in amoCRM + 71 rejected · 40 edited · consistent`."""
        parts = [f"{self.created} created in the source = {self.in_amocrm} in amoCRM + {self.rejected} rejected"
                 + (f" + {self.not_in_amocrm} not in amoCRM" if self.not_in_amocrm else "")]
        if self.edited:
            parts.append(f"{self.edited} edited (created earlier, counted on their own day)")
        parts += [f"{n} {kind.replace('_', ' ')}" for kind, n in self.differences.items() if n]
        return " · ".join([*parts, self.verdict])
