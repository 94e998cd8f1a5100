"""The fixed cost of a command: seconds from starting `amojo-etl import` to its flow's first task (issue 14, point 2).

    ./uvw run python bench/cli_startup.py [--server]

Runs `amojo-etl import --dry-run` for one day of a small sample source, as a new process each time: with a fresh
PREFECT_HOME (the temporary Prefect server builds its database first), with that home again (existing), and with
`--server` also against a running `prefect server start` (PREFECT_API_URL). For each it prints when the flow run
began and when the first task run was reported (the first task, resolving senders, takes milliseconds in a dry run
without REST settings: its report is its start), and the whole command; beside `amojo-etl --help`, which starts no
Prefect. Heavy (each start of a temporary server costs tens of seconds on 2 cores): run it once.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.sample import SampleSize, write_sample  # noqa: E402

CLI = str(Path(sys.executable).with_name("amojo-etl"))
DAY = ["--start", "2026-10-10", "--end", "2026-10-11"]


@dataclass
class Timing:
    """Seconds from the command's start to each mark; None when the mark never showed."""

    flow_began: float | None = None
    first_task: float | None = None
    total: float = 0.0
    exit_code: int = 0


def timed(args: list[str], env: dict[str, str]) -> Timing:
    """Run the CLI with `args`, reading its output as it comes, and note when the marks show."""
    began = time.monotonic()
    timing = Timing()
    with subprocess.Popen([CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.monotonic() - began
            if timing.flow_began is None and "Beginning flow run" in line:
                timing.flow_began = now
            if timing.first_task is None and "Task run '" in line:
                timing.first_task = now
        timing.exit_code = process.wait()
    timing.total = time.monotonic() - began
    return timing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def running_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A `prefect server start` on a free port with its own home; returns once its API answers."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--port",
                               str(port)], env={**env, "PREFECT_HOME": str(home)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)  # noqa: S310 - our own loopback server
            return server, url
        except OSError:
            time.sleep(1)
    server.terminate()
    raise SystemExit("the Prefect server did not start within 300 s")


def _shown(value: float | None) -> str:
    return f"{value:6.1f}" if value is not None else "     -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", action="store_true", help="also against a running Prefect server")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="amojo-etl-startup-") as work:
        root = Path(work)
        write_sample(f"sqlite:///{root}/source.db", size=SampleSize(messages=300))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMOJO_ETL_", "PREFECT_"))}
        env.update({"AMOJO_ETL_SOURCE_URL": f"sqlite:///{root}/source.db",
                    "AMOJO_ETL_STATE_URL": f"sqlite:///{root}/ledger.db", "PYTHONUNBUFFERED": "1",
                    "COLUMNS": "200"})
        rows = [("amojo-etl --help (no Prefect)", timed(["--help"], env))]
        home = {**env, "PREFECT_HOME": str(root / "prefect-home")}
        rows.append(("import, fresh PREFECT_HOME", timed(["import", *DAY, "--dry-run"], home)))
        rows.append(("import, existing PREFECT_HOME", timed(["import", *DAY, "--dry-run"], home)))
        if options.server:
            server, url = running_server(root / "server-home", env)
            try:
                rows.append(("import, running server (PREFECT_API_URL)",
                             timed(["import", *DAY, "--dry-run"], {**home, "PREFECT_API_URL": url})))
            finally:
                server.terminate()
                server.wait()
    print(f"{'seconds from start':44} {'flow began':>10} {'1st task':>9} {'total':>7}  exit")
    for name, timing in rows:
        print(f"{name:44} {_shown(timing.flow_began):>10} {_shown(timing.first_task):>9} {timing.total:7.1f}  "
              f"{timing.exit_code}")


if __name__ == "__main__":
    main()
