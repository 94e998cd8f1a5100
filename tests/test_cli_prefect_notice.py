"""Where a command's flow runs is said in one line: the server of PREFECT_API_URL, or the temporary server's first
start, which builds its database (issue 14, point 1). No Prefect server is started here."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

from etl.cli import commands as cli
from etl.cli import runner


def _announced(capsys: pytest.CaptureFixture[str]) -> list[str]:
    cli._announce_prefect()
    return capsys.readouterr().err.splitlines()


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


def test_a_configured_server_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            assert _announced(capsys) == [f"running on the Prefect server at {url} (PREFECT_API_URL)"]
    finally:
        server.shutdown()


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


def test_a_configured_server_that_does_not_answer_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from typer.testing import CliRunner

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
        result = CliRunner().invoke(cli.app, ["import", "--start", "2026-10-01", "--end", "2026-10-02",
                                              "--dry-run"], env={"AMOJO_ETL_SOURCE_URL": _sample()})
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: the Prefect server at PREFECT_API_URL") and "Traceback" not in result.output


def _sample() -> str:
    import tempfile

    from etl.sample import SampleSize, write_sample

    path = Path(tempfile.mkdtemp(prefix="amojo-etl-notice-")) / "source.db"
    write_sample(f"sqlite:///{path}", size=SampleSize(messages=30))
    return f"sqlite:///{path}"


def test_a_temporary_server_too_slow_to_start_is_one_line_naming_the_timeout(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    from typer.testing import CliRunner

    def slow_start(coroutine: object) -> None:
        getattr(coroutine, "close", lambda: None)()
        raise RuntimeError(f"{runner.EPHEMERAL_TIMEOUT}. stdout: ... stderr: ...")

    monkeypatch.setattr(cli, "_preflight", lambda **kwargs: None)
    monkeypatch.setattr(cli.asyncio, "run", slow_start)
    with temporary_settings(updates={PREFECT_HOME: tmp_path}, set_defaults={PREFECT_API_URL: None},
                            restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(cli.app, ["import", "--start", "2026-10-01", "--end", "2026-10-02"])
    assert result.exit_code == 1, result.output
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in result.output.splitlines()[-1]
