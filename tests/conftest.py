"""Shared fixtures: a live emulator over HTTP, settings pointing at it, and the real database servers.

PostgreSQL and MariaDB tests run against AMOJO_ETL_TEST_POSTGRES_URL / AMOJO_ETL_TEST_MARIADB_URL (defaults: this
machine's servers). Without a reachable server they are skipped, saying why; `.ci/run` sets
AMOJO_ETL_REQUIRE_DATABASES=1, which turns such a skip into a failure.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from amojo.emulator.config import EmulatorConfig  # noqa: E402
from amojo.emulator.server import RunningEmulator, start  # noqa: E402

POSTGRES_URL = os.environ.get("AMOJO_ETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("AMOJO_ETL_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_DATABASES = os.environ.get("AMOJO_ETL_REQUIRE_DATABASES") == "1"


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server for the flows a test module runs in-process."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig()


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[RunningEmulator]:
    with start(emulator_config) as running:
        yield running


def etl_env(running: RunningEmulator, source_url: str, ledger_url: str) -> dict[str, str]:
    """AMOJO_ETL_* for a pipeline that reads `source_url`, keeps its ledger at `ledger_url` and talks to `running`."""
    config = running.emulator.config
    return {
        "AMOJO_ETL_SOURCE_URL": source_url,
        "AMOJO_ETL_STATE_URL": ledger_url,
        "AMOJO_ETL_AMOJO_URL": running.url,
        "AMOJO_ETL_AMOCRM_URL": running.url,
        "AMOJO_ETL_CHANNEL_ID": config.channel_id,
        "AMOJO_ETL_CHANNEL_SECRET": config.channel_secret,
        "AMOJO_ETL_AMOCRM_TOKEN": config.token,
        "AMOJO_ETL_BOT_ID": config.bot_id,
    }


@pytest.fixture
def source_env(emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """AMOJO_ETL_* pointing at the emulator, a fresh ledger and an empty SQLite source; returns the source's URL."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    for key, value in etl_env(emulator, source, f"sqlite:///{tmp_path / 'ledger.db'}").items():
        monkeypatch.setenv(key, value)
    return source


@pytest.fixture
def pipeline_env(emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AMOJO_ETL_* pointing at the emulator, a fresh sample source and a fresh ledger."""
    from etl.sample import SampleSize, write_sample

    source = tmp_path / "source.db"
    write_sample(f"sqlite:///{source}", size=SampleSize(messages=450, conversations=30, clients=15))
    env = etl_env(emulator, f"sqlite:///{source}", f"sqlite:///{tmp_path / 'ledger.db'}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _database(url: str, name: str) -> Iterator[str]:
    """A fresh schema-less database namespace on a real server, or a skip that says why."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means "not here"
        engine.dispose()
        reason = f"{name} not reachable at {engine.url.render_as_string(hide_password=True)} ({type(exc).__name__})"
        if REQUIRE_DATABASES:
            pytest.fail(f"{reason}, but AMOJO_ETL_REQUIRE_DATABASES=1")
        pytest.skip(f"{reason}; set AMOJO_ETL_TEST_{name.upper()}_URL to run it")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        else:
            conn.execute(sa.text(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4"))
    if engine.dialect.name == "postgresql":
        scoped = engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
    else:
        scoped = engine.url.set(database=schema)
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            else:
                conn.execute(sa.text(f"DROP DATABASE {schema}"))
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _database(POSTGRES_URL, "postgres")


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    yield from _database(MARIADB_URL, "mariadb")
