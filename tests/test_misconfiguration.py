"""Every misconfiguration ends in one line that names the setting or the file and the fix (issue 14, point 3).

Each case runs the CLI in-process on a working configuration with one thing wrong, and checks the exit status (2:
configuration, 1: the run), that the one error line names what to fix, that no traceback is printed and that the
secrets planted in the environment appear nowhere. The cases of `PREFLIGHT` must be caught before Prefect starts
(they cost no server start); the two of `IN_RUN` can only show inside a flow run.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amojo.emulator.config import EmulatorConfig
from amojo.emulator.server import RunningEmulator, start
from etl.cli import commands as cli
from etl.sample import SampleSize, write_sample

CHANNEL_SECRET = "PLANTED-channel-secret-0451"
TOKEN = "PLANTED-amocrm-token-7788"
PASSWORD = "PLANTEDpw9931"
PLANTED = (CHANNEL_SECRET, TOKEN, PASSWORD)
TODAY_RANGE = ["--start", "2026-10-01", "--end", "2026-10-02"]
SAMPLE_RANGE = ["--start", "2026-10-01", "--end", "2026-11-01"]  # every message of the `source` fixture


@dataclass(frozen=True)
class Case:
    """One misconfiguration: the command, what differs from a working setup, and how it must end."""

    args: list[str]
    exit_code: int
    names: str  # the setting or the file the one error line must name
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name in tmp_path -> content; {tmp} in env is tmp_path


@dataclass
class Servers:
    emulator: RunningEmulator
    closed_port: int
    html_url: str
    hang_url: str


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Html(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """An emulator that takes the planted credentials, a server answering HTML, one that never answers."""
    html = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    threading.Thread(target=html.serve_forever, daemon=True).start()
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts connections (the kernel does), never reads or answers
    with start(EmulatorConfig(channel_secret=CHANNEL_SECRET, token=TOKEN)) as running:
        yield Servers(running, _closed_port(), f"http://127.0.0.1:{html.server_address[1]}",
                      f"http://127.0.0.1:{hang.getsockname()[1]}")
    html.shutdown()
    hang.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("source") / "source.db"
    write_sample(f"sqlite:///{path}", size=SampleSize(messages=60, conversations=6, clients=4))
    return f"sqlite:///{path}"


@pytest.fixture
def working_env(servers: Servers, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A configuration that works, secrets planted; no other AMOJO_ETL_* of this machine leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("AMOJO_ETL_") and not name.startswith("AMOJO_ETL_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "100")  # narrow: a long error line must stay one line anyway
    config = servers.emulator.emulator.config
    return {
        "AMOJO_ETL_SOURCE_URL": source, "AMOJO_ETL_STATE_URL": f"sqlite:///{tmp_path}/ledger.db",
        "AMOJO_ETL_AMOJO_URL": servers.emulator.url, "AMOJO_ETL_AMOCRM_URL": servers.emulator.url,
        "AMOJO_ETL_CHANNEL_ID": config.channel_id, "AMOJO_ETL_CHANNEL_SECRET": CHANNEL_SECRET,
        "AMOJO_ETL_AMOCRM_TOKEN": TOKEN, "AMOJO_ETL_BOT_ID": config.bot_id, "AMOJO_ETL_TIMEOUT_S": "2",
    }


BAD_MAPPING_TYPE = '[queries]\nmessages = 5\nconversations = "x"\nclients = "x"\nmanagers = "x"\n'

PREFLIGHT: dict[str, Case] = {
    "source URL with a space": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_SOURCE_URL",
                                    {"AMOJO_ETL_SOURCE_URL": f"postgres ql://etl:{PASSWORD}@db/chats"}),
    "source URL not a URL": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_SOURCE_URL",
                                 {"AMOJO_ETL_SOURCE_URL": "notaurl"}),
    "source URL unknown dialect": Case(["import", *TODAY_RANGE, "--dry-run"], 2, "AMOJO_ETL_SOURCE_URL",
                                       {"AMOJO_ETL_SOURCE_URL": f"oracle2://etl:{PASSWORD}@db/chats"}),
    "source URL unknown driver": Case(["backfill", *TODAY_RANGE], 2, "AMOJO_ETL_SOURCE_URL",
                                      {"AMOJO_ETL_SOURCE_URL": f"postgresql+nodriver://etl:{PASSWORD}@db/chats"}),
    "source SQLite file missing": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_SOURCE_URL",
                                       {"AMOJO_ETL_SOURCE_URL": "sqlite:///{tmp}/no-such.db"}),
    "source server closed port": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_SOURCE_URL",
                                      {"AMOJO_ETL_SOURCE_URL":
                                       f"postgresql+psycopg://etl:{PASSWORD}@127.0.0.1:{{closed}}/chats"}),
    "config TOML malformed": Case(["status"], 2, "bad.toml",
                                  {"AMOJO_ETL_CONFIG": "{tmp}/bad.toml"},
                                  {"bad.toml": f'channel_secret = "{CHANNEL_SECRET}"\nchannel_id = \n'}),
    "config file missing": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CONFIG",
                                {"AMOJO_ETL_CONFIG": "{tmp}/missing.toml"}),
    "config key misspelled": Case(["import", *TODAY_RANGE], 2, "chanel_id",
                                  {"AMOJO_ETL_CONFIG": "{tmp}/typo.toml"}, {"typo.toml": 'chanel_id = "x"\n'}),
    "config value of a wrong type": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CONCURRENCY",
                                         {"AMOJO_ETL_CONFIG": "{tmp}/type.toml"},
                                         {"type.toml": 'concurrency = "many"\n'}),
    "ledger URL garbage (status)": Case(["status"], 2, "AMOJO_ETL_STATE_URL", {"AMOJO_ETL_STATE_URL": "garbage"}),
    "ledger URL garbage (import)": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_STATE_URL",
                                        {"AMOJO_ETL_STATE_URL": "garbage"}),
    "ledger on a closed port": Case(["status"], 2, "AMOJO_ETL_STATE_URL",
                                    {"AMOJO_ETL_STATE_URL":
                                     f"postgresql+psycopg://etl:{PASSWORD}@127.0.0.1:{{closed}}/ledger"}),
    "ledger path unwritable (rejects)": Case(["rejects"], 2, "AMOJO_ETL_STATE_URL",
                                             {"AMOJO_ETL_STATE_URL": "sqlite:///{tmp}/a-file/ledger.db"},
                                             {"a-file": "not a directory"}),
    "ledger path unwritable (import)": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_STATE_URL",
                                            {"AMOJO_ETL_STATE_URL": "sqlite:///{tmp}/a-file/ledger.db"},
                                            {"a-file": "not a directory"}),
    "amoCRM URL on a closed port": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_AMOCRM_URL",
                                        {"AMOJO_ETL_AMOCRM_URL": "http://127.0.0.1:{closed}"}),
    "amoCRM URL without a scheme": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_AMOCRM_URL",
                                        {"AMOJO_ETL_AMOCRM_URL": "example.amocrm.ru"}),
    "Chats API URL without a scheme": Case(["reconcile", *TODAY_RANGE], 2, "AMOJO_ETL_AMOJO_URL",
                                           {"AMOJO_ETL_AMOJO_URL": "127.0.0.1:8000"}),
    "amoCRM URL answering HTML": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_AMOCRM_URL",
                                      {"AMOJO_ETL_AMOCRM_URL": "{html}"}),
    "Chats API URL answering HTML": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_AMOJO_URL",
                                         {"AMOJO_ETL_AMOJO_URL": "{html}"}),
    "amoCRM server hangs": Case(["import", *TODAY_RANGE], 1, "AMOJO_ETL_TIMEOUT_S",
                                {"AMOJO_ETL_AMOCRM_URL": "{hang}", "AMOJO_ETL_TIMEOUT_S": "1"}),
    "wrong channel": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CHANNEL_ID",
                          {"AMOJO_ETL_CHANNEL_ID": "no-such-channel"}),
    "wrong account": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_ACCOUNT_ID",
                          {"AMOJO_ETL_ACCOUNT_ID": "00000000-0000-0000-0000-000000000000"}),
    "wrong channel secret": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CHANNEL_SECRET",
                                 {"AMOJO_ETL_CHANNEL_SECRET": "PLANTED-wrong-secret-1234"}),
    "wrong token": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_AMOCRM_TOKEN",
                        {"AMOJO_ETL_AMOCRM_TOKEN": "PLANTED-wrong-token-5678"}),
    "mapping: messages = 5": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_MAPPING",
                                  {"AMOJO_ETL_MAPPING": "{tmp}/m.toml"}, {"m.toml": BAD_MAPPING_TYPE}),
    'mapping: queries = "oops"': Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_MAPPING",
                                      {"AMOJO_ETL_MAPPING": "{tmp}/m.toml"}, {"m.toml": 'queries = "oops"\n'}),
    "mapping file missing": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_MAPPING",
                                 {"AMOJO_ETL_MAPPING": "{tmp}/none.toml"}),
    "empty secret, no block": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CHANNEL_SECRET",
                                   {"AMOJO_ETL_CHANNEL_SECRET": ""}),
    "unknown time zone": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_TIMEZONE",
                              {"AMOJO_ETL_TIMEZONE": "Mars/Olympus"}),
    "year 0001 in Tokyo": Case(["import", "--start", "0001-01-01", "--end", "0001-01-02", "--dry-run"], 2,
                               "1970", {"AMOJO_ETL_TIMEZONE": "Asia/Tokyo"}),
    "import in 2100": Case(["import", "--start", "2100-01-01", "--end", "2100-01-02"], 2, "future"),
    "backfill in 2100": Case(["backfill", "--start", "2100-01-01", "--end", "2100-01-02"], 2, "future"),
    "rejects --csv into a missing directory": Case(["rejects", "--csv", "{tmp}/no/such/dir/r.csv"], 2, "--csv"),
    "sample-data --url garbage": Case(["sample-data", "--url", f"postgres ql://etl:{PASSWORD}@db/x"], 2, "--url"),
    "sample-data --url closed port": Case(["sample-data", "--url",
                                           f"postgresql+psycopg://etl:{PASSWORD}@127.0.0.1:{{closed}}/x"], 2,
                                          "--url"),
    "end before start": Case(["import", "--start", "2026-10-02", "--end", "2026-10-01"], 2, "end"),
}


def _invoke(case: Case, env: dict[str, str], servers: Servers, tmp_path: Path,
            prefix: list[str] | None = None) -> str:
    """Run the case's command; its whole output (stdout and stderr), after checking the exit status."""
    for name, content in case.files.items():
        (tmp_path / name).write_text(content)
    fill: Callable[[str], str] = lambda value: value.format(  # noqa: E731
        tmp=tmp_path, closed=servers.closed_port, html=servers.html_url, hang=servers.hang_url)
    result = CliRunner().invoke(cli.app, [*(prefix or []), *map(fill, case.args)],
                                env={**env, **{k: fill(v) for k, v in case.env.items()}})
    output = result.output
    assert result.exit_code == case.exit_code, output
    return output


