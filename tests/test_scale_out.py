"""Scale-out, end to end: four Prefect workers backfill the same 14 days (three days at a time each) beside a
fifth running the nightly import, from the deployments of prefect.yaml, on one PostgreSQL ledger and one Prefect
server, against an emulator with faults on. Every valid
message lands exactly once and in time order, every client has one contact, every chat one link, and all of them
together stay within the account's shared budget. Then the same with one worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import etl_env
from prefect_server import create_flow_run, deploy, prefect_server, start_workers, stop_process, wait_for_flow_run

from amojo.emulator.config import EmulatorConfig, Faults
from amojo.emulator.server import start
from etl.budget import CHATS_BATCH, REST_BATCH
from etl.ledger import Ledger
from etl.sample import SampleSize, write_sample

pytestmark = [pytest.mark.prefect, pytest.mark.postgres]

START, END = "2026-10-05", "2026-10-19"
NIGHTLY_SCHEDULED = "2026-10-12T00:00:00+00:00"  # 03:00 in Moscow, as prefect.yaml schedules it
WORKERS = 4
CHATS_RATE, CHATS_BURST = 60, 60  # the shared Chats API budget: requests/s, and slots (the burst)
REST_RATE, REST_BURST = 7, 7  # amoCRM's REST v4 limit per account
CLAIM_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> tuple[dict[str, str], dict[str, dict]]:
    """A Prefect server on PostgreSQL with the deployments of prefect.yaml."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as env:
        yield env, deploy(env)


def _budget(api: str, name: str, rate: float, burst: int) -> str:
    answer = httpx.post(f"{api}/v2/concurrency_limits/", json={"name": name, "limit": burst, "active": True,
                                                                "slot_decay_per_second": rate})
    assert answer.status_code == 201, answer.text
    return name


def _most_in_any_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] > seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def _claims(ledger_url: str) -> list:
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, key, holder, expires_at FROM claims")).all()
    engine.dispose()
    return rows


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _importing_a_day(api: str, backfill_run_id: str) -> bool:
    """Whether a day's import of this backfill is loading right now: its load task runs only while the day's
    interval is claimed."""
    found = httpx.post(f"{api}/task_runs/filter", json={
        "flow_runs": {"parent_flow_run_id": {"any_": [backfill_run_id]}},
        "task_runs": {"name": {"like_": "load-"}, "state": {"type": {"any_": ["RUNNING"]}}}})
    found.raise_for_status()
    return bool(found.json())


def _kill_worker_of(api: str, flow_run_id: str, workers: list[subprocess.Popen]) -> None:
    """SIGKILL the process running this flow run, and the worker that started it."""
    pid = int(str(httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["infrastructure_pid"]).rsplit(":", 1)[-1])
    ancestors, current = set(), pid
    while current > 1:
        ancestors.add(current)
        current = _parent(current)
    os.kill(pid, signal.SIGKILL)
    for worker in workers:
        if worker.pid in ancestors:
            os.killpg(worker.pid, signal.SIGKILL)
            return
    raise AssertionError(f"flow run process {pid} belongs to no worker")


def _run(deployed, emulator, source: Path, ledger_url: str, tmp_path: Path, kill_one: bool) -> list[dict]:
    """Four backfills and a nightly run, one per worker; the final state of each flow run that was not killed."""
    prefect_env, deployments = deployed
    api = prefect_env["PREFECT_API_URL"]
    env = {**prefect_env, **etl_env(emulator, f"sqlite:///{source}", ledger_url),
           "AMOJO_ETL_SHARED_RATE_LIMIT": _budget(api, f"chats-{uuid.uuid4().hex[:8]}", CHATS_RATE, CHATS_BURST),
           "AMOJO_ETL_SHARED_REST_RATE_LIMIT": _budget(api, f"rest-{uuid.uuid4().hex[:8]}", REST_RATE, REST_BURST),
           "AMOJO_ETL_CLAIM_TIMEOUT_S": str(CLAIM_TIMEOUT_S), "AMOJO_ETL_CONCURRENCY": "8"}
    Ledger(ledger_url).close()  # its tables, so that the test can watch the claims from the start
    workers = start_workers(WORKERS + 1, env, tmp_path)
    try:
        runs = [create_flow_run(api, deployments["backfill"]["id"],
                                parameters={"start": START, "end": END, "max_parallel": 3}) for _ in range(WORKERS)]
        # The nightly run comes while the backfills are under way (it cannot keep order with runs that start after
        # it, see README): scheduled at 03:00 Moscow on the 12th, it imports the day before, in UTC: the 11th.
        deadline = time.monotonic() + 300
        while len({row.holder for row in _claims(ledger_url) if row.kind == "reserved"}) < WORKERS:
            assert time.monotonic() < deadline, "the backfills did not start"
            time.sleep(0.5)
        runs.append(create_flow_run(api, deployments["nightly-import"]["id"], state={
            "type": "SCHEDULED", "state_details": {"scheduled_time": NIGHTLY_SCHEDULED}}))
        if kill_one:
            deadline = time.monotonic() + 300
            # Mid-run: sending, and the run to kill is importing a day (between days it holds no interval).
            while len(emulator.emulator.store.messages()) < 120 or not _importing_a_day(api, runs[1]):
                assert time.monotonic() < deadline, "no message arrived"
                time.sleep(0.2)
            _kill_worker_of(api, runs[1], workers)
            killed_at = time.time()
            time.sleep(CLAIM_TIMEOUT_S / 2)  # live runs have renewed their claims since; the killed one could not
            dead = [row for row in _claims(ledger_url) if row.expires_at < killed_at + CLAIM_TIMEOUT_S]
            # The killed worker was importing days: the others have work to take over once its claims expire.
            assert "interval" in {row.kind for row in dead}, dead
            del runs[1]
        return [wait_for_flow_run(api, run, timeout=600) for run in runs]
    finally:
        for worker in workers:
            if worker.poll() is None:
                stop_process(worker)


