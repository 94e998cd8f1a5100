"""The typer app, the options its commands share, and the one place a command's failure becomes its output
(`_reported`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Annotated

import typer
import typer.rich_utils
from rich.console import Console

from ..errors import classify
from .render import _fail, console

HELP_WIDTH = 120
"""The narrowest width a --help is drawn at: at this width no option's help is cut short. Rich fits a table to the
terminal (80 columns when piped) and ends each word that does not fit its column with "…", so `[env var: …]` lost
the variable's name; a narrower terminal wraps the longer lines instead, and nothing is lost."""
# typer draws its help on a console of this width (its TERMINAL_WIDTH variable sets it too, and still may: wider)
typer.rich_utils.MAX_WIDTH = max(typer.rich_utils.MAX_WIDTH or Console().width, HELP_WIDTH)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="`amojo-etl`: the console script. Its commands run the same Prefect flows a deployment runs.")

StartOption = Annotated[date, typer.Option("--start", formats=["%Y-%m-%d"],
                                           help="first day, inclusive (YYYY-MM-DD, in AMOJO_ETL_TIMEZONE)")]
EndOption = Annotated[date, typer.Option("--end", formats=["%Y-%m-%d"],
                                         help="day after the last, exclusive: --start 2026-10-01 --end 2026-10-08 "
                                              "is the first week of October")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the run summary as one JSON object on stdout")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="transform and report; send nothing")]


@dataclass
class Options:
    debug: bool = False
    """--debug or AMOJO_ETL_DEBUG=1: tracebacks are shown, expected failures' too."""


OPTIONS = Options()


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", envvar="AMOJO_ETL_DEBUG", help="show the traceback of a failure (also AMOJO_ETL_DEBUG=1)")
        ] = False) -> None:
    """amojo-etl: import chat history into amoCRM chats."""
    OPTIONS.debug = debug


@contextmanager
def _reported() -> Iterator[None]:
    """The one place a command's failure becomes its output: an expected one (`classify`) is one line naming what
    to fix and exit status 2 (configuration) or 1 (the run); anything else, one line saying it is a defect."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):  # exits and usage errors: typer's own
        raise
    except Exception as exc:
        error = classify(exc)
        if OPTIONS.debug:
            console.print_exception()
        if error is None:
            raise _fail(f"{type(exc).__name__}: {exc} (a defect of amojo-etl: run again with --debug or "
                       "AMOJO_ETL_DEBUG=1 for the traceback, and report it)", 1) from None
        raise _fail(str(error), error.exit_code) from None
