"""A run whose ledger goes away mid-run, or that is sent SIGTERM, ends in the product's one error line (no
traceback) and the documented exit status, as every other failure does; the temporary Prefect server goes too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, REQUIRE_DATABASES, etl_env

from amojo.emulator.config import Faults
from amojo.emulator.server import RunningEmulator, start
from etl.sample import SampleSize, write_sample

CLI = str(Path(sys.executable).parent / "amojo-etl")
ARGS = ["import", "--start", "2026-10-01", "--end", "2026-11-10"]


def _start(running: RunningEmulator, tmp_path: Path, ledger_url: str) -> subprocess.Popen:
    """The CLI importing the sample, in a session of its own (its temporary Prefect server with it)."""
    write_sample(f"sqlite:///{tmp_path / 'source.db'}", size=SampleSize(messages=600, conversations=40, clients=20))
    env = {**os.environ, **etl_env(running, f"sqlite:///{tmp_path / 'source.db'}", ledger_url),
           "AMOJO_ETL_CHUNK_SIZE": "100", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("AMOJO_ETL_DEBUG", None)
    # Files, not pipes: a child left behind would hold a pipe open and hang the test instead of failing it.
    return subprocess.Popen([CLI, *ARGS], env=env, stdout=(tmp_path / "stdout").open("w"),
                            stderr=(tmp_path / "stderr").open("w"), start_new_session=True)


def _when_sending(running: RunningEmulator, process: subprocess.Popen, messages: int = 50) -> None:
    deadline = time.monotonic() + 240
    while len(running.emulator.store.messages()) < messages:
        assert process.poll() is None, "the import ended before the fault came"
        assert time.monotonic() < deadline, "the import never got going"
        time.sleep(0.02)


def _ended(process: subprocess.Popen, tmp_path: Path) -> tuple[int, str, list[str]]:
    """Exit status, stderr, and what of its process group is still alive (then killed)."""
    try:
        process.wait(timeout=180)
    finally:
        left = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
        if left:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, (tmp_path / "stderr").read_text(), left


def _assert_one_error_line(stderr: str, names: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-4000:]
    assert names in errors[0], errors[0]
    assert "Traceback" not in stderr, stderr[-4000:]


@pytest.fixture
def slow_emulator() -> Iterator[RunningEmulator]:
    """An emulator slow enough (20 ms an answer) that the fault lands while messages are being sent."""
    with start() as running:
        running.emulator.set_faults(Faults(latency_ms=20))
        yield running


@pytest.fixture
def dropped_database() -> Iterator[tuple[str, sa.Engine, str]]:
    """A PostgreSQL database of its own for the ledger (so that it can be dropped), or a skip that says why: its
    name, a connection to the server, and the ledger's URL."""
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means "not here"
        admin.dispose()
        if REQUIRE_DATABASES:
            pytest.fail(f"PostgreSQL not reachable ({type(exc).__name__}), but AMOJO_ETL_REQUIRE_DATABASES=1")
        pytest.skip(f"PostgreSQL not reachable ({type(exc).__name__}); set AMOJO_ETL_TEST_POSTGRES_URL")
    name = f"ledger_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield name, admin, sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_a_ledger_database_dropped_mid_run_ends_in_one_line(slow_emulator, dropped_database, tmp_path):
    name, admin, ledger_url = dropped_database
    process = _start(slow_emulator, tmp_path, ledger_url)
    _when_sending(slow_emulator, process)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))  # its connections cut, the database gone

    status, stderr, left = _ended(process, tmp_path)

    assert status == 1, stderr[-4000:]  # the run failed (README: exit status)
    _assert_one_error_line(stderr, "AMOJO_ETL_STATE_URL")
    assert left == []


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_sigterm_mid_run_ends_in_one_line(ledger, slow_emulator, tmp_path, request):
    """Wherever the signal lands: in the flow's code, in the event loop, or inside a ledger statement (psycopg's
    cleanup after it then fails too: still the stop, not a ledger error)."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}" if ledger == "sqlite" else \
        request.getfixturevalue("dropped_database")[2]
    process = _start(slow_emulator, tmp_path, ledger_url)
    _when_sending(slow_emulator, process)
    process.send_signal(signal.SIGTERM)  # what a service manager or a container runtime sends to stop it

    status, stderr, left = _ended(process, tmp_path)

    assert status == 1, stderr[-4000:]
    _assert_one_error_line(stderr, "SIGTERM")
    assert left == []  # the temporary Prefect server did not outlive the command


def test_a_sigterm_whose_exception_lands_in_a_finalizer_is_sent_again():
    """Python drops an exception raised in `__del__` (it only prints it): a SIGTERM handler's exception that lands
    there would let the run go on to its end. The command's hook sends the signal again, to land where it stops."""
    from etl.cli.runner import _signal_again

    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    dropped: list[object] = []
    hook = _signal_again(dropped.append, KeyboardInterrupt)
    try:
        class Unraisable:
            def __init__(self, error: BaseException) -> None:
                self.exc_value = error

        hook(Unraisable(KeyboardInterrupt()))  # the handler's exception, dropped in a finalizer
        hook(Unraisable(ValueError("another")))  # anything else goes to the hook before
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    assert [type(d.exc_value) for d in dropped] == [ValueError]