def _assert_one_line(output: str, names: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    lines = output.rstrip("\n").splitlines()
    assert lines[-1] == errors[0], output  # the error line is the last, nothing wraps it onto another
    assert names in errors[0], output
    assert "Traceback" not in output, output
    for secret in PLANTED:
        assert secret not in output, output


@pytest.mark.parametrize("case", PREFLIGHT.values(), ids=PREFLIGHT.keys())
def test_misconfiguration_ends_in_one_line_before_prefect_starts(
        case: Case, working_env: dict[str, str], servers: Servers, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_prefect(*args: object, **kwargs: object) -> None:
        pytest.fail("a flow was started: this misconfiguration must be caught before Prefect starts")

    monkeypatch.setattr(cli, "_run", no_prefect)
    output = _invoke(case, working_env, servers, tmp_path)
    _assert_one_line(output, case.names)


def test_a_hanging_server_fails_within_the_timeout(working_env: dict[str, str], servers: Servers,
                                                   tmp_path: Path) -> None:
    import time

    began = time.monotonic()
    _invoke(PREFLIGHT["amoCRM server hangs"], working_env, servers, tmp_path)
    assert time.monotonic() - began < 10  # one request of AMOJO_ETL_TIMEOUT_S=1, not every retry of the run


def test_debug_shows_the_traceback(working_env: dict[str, str], servers: Servers, tmp_path: Path) -> None:
    case = PREFLIGHT["ledger URL garbage (status)"]
    assert "Traceback" in _invoke(case, working_env, servers, tmp_path, prefix=["--debug"])
    assert "Traceback" in _invoke(case, {**working_env, "AMOJO_ETL_DEBUG": "1"}, servers, tmp_path)


def test_a_defect_is_one_line_too(working_env: dict[str, str], servers: Servers, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An error no one expected is not dressed up as a misconfiguration: exit 1, it says to report it."""
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError(f"oops {CHANNEL_SECRET}")

    monkeypatch.setattr(cli, "_run_import", broken)
    output = _invoke(Case(["import", *TODAY_RANGE], 1, "--debug"), working_env, servers, tmp_path)
    _assert_one_line(output, "report it")


FAILING_MAPPING = """[queries]
messages = "SELECT id, conversation_id, created_at, updated_at, direction, manager_id, type, json(text) AS text, \
media_url, file_name, file_size, lat, lon, contact_name, contact_phone FROM messages \
WHERE created_at >= :start AND created_at < :end"
conversations = "SELECT id, client_id, created_at FROM conversations"
clients = "SELECT id, name, phone, email, avatar_url, profile_url FROM clients"
managers = "SELECT id, name, email FROM managers"
"""

IN_RUN: dict[str, Case] = {
    "mapping query failing on the rows": Case(["import", *SAMPLE_RANGE, "--dry-run"], 2, "AMOJO_ETL_MAPPING",
                                              {"AMOJO_ETL_MAPPING": "{tmp}/m.toml"}, {"m.toml": FAILING_MAPPING}),
    "empty secret beside a _BLOCK setting": Case(["import", *TODAY_RANGE], 2, "AMOJO_ETL_CHANNEL_SECRET_BLOCK",
                                                 {"AMOJO_ETL_CHANNEL_SECRET": "",
                                                  "AMOJO_ETL_CHANNEL_SECRET_BLOCK": "no-such-block"}),
}


@pytest.fixture(scope="module")
def prefect_logs(prefect_harness: None) -> Iterator[io.StringIO]:
    """What Prefect's console log handlers print during a flow run, written here (set up inside a CliRunner call,
    they would write to that call's stream, closed after it)."""
    import logging

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    buffer = io.StringIO()
    handlers = {h for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]
                if isinstance(logger, logging.Logger) for h in logger.handlers if isinstance(h, PrefectConsoleHandler)}
    assert handlers
    for handler in handlers:
        handler.console.file = buffer
    yield buffer


@pytest.mark.prefect
@pytest.mark.parametrize("case", IN_RUN.values(), ids=IN_RUN.keys())
def test_misconfiguration_found_in_the_run_ends_in_one_line(
        case: Case, working_env: dict[str, str], servers: Servers, tmp_path: Path,
        prefect_logs: io.StringIO) -> None:
    prefect_logs.seek(0)
    prefect_logs.truncate()
    output = _invoke(case, working_env, servers, tmp_path)
    _assert_one_line(output, case.names)
    logged = prefect_logs.getvalue()
    assert "Finished in state Failed" in logged  # the flow did run
    assert "Traceback" not in logged, logged
    for secret in PLANTED:
        assert secret not in logged, logged


def test_a_finished_run_exits_with_its_verdict_and_no_error(working_env: dict[str, str], servers: Servers,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """typer's own exit (the verdict's status) is no failure to report."""
    from etl.summary import RunSummary

    summary = RunSummary(interval="2026-10-01..2026-10-02").as_dict()
    for verdict, code in (("complete", 0), ("incomplete", 1)):
        monkeypatch.setattr(cli, "_run_import", lambda *args, v=verdict: ({**summary, "verdict": v}, None))
        output = _invoke(Case(["import", *TODAY_RANGE], code, ""), working_env, servers, tmp_path)
        assert "error" not in output, output


def test_a_blocked_account_stops_the_command_at_its_first_html_403(working_env: dict[str, str], source: str,
                                                                    tmp_path: Path) -> None:
    """amojo-api.md §5.2: an account blocked for overrunning the REST limit answers 403 with an HTML page; the
    command stops at the first such answer with one line saying what happened and what to do (exit 1: the
    settings are right, the account cannot be used now), rather than retrying into the block."""
    import httpx

    config = EmulatorConfig(channel_secret=CHANNEL_SECRET, token=TOKEN, rest_rate=1.0, rest_block_after=1)
    with start(config) as running:
        for _ in range(2):  # one a second: the second overruns the limit, which blocks the account
            httpx.get(f"{running.url}/api/v4/account", headers={"Authorization": f"Bearer {TOKEN}"})
        running.emulator.request_log.clear()
        env = {**working_env, "AMOJO_ETL_AMOJO_URL": running.url, "AMOJO_ETL_AMOCRM_URL": running.url}
        result = CliRunner().invoke(cli.app, ["import", *TODAY_RANGE], env=env)
        log = [(api, endpoint, status) for _, api, endpoint, status in running.emulator.request_log]
    assert result.exit_code == 1, result.output
    _assert_one_line(result.output, "blocked")
    assert "AMOJO_ETL_REST_RATE" in result.output and "wait" in result.output
    assert log == [("rest", "account", 403)]  # the first answer was the block's, and nothing followed it


@pytest.mark.parametrize("endpoint, status", [("account", 502), ("account", 503), ("connect", 502)])
def test_a_transient_answer_to_the_preflight_is_retried_and_the_run_goes_on(
        endpoint: str, status: int, working_env: dict[str, str], servers: Servers, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One 5xx from amoCRM before the run starts is a blip, retried by the transport's one rule: the run starts;
    only definitive answers (401, 403, 404, a refused connection) stop it there (the cases of `PREFLIGHT`)."""
    from amojo.emulator.config import Faults

    started: list[str] = []

    def run(flow: object, **parameters: object) -> tuple[None, str]:
        started.append(getattr(flow, "name", str(flow)))
        return None, "stopped here: the test needs only the preflight"

    monkeypatch.setattr(cli, "_run", run)
    emulator = servers.emulator.emulator
    emulator.set_faults(Faults(script=[{"endpoint": endpoint, "status": status}]))
    try:
        result = CliRunner().invoke(cli.app, ["import", *TODAY_RANGE], env=working_env)
        assert started == ["import-chats"], result.output
        assert emulator.injector.script_left() == []  # the blip was served, and the request sent again
    finally:
        emulator.set_faults(Faults())
