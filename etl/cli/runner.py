"""The local Prefect runner: the checks made before Prefect starts, the line saying where a flow runs, and the run
itself, as a deployment would run it, with expected failures logged without their traceback."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ..errors import EtlError, RunError, classify, redact
from ..intervals import check_range
from ..settings import ConfigurationError, Settings, load_settings
from ..summary import Result
from .app import OPTIONS
from .render import note

# Prefect's temporary server records telemetry in its SQLite file at start, racing the first flow run for the
# lock ("database is locked" tracebacks); a CLI run has no use for it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Its first start on a machine builds its database: 29 s measured here on 2 busy cores, past Prefect's 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"
"""How Prefect's temporary server says it did not start in time (a RuntimeError, prefect/server/api/server.py)."""


def _preflight(api: bool = True, days: tuple[date, date] | None = None) -> Settings:
    """Every check that needs no Prefect, before Prefect starts: the settings, the range, the source and its
    queries, the ledger, one request to each API (without retries). A failure raises one of `etl.errors`."""
    from ..api import check_api
    from ..ledger import Ledger
    from ..source import check_source

    settings = load_settings()
    if days is not None:
        check_range(*days, datetime.now(settings.zone).date())
    if api:
        settings.require_api()
    check_source(settings.source_url, settings.mapping, settings.mapping_parameters)
    Ledger(settings.state_url).close()
    asyncio.run(check_api(settings, chats=api))
    return settings


class _PlainExpectedErrors(logging.Filter):
    """Drops the traceback from a log record of an expected failure: Prefect logs a failed task's exception with
    it; the message (which names the setting) stays. An interruption (SIGTERM as Prefect raises it, wherever it
    lands: asyncio logs one that broke a socket read) is no defect either: the command ends with its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (classify(error) is not None or not isinstance(error, Exception)):
            record.exc_info = None
            record.exc_text = None
        return True


def _plain_prefect_logs() -> None:
    """Put `_PlainExpectedErrors` on every log handler Prefect has set up (not with --debug)."""
    if OPTIONS.debug:
        return
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for handler in {handler for logger in loggers for handler in logger.handlers}:
        if not any(isinstance(f, _PlainExpectedErrors) for f in handler.filters):
            handler.addFilter(_PlainExpectedErrors())


def _run(flow: Any, **parameters: Any) -> tuple[Result | None, str | None]:
    """Run a flow here, as a deployment would; (result, None) when it finished, (None, reason) when it failed.
    An expected failure inside the run (its state's data) is raised, for the command's report."""
    from prefect import tags
    from prefect.exceptions import TerminationSignal

    _announce_prefect()
    _plain_prefect_logs()
    previous = signal.signal(signal.SIGTERM, _stopped)
    unraisable, sys.unraisablehook = sys.unraisablehook, _signal_again(sys.unraisablehook, TerminationSignal)
    try:
        with tags(*run_tags(load_settings())):
            state = asyncio.run(flow(**parameters, return_state=True))
    except RuntimeError as exc:
        if not str(exc).startswith(EPHEMERAL_TIMEOUT):
            raise
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
        raise RunError(f"Prefect's temporary server did not start within {timeout} s "
                       "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): raise it, or run a Prefect server and "
                       "set PREFECT_API_URL (see README, Running it with Prefect)") from None
    except TerminationSignal:  # SIGTERM that Prefect's handler raised outside the flow's code (the event loop's)
        raise RunError(STOPPED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = unraisable
    if state.is_failed() or state.is_crashed():
        try:
            outcome = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no result kept: the message is all there is
            outcome = None
        if isinstance(outcome, EtlError):
            raise outcome
        if isinstance(outcome, Result):
            return outcome, None  # a run that finished incomplete (its state is Failed, named Incomplete)
        return None, state.message or "the run failed"
    return state.result(), None


STOPPED = ("the run was stopped by SIGTERM before it finished: run the same command again; it goes on from what the "
           "ledger recorded, and nothing is sent twice")


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM (a service manager or container runtime stopping the command): the run ends as a failed one, in one
    line. During a flow Prefect marks its run Crashed first, then passes the signal on to this handler."""
    raise RunError(STOPPED)


def _signal_again(hook: Callable[[Any], object], termination: type[BaseException]) -> Callable[[Any], object]:
    """An unraisable-exception hook that sends SIGTERM again when the exception a SIGTERM handler raised landed in
    a finalizer (`__del__`), where Python prints and drops it: delivered again, it lands where it stops the run,
    instead of the run going on to its end and exiting 0."""

    def unraisable(args: Any) -> object:
        error = args.exc_value
        if isinstance(error, termination) or (isinstance(error, RunError) and str(error) == STOPPED):
            os.kill(os.getpid(), signal.SIGTERM)
            return None
        return hook(args)

    return unraisable


def run_tags(settings: Settings) -> list[str]:
    """The tags of a run started here: beside the deployments' `amojo-etl`, where it came from and for which channel
    and account, so that a server serving several accounts can filter their runs apart."""
    return ["amojo-etl", "cli", *settings.account_tags]


def _announce_prefect() -> None:
    """One line on where the flow runs: the Prefect server of PREFECT_API_URL (which must answer), or a temporary
    one, whose first start on this machine builds its database (tens of seconds: say so rather than wait)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    current = get_current_settings()
    if current.api.url:
        shown = redact(current.api.url)
        with get_client(sync_client=True) as client:  # Prefect's own client: PREFECT_API_KEY too, for Cloud
            unhealthy = client.api_healthcheck()
        if unhealthy is not None:
            raise ConfigurationError(f"the Prefect server at PREFECT_API_URL ({shown}) does not answer "
                                     f"({type(unhealthy).__name__}): start it (prefect server start), or unset "
                                     "PREFECT_API_URL to run on a temporary server")
        note(f"running on the Prefect server at {shown} (PREFECT_API_URL)")
        return
    database = current.server.database.connection_url
    url = database.get_secret_value() if database is not None else ""
    path = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else None
    if path and path != ":memory:" and not Path(path).exists():
        note(f"preparing Prefect's local database, once ({path}; PREFECT_HOME={current.home})")
