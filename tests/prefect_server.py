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
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": database, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        home.mkdir(parents=True, exist_ok=True)
        server = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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


def deploy(env: dict[str, str]) -> dict[str, dict]:
    """The work pool and the deployments of prefect.yaml on the server `env` points at; name -> deployment."""
    prefect = str(BIN / "prefect")
    env = {**env, "AMOJO_ETL_HOME": str(ROOT)}  # where the code is on the workers, read by prefect.yaml's pull step
    subprocess.run([prefect, "work-pool", "create", "amojo-etl", "--type", "process"], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    deployed = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    return {d["name"]: d for d in httpx.post(f"{env['PREFECT_API_URL']}/deployments/filter", json={}).json()}


def start_workers(count: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    """Process workers on the pool, each running one flow run at a time and polling every 2 s."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           "AMOJO_ETL_HOME": str(ROOT)}
    return [start_process([str(BIN / "prefect"), "worker", "start", "--pool", "amojo-etl", "--limit", "1",
                           "--name", f"worker-{n}"], env, logs / f"worker-{n}.log") for n in range(count)]


def create_flow_run(api: str, deployment_id: str, **body: object) -> str:
    created = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def wait_for_flow_run(api: str, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")
