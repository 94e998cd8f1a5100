"""`amojo-etl`: the console script. Its commands run the same Prefect flows a deployment runs.

Exit status: 0 when the verdict is complete, 1 when the run failed or is incomplete, 2 for a configuration or
usage error. (The one package of etl/ that reaches up to flows/: it is the entry point above them.)

`app`: the typer app and how a failure is reported; `commands`: the commands; `emulator`: the emulator's command,
generated from its config; `render`: what they print; `runner`: the local Prefect runner.
"""

from .commands import app

__all__ = ["app"]
