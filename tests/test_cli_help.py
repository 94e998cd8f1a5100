"""What the operator reads first: every --help whole, piped into a file or a pager, at any terminal width."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["", "demo", "import", "backfill", "reconcile", "audit", "status", "rejects", "sample-data",
            "alerts-install", "emulator"]
ENV_NAME = re.compile(r"AMOJO_ETL_[A-Z_]+")
ROOT = Path(__file__).resolve().parents[1]


def _help(command: str, columns: str | None) -> str:
    """`amojo-etl COMMAND --help` as a pipe receives it (stdout not a terminal), with COLUMNS as given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "TERMINAL_WIDTH", "FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS")}
    if columns is not None:
        env["COLUMNS"] = columns
    args = [sys.executable, "-c", "from etl.cli import app; app()", *command.split(), "--help"]
    shown = subprocess.run(args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           check=True)
    return shown.stdout


def _declared_env_names(command: str) -> set[str]:
    """The variables the command's options read, as click declares them."""
    import typer.main

    from etl.cli import app

    group = typer.main.get_command(app)
    target = group.commands[command] if command else group
    names: set[str] = set()
    for param in target.params:
        envvar = getattr(param, "envvar", None)
        if envvar and getattr(param, "show_envvar", False):
            names.update([envvar] if isinstance(envvar, str) else envvar)
    return names


@pytest.mark.parametrize("columns", [None, "40"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_whole_when_piped(command: str, columns: str | None) -> None:
    shown = _help(command, columns)
    assert "…" not in shown, shown  # Rich cuts a word that does not fit its column with an ellipsis
    declared = _declared_env_names(command)
    assert declared <= set(ENV_NAME.findall(shown)), shown
    if command == "emulator":  # the one whose options name the importer's variables
        assert {"AMOJO_ETL_CHANNEL_ID", "AMOJO_ETL_CHANNEL_SECRET", "AMOJO_ETL_ACCOUNT_ID", "AMOJO_ETL_AMOCRM_TOKEN",
                "AMOJO_ETL_BOT_ID", "AMOJO_ETL_CONFIG"} <= declared
