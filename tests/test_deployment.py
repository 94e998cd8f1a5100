"""The Prefect way, end to end: a Prefect server on PostgreSQL, the deployments of prefect.yaml, a process worker,
a backfill started through the API — then started again, sending nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, REQUIRE_DATABASES, etl_env

from etl.sample import SampleSize, write_sample

pytestmark = [pytest.mark.prefect, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def prefect_database() -> Iterator[str]:
    """A database of its own for the Prefect server, on this machine's PostgreSQL."""
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
    url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg", database=name)
    yield url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def _wait_for_run(api: str, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")


def _run_backfill(api: str, deployment_id: str, parameters: dict) -> dict:
    created = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
    assert created.status_code == 201, created.text
    return _wait_for_run(api, created.json()["id"])


def test_backfill_through_server_deployment_and_worker(prefect_database, emulator, tmp_path):
    write_sample(f"sqlite:///{tmp_path / 'source.db'}", size=SampleSize(messages=600, conversations=40, clients=20))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_database, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5", "AMOJO_ETL_HOME": str(ROOT),
    }
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                    tmp_path / "server.log")
    worker = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        prefect = [str(BIN / "prefect")]
        subprocess.run([*prefect, "work-pool", "create", "amojo-etl", "--type", "process"], env=env, cwd=ROOT,
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*prefect, "work-queue", "create", "account", "--pool", "amojo-etl", "--limit", "1"], env=env,
                       cwd=ROOT, check=True, capture_output=True, timeout=120)
        deployed = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
        assert set(deployments) == {"nightly-import", "backfill", "reconcile"}
        assert deployments["nightly-import"]["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert {d["work_queue_name"] for d in deployments.values()} == {"account"}
        queue = httpx.get(f"{api}/work_pools/amojo-etl/queues/account").json()
        assert queue["concurrency_limit"] == 1  # one importing run at a time for the account

        worker_env = {**env, **etl_env(emulator, f"sqlite:///{tmp_path / 'source.db'}",
                                       f"sqlite:///{tmp_path / 'ledger.db'}")}
        worker = _start([*prefect, "worker", "start", "--pool", "amojo-etl"], worker_env, tmp_path / "worker.log")

        backfill = deployments["backfill"]["id"]
        parameters = {"start": "2026-10-05", "end": "2026-10-09", "max_parallel": 2}
        first = _run_backfill(api, backfill, parameters)
        assert first["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        children = httpx.post(f"{api}/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [first["id"]]}}}).json()
        imports = [r for r in httpx.post(f"{api}/flow_runs/filter", json={}).json() if r["name"].startswith("import-")]
        assert len(imports) == 4 and {r["state"]["type"] for r in imports} == {"COMPLETED"}, children
        keys = {a["key"] for a in httpx.post(f"{api}/artifacts/filter", json={}).json()}
        assert {"backfill-days", "backfill-progress", "import-summary", "import-rejects", "import-verdict"} <= keys

        landed = Counter(m["msgid"] for m in emulator.emulator.store.messages())
        ledger = sa.create_engine(worker_env["AMOJO_ETL_STATE_URL"])
        with ledger.connect() as conn:
            confirmed = {r[0] for r in conn.execute(sa.text("SELECT msgid FROM messages WHERE status = 'confirmed'"))}
        ledger.dispose()
        assert set(landed.values()) == {1} and set(landed) == confirmed and landed
        assert emulator.emulator.store.leads() == []

        again = _run_backfill(api, backfill, parameters)
        assert again["state"]["type"] == "COMPLETED"
        assert Counter(m["msgid"] for m in emulator.emulator.store.messages()) == landed  # nothing sent

        bad = httpx.post(f"{api}/deployments/{backfill}/create_flow_run",
                         json={"parameters": {**parameters, "max_parallel": 0}})
        assert bad.status_code == 409 and "max_parallel" in bad.text  # refused before any run starts
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
