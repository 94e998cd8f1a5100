"""The emulator's amoCRM users come from a users file, so that a rehearsal attributes agent messages to its own
managers instead of sending them all as the bot (issue 27, point 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from amojo.emulator import server
from amojo.emulator.config import DEMO_USERS, EmulatorConfig
from amojo.emulator.users import derived_amojo_id, load_users
from etl import cli
from etl.sample import MANAGERS

USERS = """
[[users]]
name = "Ines Ortega"
email = "ines@chatwoot.example"

[[users]]
name = "Kofi Mensah"
email = "kofi@chatwoot.example"
amojo_id = "5f0c0000-0000-4000-8000-000000000001"
id = 77

[[users]]
name = "No Chats"
email = "nochats@chatwoot.example"
amojo_id = ""
"""


def _users_file(tmp_path: Path, text: str = USERS) -> str:
    path = tmp_path / "users.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_users_file_is_the_accounts_users_as_rest_answers_them(tmp_path: Path) -> None:
    config = EmulatorConfig(users_path=_users_file(tmp_path))
    with server.start(config) as running:
        answer = httpx.get(f"{running.url}/api/v4/users", params={"with": "amojo_id"},
                           headers={"Authorization": f"Bearer {config.token}"})
    users = {u["email"]: (u["id"], u["name"], u.get("amojo_id")) for u in answer.json()["_embedded"]["users"]}
    assert users == {
        "ines@chatwoot.example": (1001, "Ines Ortega", derived_amojo_id("ines@chatwoot.example")),
        "kofi@chatwoot.example": (77, "Kofi Mensah", "5f0c0000-0000-4000-8000-000000000001"),
        "nochats@chatwoot.example": (1003, "No Chats", None),
    }


def test_an_omitted_amojo_id_is_the_same_for_the_same_email(tmp_path: Path) -> None:
    first, second = load_users(_users_file(tmp_path)), load_users(_users_file(tmp_path))
    assert first[0].amojo_id == second[0].amojo_id and first[0].amojo_id != first[1].amojo_id


@pytest.mark.parametrize(("text", "says"), [
    ("name = 'x'", "must hold [[users]] tables"),
    ("[[users]]\nname = 'Ines'\n", "email is required"),
    ("[[users]]\nname = 'Ines'\nemail = 'ines@x'\nrole = 'admin'\n", "unknown keys role"),
    ("[[users]]\nname = 'A'\nemail = 'a@x'\n[[users]]\nname = 'B'\nemail = 'A@x'\n", "two users have email a@x"),
    ("[[users]\n", "is not valid TOML"),
])
def test_a_bad_users_file_says_what_to_fix(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r".*users.toml.*") as raised:
        load_users(_users_file(tmp_path, text))
    assert says in str(raised.value)


def test_the_demo_users_are_the_sample_managers_that_amocrm_knows() -> None:
    """The demo's managers show under their names: every demo user is a sample manager, by email."""
    managers = dict(zip(MANAGERS["email"], MANAGERS["name"], strict=True))
    assert {u.email: u.name for u in DEMO_USERS if u.amojo_id} == \
        {email: managers[email] for email in ("anna@example.com", "boris@example.com", "claire@example.com")}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs `amojo-etl emulator` would serve, instead of serving them."""
    configs: list[Any] = []
    monkeypatch.setattr(server, "serve", lambda config, **kwargs: configs.append(config))
    for name in ("CONFIG", "EMULATOR_USERS"):
        monkeypatch.delenv(f"AMOJO_ETL_{name}", raising=False)
    return configs


def test_the_emulator_command_takes_a_users_file(served: list[Any], tmp_path: Path) -> None:
    path = _users_file(tmp_path)
    by_flag = CliRunner().invoke(cli.app, ["emulator", "--users", path])
    by_variable = CliRunner().invoke(cli.app, ["emulator"], env={"AMOJO_ETL_EMULATOR_USERS": path})
    assert by_flag.exit_code == 0 and by_variable.exit_code == 0, by_flag.output + by_variable.output
    assert [[u.name for u in c.users] for c in served] == [["Ines Ortega", "Kofi Mensah", "No Chats"]] * 2
    assert "3 users from" in by_flag.output


def test_a_bad_users_file_stops_the_emulator_command_with_its_reason(served: list[Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["emulator", "--users", _users_file(tmp_path, "[[users]]\nname = 'x'\n")])
    said = " ".join(result.output.replace("│", " ").split())  # the error's box may wrap it
    assert result.exit_code == 2 and "email is required" in said and not served


def test_the_example_users_file_is_the_sample_managers() -> None:
    """docs/emulator-users.toml, the README's example, loads, and its users are sample managers by email."""
    users = load_users(str(Path(__file__).parent.parent / "docs" / "emulator-users.toml"))
    assert {u.email for u in users} <= set(MANAGERS["email"])
    assert [u.amojo_id is None for u in users] == [False, False, False, True]
