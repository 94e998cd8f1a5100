"""A run killed with SIGKILL at a random moment, then run again, leaves every message in amoCRM exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import etl_env

from amojo.emulator.server import start
from etl.sample import SampleSize, write_sample

CLI = str(Path(sys.executable).parent / "amojo-etl")


def _env(running, tmp_path: Path, ledger_url: str) -> dict[str, str]:
    return {**os.environ, **etl_env(running, f"sqlite:///{tmp_path / 'source.db'}", ledger_url),
            "AMOJO_ETL_CHUNK_SIZE": "200", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "AMOJO_ETL_CLAIM_TIMEOUT_S": "5"}  # the run again waits for the killed one's claims to expire


ARGS = ["import", "--start", "2026-10-01", "--end", "2026-11-10", "--json"]


@pytest.mark.parametrize("seed, ledger", [(1, "sqlite"), (2, "sqlite"), (3, "postgres")])
def test_killed_run_resumes_without_duplicates(seed, ledger, emulator_config, tmp_path, request):
    write_sample(f"sqlite:///{tmp_path / 'source.db'}", size=SampleSize(messages=600, conversations=40, clients=20))
    emulator_config.duplicate_msgid = "reject" if seed % 2 else "idempotent"
    with start(emulator_config) as running:
        ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}" if ledger == "sqlite" else \
            request.getfixturevalue("postgres_url")
        env = _env(running, tmp_path, ledger_url)
        kill_after = random.Random(seed).randint(20, 500)  # messages the emulator has taken when the kill comes
        process = subprocess.Popen([CLI, *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        deadline = time.monotonic() + 180
        while len(running.emulator.store.messages()) < kill_after and process.poll() is None:
            assert time.monotonic() < deadline, "the import never got going"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its temporary Prefect server, mid-flight
        process.wait()
        before = len(running.emulator.store.messages())

        again = subprocess.run([CLI, *ARGS], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        landed = Counter(m["msgid"] for m in running.emulator.store.messages())
        assert set(landed.values()) == {1}, [m for m, n in landed.items() if n > 1]
        assert len(landed) >= before
        summary = json.loads(again.stdout)
        assert summary["verdict"] == "complete"
        assert len(landed) == summary["messages_valid"]
        assert kill_after <= before < summary["messages_valid"]  # the kill came mid-import
        assert running.emulator.store.leads() == []
