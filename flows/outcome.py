"""A run's final state says its outcome at a glance: Completed when the read-back found everything, otherwise a
Failed state named "Incomplete" (red in the runs list, and what an automation matches on). The state's message is
the headline and its data the summary, either way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import tags
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from etl.settings import Settings
from etl.summary import import_headline

INCOMPLETE = "Incomplete"
EVENT_COUNTS = ("messages_sent", "messages_edited", "messages_failed", "rejected", "expected", "confirmed", "missing",
                "duplicates", "mismatched")


def final_state(summary: dict[str, Any], headline: str, good: str = "complete", bad: str = INCOMPLETE) -> State:
    """Completed when the verdict is `good` (or on a dry run), else Failed named `bad`; the summary is the data."""
    if summary.get("dry_run") or summary.get("verdict") == good:
        return Completed(message=headline, data=summary)
    return Failed(name=bad, message=headline, data=summary)


async def summary_of(state: State) -> dict[str, Any] | None:
    """The summary a run ended with, complete or not; None when it failed before it had one."""
    result = await state.aresult(raise_on_failure=False)
    return result if isinstance(result, dict) else None


def emit_import_event(settings: Settings, summary: dict[str, Any]) -> None:
    """`amojo-etl.import.complete` or `amojo-etl.import.incomplete`, about the channel's interval, with the counts:
    what automations and the event feed see (the flow run is related to it by Prefect)."""
    emit_event(
        event=f"amojo-etl.import.{'dry-run' if summary.get('dry_run') else summary.get('verdict', 'incomplete')}",
        resource={"prefect.resource.id": f"amojo-etl.channel.{settings.channel_id}.interval.{summary['interval']}",
                  "prefect.resource.name": f"import {summary['interval']}",
                  "amojo-etl.verdict": str(summary.get("verdict"))},
        payload={"interval": summary["interval"], "verdict": summary.get("verdict"),
                 "headline": import_headline(summary), "rejects_by_reason": summary.get("rejects_by_reason", {}),
                 **{key: summary.get(key, 0) for key in EVENT_COUNTS}},
    )


@contextmanager
def child_run_tags(settings: Settings) -> Iterator[None]:
    """The day runs a run starts inside this block carry its tags (a deployment's `amojo-etl`, a command line's
    `cli`, …) and the channel's and account's, so that they are filtered as it is. Prefect gives a nested flow run
    only the tags of the `tags` context, which holds a command line's tags but not a deployment's."""
    with tags(*flow_run.tags, *settings.account_tags):
        yield
