"""The Prefect way, end to end: a Prefect server on PostgreSQL, the deployments of prefect.yaml, a process worker,
a backfill started through the API — then started again, sending nothing."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import sqlalchemy as sa
from conftest import etl_env
from prefect_server import create_flow_run, deploy, prefect_server, start_workers, stop_process, wait_for_flow_run

from etl.sample import SampleSize, write_sample
from etl.settings import Settings
from tasks.report import artifact_key

pytestmark = [pytest.mark.prefect, pytest.mark.postgres]


def _run_backfill(api: str, deployment_id: str, parameters: dict) -> dict:
    return wait_for_flow_run(api, create_flow_run(api, deployment_id, parameters=parameters))


def test_backfill_through_server_deployment_and_worker(emulator, tmp_path):
    write_sample(f"sqlite:///{tmp_path / 'source.db'}", size=SampleSize(messages=600, conversations=40, clients=20))
    with prefect_server(tmp_path / "prefect") as env:
        api = env["PREFECT_API_URL"]
        workers = []
        try:
            deployments = deploy(env)
            assert set(deployments) == {"nightly-import", "backfill", "reconcile", "audit"}
            assert deployments["nightly-import"]["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
            assert {d["work_queue_name"] for d in deployments.values()} == {"account"}

            worker_env = {**env, **etl_env(emulator, f"sqlite:///{tmp_path / 'source.db'}",
                                           f"sqlite:///{tmp_path / 'ledger.db'}")}
            workers = start_workers(1, worker_env, tmp_path)

            backfill = deployments["backfill"]["id"]
            parameters = {"start": "2026-10-05", "end": "2026-10-09", "max_parallel": 2}
            first = _run_backfill(api, backfill, parameters)
            assert first["state"]["type"] == "COMPLETED", (tmp_path / "worker-0.log").read_text()[-4000:]
            children = httpx.post(f"{api}/flow_runs/filter", json={
                "flow_runs": {"parent_flow_run_id": {"any_": [first["id"]]}}}).json()
            runs = httpx.post(f"{api}/flow_runs/filter", json={}).json()
            imports = [r for r in runs if r["name"].startswith("import-")]
            assert len(imports) == 4 and {r["state"]["type"] for r in imports} == {"COMPLETED"}, children
            keys = {a["key"] for a in httpx.post(f"{api}/artifacts/filter", json={}).json()}
            account = Settings(amocrm_url=worker_env["AMOJO_ETL_AMOCRM_URL"])
            assert {artifact_key(kind, account) for kind in ("backfill-days", "backfill-progress", "import-summary",
                                                             "import-rejects", "import-verdict")} <= keys
            assert all(key.endswith(f"-127-0-0-1-{httpx.URL(emulator.url).port}") for key in keys)

            landed = Counter(m["msgid"] for m in emulator.emulator.store.messages())
            ledger = sa.create_engine(worker_env["AMOJO_ETL_STATE_URL"])
            with ledger.connect() as conn:
                query = sa.text("SELECT msgid FROM messages WHERE status = 'confirmed'")
                confirmed = {r[0] for r in conn.execute(query)}
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
            for worker in workers:
                stop_process(worker)
