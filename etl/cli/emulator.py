"""`amojo-etl emulator`: its options generated from the emulator's config (`EmulatorConfig` and its `Faults`).

Each config field named in `OPTIONS` is an option with the field's default and the help text of its metadata; a
`Literal` field takes one of its values, a `float | None` rate takes 0 for None ("no limit"), a `*_path` field a
file, and the two repeated options (`--error-rate STATUS=RATE`, `--lost-answer-endpoint`) fill a dict and a tuple.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, Field, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from amojo.emulator.config import EmulatorConfig, Faults

from .render import console

IDENTITY = ("channel_id", "channel_secret", "account_id", "token", "bot_id")
"""Each from its flag, else the importer's variable, else the importer's settings file, else the demo's."""
SWITCHES = ("state_path", "users_path", "duplicate_msgid", "content_md5", "legacy_signatures", "history_limit",
            "text_limit", "ref_id_participants", "participant_updates", "max_body_bytes", "rest_batch_max", "rest_rate",
            "rest_block_after", "rest_block_window_s", "rest_block_s", "amojo_rate", "fetch_media",
            "fetch_media_timeout_s", "fetch_media_concurrency")
FAULTS = ("seed", "latency_ms", "jitter_ms", "error_rates", "retry_after", "retry_after_s", "lost_answer_rate",
          "lost_answer_endpoints", "hang_rate", "hang_seconds", "history_lag_ms", "late_commit_rate",
          "late_commit_ms", "late_commit_endpoints")
"""The fields that are options, in the order --help lists them (the rest, such as `users` or `script`, are not)."""

_FIELDS = {f.name: f for f in fields(EmulatorConfig)} | {f.name: f for f in fields(Faults)}
_TYPES = typing.get_type_hints(EmulatorConfig) | typing.get_type_hints(Faults)


def _option_type(name: str) -> tuple[Any, Any]:
    """The type the command line takes for field `name`, and its default there."""
    kind, field = _TYPES[name], _FIELDS[name]
    default = field.default if field.default is not MISSING else field.default_factory()  # type: ignore[misc]
    if name in IDENTITY:
        return str | None, None  # unset: from the environment, the settings file or the demo (`_identity`)
    if name.endswith("_path"):
        return Path | None, None
    if typing.get_origin(kind) is typing.Literal:
        choices = StrEnum(name, {value.replace("-", "_"): value for value in typing.get_args(kind)})  # type: ignore
        return choices, choices(default)
    if kind == float | None:
        return float, default or 0.0  # 0: no limit
    if typing.get_origin(kind) in (dict, tuple):
        return list[str] | None, None  # repeated
    return kind, default


def _parameter(name: str) -> inspect.Parameter:
    field: Field[Any] = _FIELDS[name]
    kind, default = _option_type(name)
    meta = field.metadata
    flags = [meta["flag"]] if "flag" in meta else []
    option = typer.Option(*flags, envvar=meta.get("env"), help=meta["help"], show_default=not meta.get("secret"))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, option])


def _fixed(name: str, kind: Any, default: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])


PARAMETERS = [
    _fixed("port", int, 8000, typer.Option(help="port to listen on")),
    _fixed("host", str, "127.0.0.1", typer.Option(help="address to bind")),
    *map(_parameter, IDENTITY),
    _fixed("config_file", Path | None, None, typer.Option(
        "--config", envvar="AMOJO_ETL_CONFIG",
        help="TOML file with channel_id, channel_secret, account_id, amocrm_token, bot_id: the importer's own "
             "settings file, for what neither a flag nor the environment gives")),
    *map(_parameter, SWITCHES + FAULTS),
]


def emulator(**given: Any) -> None:
    """Run the local amoCRM stand-in (Chats API + REST v4 subset) in the foreground.

    Faults can also be changed while it runs: POST /_emulator/faults with the same names as JSON.
    """
    from amojo.emulator import server

    try:
        faults = Faults(**{name: _value(name, given[name]) for name in FAULTS})
        config = EmulatorConfig(**{name: _value(name, given[name]) for name in SWITCHES}, faults=faults)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    chosen = _identity(given["config_file"], **{name: given[name] for name in IDENTITY})
    for name, value in chosen.items():
        setattr(config, name, value)
    _print_settings(config, f"http://{given['host']}:{given['port']}", chosen)
    server.serve(config, host=given["host"], port=given["port"])


