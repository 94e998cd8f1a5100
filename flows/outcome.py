"""How a flow run begins and ends, the same for every flow.

It begins with `run_flow`: the settings, the range of days, the ledger (opened when first used), and an expected
failure turned into a Failed state that says what to fix. It ends with `final_state`, which says the outcome at a
glance: Completed when the verdict is the good one, otherwise a Failed state named "Incomplete" (red in the runs list,
and what an automation matches on). The state's message is the headline and its data the result, either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TypeVar

from prefect import get_run_logger, tags
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from etl.claims import ClaimLost
from etl.errors import EtlError, classify
from etl.intervals import Interval, check_range
from etl.ledger import Ledger
from etl.settings import ConfigurationError, Settings, load_settings, with_secret_blocks
from etl.summary import Result, RunSummary

INCOMPLETE = "Incomplete"
EVENT_COUNTS = ("messages_sent", "messages_edited", "messages_failed", "rejected", "expected", "confirmed", "missing",
                "duplicates", "mismatched")

R = TypeVar("R", bound=Result | State)


@dataclass
class FlowRun:
    """What a flow's body works with: its settings, its interval, and the ledger, opened when first used."""

    settings: Settings
    interval: Interval
    _ledger: Ledger | None = field(default=None, repr=False)

    @property
    def days(self) -> list[Interval]:
        return self.interval.daily()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.state_url)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()


def expected_failure(exc: BaseException) -> Exception | None:
    """`exc` when it is an expected way for a run to fail (one line, no traceback), else None: one of ours, or the
    loss of the run's claims to another run."""
    error: EtlError | None = classify(exc)
    return error or (exc if isinstance(exc, ClaimLost) else None)


async def run_flow(body: Callable[[FlowRun], Awaitable[R]], interval: Callable[[Settings], Interval], *,
                   api: bool = True, secret_blocks: bool = True) -> R | State:
    """Run a flow's `body` for the `interval` chosen from the settings (`days_of`): the settings (with the secrets
    of Prefect blocks; with `api`, the APIs' must be set), the interval, the ledger closed at the end. A
    misconfiguration, or an expected failure of the body, ends the run Failed with its one-line message and the error
    as the state's data, so that the command line exits with its status (2: configuration, 1: the run)."""
    logger = get_run_logger()
    try:
        settings = load_settings()
        if secret_blocks:
            settings = with_secret_blocks(settings)
        if api:
            settings.require_api()
        chosen = interval(settings)
    except ConfigurationError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    run = FlowRun(settings, chosen)
    try:
        return await body(run)
    except Exception as exc:
        if (error := expected_failure(exc)) is None:
            raise
        logger.error("%s", error)
        return Failed(message=str(error), data=error)
    finally:
        run.close()


def days_of(start: date, end: date) -> Callable[[Settings], Interval]:
    """The days [start, end) in AMOJO_ETL_TIMEZONE, checked by the one rule every command applies (`check_range`)."""
    def chosen(settings: Settings) -> Interval:
        check_range(start, end, datetime.now(settings.zone).date())
        return Interval.days(start, end, settings.zone)

    return chosen


def final_state(summary: Result, headline: str, bad: str = INCOMPLETE) -> State:
    """Completed when the result is good (`Result.ok`: its verdict, or a dry run), else Failed named `bad`; the
    result is the state's data."""
    if summary.ok:
        return Completed(message=headline, data=summary)
    return Failed(name=bad, message=headline, data=summary)


async def summary_of(state: State) -> Result | None:
    """The result a run ended with, complete or not; None when it failed before it had one."""
    result = await state.aresult(raise_on_failure=False)
    return result if isinstance(result, Result) else None


def emit_import_event(settings: Settings, summary: RunSummary) -> None:
    """`amojo-etl.import.complete` or `amojo-etl.import.incomplete`, about the channel's interval, with the counts:
    what automations and the event feed see (the flow run is related to it by Prefect)."""
    emit_event(
        event=f"amojo-etl.import.{'dry-run' if summary.dry_run else summary.verdict}",
        resource={"prefect.resource.id": f"amojo-etl.channel.{settings.channel_id}.interval.{summary.interval}",
                  "prefect.resource.name": f"import {summary.interval}",
                  "amojo-etl.verdict": summary.verdict},
        payload={"interval": summary.interval, "verdict": summary.verdict, "headline": summary.headline,
                 "rejects_by_reason": summary.rejects_by_reason,
                 **{key: getattr(summary, key) for key in EVENT_COUNTS}},
    )


@contextmanager
def child_run_tags(settings: Settings) -> Iterator[None]:
    """The day runs a run starts inside this block carry its tags (a deployment's `amojo-etl`, a command line's
    `cli`, …) and the channel's and account's, so that they are filtered as it is. Prefect gives a nested flow run
    only the tags of the `tags` context, which holds a command line's tags but not a deployment's."""
    with tags(*flow_run.tags, *settings.account_tags):
        yield
