"""`amojo-etl emulator` takes its channel and account from the importer's own variables or settings file, so that
its secrets need not be on the command line where `ps` shows them to every user (issue 14, point 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from amojo.emulator import server
from etl import cli

SECRET = "PLANTED-emulator-secret-31"
TOKEN = "PLANTED-emulator-token-42"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs the command would serve, instead of serving them."""
    configs: list[Any] = []
    monkeypatch.setattr(server, "serve", lambda config, **kwargs: configs.append(config))
    for name in ("CHANNEL_ID", "CHANNEL_SECRET", "ACCOUNT_ID", "AMOCRM_TOKEN", "BOT_ID", "CONFIG"):
        monkeypatch.delenv(f"AMOJO_ETL_{name}", raising=False)
    return configs


def _run(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(cli.app, ["emulator", *args], env=env)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and TOKEN not in result.output
    return result.output


def test_secrets_from_the_importers_variables(served: list[Any]) -> None:
    output = _run([], {"AMOJO_ETL_CHANNEL_SECRET": SECRET, "AMOJO_ETL_AMOCRM_TOKEN": TOKEN,
                       "AMOJO_ETL_CHANNEL_ID": "chan-1", "AMOJO_ETL_ACCOUNT_ID": "acc-1"})
    (config,) = served
    assert (config.channel_secret, config.token, config.channel_id, config.account_id) == \
        (SECRET, TOKEN, "chan-1", "acc-1")
    assert "# AMOJO_ETL_CHANNEL_SECRET: as given" in output and "# AMOJO_ETL_AMOCRM_TOKEN: as given" in output


def test_secrets_from_the_settings_file(served: list[Any], tmp_path: Path) -> None:
    settings = tmp_path / "amojo-etl.toml"
    settings.write_text(f'channel_secret = "{SECRET}"\namocrm_token = "{TOKEN}"\nbot_id = "bot-1"\n')
    _run(["--config", str(settings)], {})
    _run([], {"AMOJO_ETL_CONFIG": str(settings)})
    assert [(c.channel_secret, c.token, c.bot_id) for c in served] == [(SECRET, TOKEN, "bot-1")] * 2


def test_a_flag_wins_over_the_environment_which_wins_over_the_file(served: list[Any], tmp_path: Path) -> None:
    settings = tmp_path / "amojo-etl.toml"
    settings.write_text('channel_secret = "from-file"\namocrm_token = "token-from-file"\n')
    _run(["--channel-secret", "from-flag"], {"AMOJO_ETL_CHANNEL_SECRET": SECRET, "AMOJO_ETL_CONFIG": str(settings)})
    _run([], {"AMOJO_ETL_CHANNEL_SECRET": SECRET, "AMOJO_ETL_CONFIG": str(settings)})
    assert [(c.channel_secret, c.token) for c in served] == [("from-flag", "token-from-file"),
                                                             (SECRET, "token-from-file")]


def test_without_any_the_demo_credentials_are_printed(served: list[Any]) -> None:
    from amojo.emulator.config import EmulatorConfig

    output = _run([], {})
    assert f"AMOJO_ETL_CHANNEL_SECRET={EmulatorConfig().channel_secret}" in output


def test_the_printed_settings_are_lines_a_shell_takes(served: list[Any]) -> None:
    import subprocess

    output = _run(["--port", "8123"], {})
    shown = subprocess.run(["bash", "-c", f"{output}\nenv"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                           text=True, check=True).stdout
    (config,) = served
    assert "AMOJO_ETL_AMOJO_URL=http://127.0.0.1:8123" in shown.splitlines()
    assert f"AMOJO_ETL_CHANNEL_SECRET={config.channel_secret}" in shown.splitlines()


def test_every_fidelity_switch_has_its_flag(served: list[Any]) -> None:
    _run(["--ref-id-participants", "accept", "--participant-updates", "keep", "--max-body-bytes", "4096",
          "--rest-batch-max", "60"], {})
    (config,) = served
    assert (config.ref_id_participants, config.participant_updates, config.max_body_bytes, config.rest_batch_max) \
        == ("accept", "keep", 4096, 60)


def test_help_never_shows_a_secret_from_the_environment(served: list[Any]) -> None:
    result = CliRunner().invoke(cli.app, ["emulator", "--help"], env={"AMOJO_ETL_CHANNEL_SECRET": SECRET,
                                                                      "AMOJO_ETL_AMOCRM_TOKEN": TOKEN})
    assert result.exit_code == 0 and SECRET not in result.output and TOKEN not in result.output


def test_a_broken_settings_file_is_one_line(served: list[Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["emulator", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "none.toml" in result.output and not served