emulator.__signature__ = inspect.Signature(PARAMETERS)  # type: ignore[attr-defined]
emulator.__annotations__ = {parameter.name: parameter.annotation for parameter in PARAMETERS}


def _value(name: str, value: Any) -> Any:
    """An option's value as the config's field takes it."""
    kind = _TYPES[name]
    if isinstance(value, StrEnum):
        return value.value
    if name.endswith("_path"):
        return str(value) if value else None
    if kind == float | None:
        return value or None
    if typing.get_origin(kind) is dict:
        return _error_rates(value or [])
    if typing.get_origin(kind) is tuple:
        return tuple(value or _FIELDS[name].default)
    return value


def _error_rates(values: list[str]) -> dict[int, float]:
    rates = {}
    for value in values:
        status, _, rate = value.partition("=")
        try:
            code, share = int(status), float(rate)
        except ValueError:
            code, share = 0, -1.0
        if not (400 <= code <= 599 and 0 <= share <= 1):
            raise typer.BadParameter(f"{value!r}: use STATUS=RATE with a STATUS from 400 to 599 and a RATE from 0 to 1,"
                                     " e.g. 503=0.05")
        rates[code] = share
    return rates


def _identity(config_file: Path | None, **given: str | None) -> dict[str, str]:
    """The emulator's channel and account: each from its flag or variable (the names the importer reads), else
    from the settings file, else the demo's (left out here). The secrets never need to be on the command line."""
    from ..settings import config_file_values

    from_file = config_file_values(str(config_file)) if config_file else {}
    from_file = {"token" if k == "amocrm_token" else k: v for k, v in from_file.items()}
    chosen = {name: value if value else from_file.get(name) for name, value in given.items()}
    return {name: str(value) for name, value in chosen.items() if value}


def importer_env(config: EmulatorConfig, url: str, *, account: bool = True) -> dict[str, str]:
    """The importer's settings for an emulator at `url` (AMOJO_ETL_*), with the account's id or without."""
    env = {"AMOJO_ETL_AMOJO_URL": url, "AMOJO_ETL_AMOCRM_URL": url, "AMOJO_ETL_CHANNEL_ID": config.channel_id,
           "AMOJO_ETL_CHANNEL_SECRET": config.channel_secret, "AMOJO_ETL_AMOCRM_TOKEN": config.token}
    if account:
        env["AMOJO_ETL_ACCOUNT_ID"] = config.account_id
    return {**env, "AMOJO_ETL_BOT_ID": config.bot_id}


def _print_settings(config: EmulatorConfig, url: str, given: dict[str, str]) -> None:
    """Lines a shell takes as they are: paste them where the importer (or a Prefect worker) runs. A secret given
    is not printed."""
    hidden = {f"AMOJO_ETL_{name.upper()}" for name in ("channel_secret", "amocrm_token")
              if given.get("token" if name == "amocrm_token" else name)}
    lines = [f"# {name}: as given" if name in hidden else f"export {name}={value}"
             for name, value in importer_env(config, url).items()]
    console.print(Text("\n".join([f"# amoCRM emulator on {url}; the importer's settings for it:", *lines,
                                  f"# {users_line(config)}",
                                  f"# the chats as amoCRM shows them: {view_url(url)}",
                                  f"# inspect: {url}/_emulator/state   faults: {url}/_emulator/faults"])),
                  soft_wrap=True)


def view_url(url: str) -> str:
    """The address of the emulator's pages (amoCRM's view of the chats) for an emulator at `url`."""
    from amojo.emulator.views import VIEW_PATH

    return f"{url}{VIEW_PATH}"


def users_line(config: EmulatorConfig) -> str:
    """Which amoCRM users the emulator has: the importer matches managers to them by email."""
    where = f"from {config.users_path}" if config.users_path else "(the demo's; --users FILE for your own)"
    named = ", ".join(f"{u.name} <{u.email}>" + ("" if u.amojo_id else " (no amojo_id: sent as the bot)")
                      for u in config.users)
    return f"{len(config.users)} users {where}: {named}"