def _check_exactly_once_in_order(emulator, source: Path, ledger_url: str) -> None:
    store = emulator.emulator.store
    engine = sa.create_engine(f"sqlite:///{source}")
    with engine.connect() as conn:
        window = {"start": START, "end": END}
        # A message's text, unless it has only attachments; each attachment its own message (README, Attachments).
        expected = {f"ae-{row[0]}" for row in conn.execute(sa.text(
            "SELECT id FROM messages m WHERE created_at >= :start AND created_at < :end AND (COALESCE(text, '') <> '' "
            "OR NOT EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = m.id))"), window)}
        expected |= {f"ae-{row[0]}#{row[1]}" for row in conn.execute(sa.text(
            "SELECT a.message_id, a.id FROM attachments a JOIN messages m ON m.id = a.message_id "
            "WHERE m.created_at >= :start AND m.created_at < :end"), window)}
    engine.dispose()
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT msgid, status FROM messages")).all())
        rejected = {f"ae-{json.loads(row)['id']}" for (row,) in conn.execute(sa.text('SELECT "row" FROM rejects'))}
    engine.dispose()

    landed = Counter(m["msgid"] for m in store.messages())
    assert landed and set(landed.values()) == {1}
    assert set(landed) <= expected and expected - set(landed) <= rejected  # every valid message, nothing else
    assert {m for m, s in statuses.items() if s != "rejected"} == set(landed)
    assert set(statuses.values()) <= {"confirmed", "rejected"}  # and the read-back confirmed each one
    refused = [entry for entry in emulator.emulator.request_log if entry[2] == "message" and entry[3] == 400]
    assert refused == []  # in reject mode, a message sent twice would have been answered 400

    for chat in store.chats():  # each conversation's messages arrived in time order
        times = [m["msec_timestamp"] for m in store.chat_messages(chat["id"])]
        assert times == sorted(times), chat["conversation_id"]
    spans = defaultdict(set)
    for message in store.messages():
        spans[message["chat_id"]].add(message["timestamp"] // 86400)
    assert sum(1 for days in spans.values() if len(days) > 1) >= 10  # and many conversations span days

    clients = {chat["user"]["id"] for chat in store.chats()}
    contacts = store.contacts()
    assert len(contacts) == len(clients)  # one contact per client
    assert len({(c["name"], tuple(c["phones"]), tuple(c["emails"])) for c in contacts}) == len(contacts)
    links = store.links()
    assert sorted(link["chat_id"] for link in links) == sorted(chat["id"] for chat in store.chats())
    assert sorted(link["id"] for link in links) == list(range(1, len(links) + 1))  # none ever moved or redone
    assert store.leads() == []


def _check_budget(emulator, processes: int) -> None:
    """In any window, no more requests than the shared budget allows: its burst, its rate over the window, and
    what each process may have paid for just before the window."""
    log = emulator.emulator.request_log
    for api, rate, burst, batch in (("amojo", CHATS_RATE, CHATS_BURST, CHATS_BATCH),
                                    ("rest", REST_RATE, REST_BURST, REST_BATCH)):
        times = [entry[0] for entry in log if entry[1] == api]
        for window in (1.0, 5.0):
            allowed = burst + rate * window + processes * batch
            assert _most_in_any_window(times, window) <= allowed, (api, window)


@pytest.mark.parametrize("kill_one", [False, True], ids=["all-live", "one-killed"])
def test_workers_share_the_days_exactly_once(deployed, postgres_url, tmp_path, kill_one):
    source = tmp_path / "source.db"
    write_sample(f"sqlite:///{source}", size=SampleSize(messages=1500, conversations=100, clients=40))
    faults = Faults(seed=11, latency_ms=5, jitter_ms=15, error_rates={429: 0.02, 500: 0.02, 503: 0.03})
    with start(EmulatorConfig(duplicate_msgid="reject", faults=faults)) as emulator:
        finished = _run(deployed, emulator, source, postgres_url, tmp_path, kill_one)
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in sorted(tmp_path.glob("*.log")))
        assert [run["state"]["type"] for run in finished] == ["COMPLETED"] * len(finished), logs
        assert finished[-1]["name"] == "import-scheduled"  # the nightly run, by its schedule
        _check_exactly_once_in_order(emulator, source, postgres_url)
        _check_budget(emulator, WORKERS + 1)
        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            days = dict(conn.execute(sa.text("SELECT start, status FROM intervals")).all())
        engine.dispose()
        assert len(days) == 14 and set(days.values()) == {"complete"}
        # Every day's claim was released at its end, the killed worker's too once taken over.
        assert [row for row in _claims(postgres_url) if row.kind == "interval"] == []
