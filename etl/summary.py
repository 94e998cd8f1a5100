"""The run summary: what one import did and what the read-back found, for people and for `--json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSummary:
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_headline(summary: dict[str, Any]) -> str:
    """"2879 sent · 2 rejected · 0 missing · complete", with edits, failures and quarantines when there are any."""
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
