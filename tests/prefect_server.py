"""A real Prefect server on this machine's PostgreSQL, in a database of its own, for the tests that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, REQUIRE_DATABASES

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in a session of its own, so that it and its children can be stopped (or killed) together."""
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def prefect_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a Prefect server (asyncpg URL), or a skip that says why."""
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"prefect_{uuid.uuid4().hex[:10]}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - no server here
        engine.dispose()
        if REQUIRE_DATABASES:
            pytest.fail(f"PostgreSQL not reachable ({type(exc).__name__}), but AMOJO_ETL_REQUIRE_DATABASES=1")
        pytest.skip(f"PostgreSQL not reachable for the Prefect server ({type(exc).__name__})")
    try:
        yield sa.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg", database=name) \
            .render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


@contextmanager
def prefect_server(home: Path) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free port; yields the environment that points Prefect clients at it."""
    with prefect_database() as database:
        api = f"http://127.0.0.1:{free_port()}/api"
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": database, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        home.mkdir(parents=True, exist_ok=True)
        port = api.split(":")[2].split("/")[0]
        server = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                               env, home / "server.log")
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
                time.sleep(1)
            yield env
        finally:
            stop_process(server)
