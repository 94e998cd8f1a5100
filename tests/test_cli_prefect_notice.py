"""Where a command's flow runs is said in one line: the server of PREFECT_API_URL, or the temporary server's first
start, which builds its database (issue 14, point 1). No Prefect server is started here."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

from etl import cli


def _announced(capsys: pytest.CaptureFixture[str]) -> list[str]:
    cli._announce_prefect()
    return capsys.readouterr().err.splitlines()


def test_a_configured_server_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect.example:4200/api"}):
        assert _announced(capsys) == ["running on the Prefect server at http://prefect.example:4200/api "
                                      "(PREFECT_API_URL)"]


def test_the_first_start_in_a_new_home_is_announced_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # one line however narrow the terminal
    database = tmp_path / "prefect.db"
    with temporary_settings(updates={PREFECT_HOME: tmp_path,
                                     PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{database}"},
                            set_defaults={PREFECT_API_URL: None}, restore_defaults={PREFECT_API_URL}):
        (line,) = _announced(capsys)
        assert line.startswith("preparing Prefect's local database, once") and str(database) in line
        database.write_bytes(b"")  # built: nothing more to say
        assert _announced(capsys) == []
