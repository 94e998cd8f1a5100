"""Typed settings: the environment (`AMOJO_ETL_*`), or a TOML file named by `AMOJO_ETL_CONFIG`; the environment wins."""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigurationError
from .media import MAX_PRESIGN_S

__all__ = ["ConfigurationError", "Settings", "load_settings", "with_secret_blocks"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DB = PROJECT_DIR / "data" / "sample.db"
CONFIG_VARIABLE = "AMOJO_ETL_CONFIG"
AMOCRM_DOMAINS = (".amocrm.ru", ".amocrm.com", ".kommo.com")
"""Hosts whose subdomain names the account."""


def config_file_values(path: str) -> dict[str, Any]:
    """The settings of the TOML file `AMOJO_ETL_CONFIG` names; a missing, unreadable or malformed file, or a key
    that is no setting (a typo would otherwise be dropped silently), is a `ConfigurationError`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"{CONFIG_VARIABLE} names {path}, which is not a file: create it, or unset "
                                 f"{CONFIG_VARIABLE}")
    try:
        values = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path} ({CONFIG_VARIABLE}): {exc.__class__.__name__}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} ({CONFIG_VARIABLE}) is not valid TOML: {exc}; write one setting a "
                                 'line, e.g. channel_id = "..."') from None
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigurationError(
            f"{path} ({CONFIG_VARIABLE}) has keys that are no setting: {', '.join(unknown)}; keys are the "
            "variables' names without AMOJO_ETL_, in lower case (channel_id, amocrm_url, ...; see README, "
            "Configuration)")
    return values


def database_url(value: str) -> str:
    """`value` if SQLAlchemy can parse it and has its dialect and driver; else a message that shows no password."""
    import sqlalchemy as sa

    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError:
        raise ValueError("not a SQLAlchemy URL: write the dialect and driver, ://, then the database, e.g. "
                         "postgresql+psycopg://etl@db.example.com:5432/chats or sqlite:///path/to/file.db") from None
    try:
        dialect = url.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ValueError(f"no SQLAlchemy dialect or driver {url.drivername!r}: use one of postgresql+psycopg, "
                         "mysql+pymysql, sqlite (or install the driver's package)") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ValueError(f"the driver of {url.drivername!r} is not installed ({exc.name or exc}): use "
                         "postgresql+psycopg, mysql+pymysql or sqlite, which are") from None
    return value


def _http_url(value: str) -> str:
    """`value` if it is an http(s) URL with a host (https://SUBDOMAIN.amocrm.ru); never echoes it back."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host: write it whole, e.g. https://SUBDOMAIN.amocrm.ru")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("its port is not a number: write it as https://HOST or http://HOST:PORT") from None
    return value.strip()


class Settings(BaseSettings):
    """Everything a run needs to know; secrets are `SecretStr` so they never print."""

    # An empty variable is an unset one (AMOJO_ETL_CHANNEL_SECRET= beside a _BLOCK setting means "from the block").
    model_config = SettingsConfigDict(env_prefix="AMOJO_ETL_", extra="ignore", env_ignore_empty=True)

    source_url: str = Field(default=f"sqlite:///{SAMPLE_DB}", description="SQLAlchemy URL of the source database")
    mapping: Path | None = Field(default=None, description="mapping file for a non-canonical source schema")
    source_timezone: str = Field(default="UTC", description="zone of naive source timestamps")
    timezone: str = Field(default="UTC", description="zone of data intervals and schedules")
    state_url: str = Field(default="sqlite:///.amojo-etl/ledger.db", description="SQLAlchemy URL of the ledger")
    amojo_url: str = Field(default="https://amojo.amocrm.ru", description="Chats API base URL")
    channel_id: str | None = None
    channel_secret: SecretStr | None = None
    channel_secret_block: str | None = Field(
        default=None, description="name of a Prefect Secret block that holds the channel secret")
    account_id: str | None = Field(default=None, description="the account's amojo_id; looked up when unset")
    amocrm_url: str | None = None
    amocrm_token: SecretStr | None = None
    amocrm_token_block: str | None = Field(
        default=None, description="name of a Prefect Secret block that holds the REST v4 token")
    oauth_client_id: str | None = Field(default=None, description="OAuth integration id, instead of a long-lived token")
    oauth_client_secret: SecretStr | None = None
    oauth_redirect_uri: str | None = None
    oauth_refresh_token: SecretStr | None = Field(
        default=None, description="the first refresh token; the ledger keeps every pair that follows")
    bot_id: str | None = None
    id_prefix: str = "ae-"
    rest_rate: float = Field(default=7.0, gt=0, description="REST v4 requests per second")
    amojo_rate: float | None = Field(default=None, gt=0, description="Chats API requests per second (none: unlimited)")
    concurrency: int = Field(default=32, ge=1, le=256, description="conversations sent at once")
    shared_rate_limit: str | None = Field(
        default=None, description="name of a Prefect global concurrency limit (slot decay = requests/s) that all runs "
                                  "for this account draw their Chats API budget from")
    shared_rest_rate_limit: str | None = Field(
        default=None, description="name of a Prefect global concurrency limit (slot decay = requests/s) that all runs "
                                  "for this account draw their REST v4 budget from")
    claim_timeout_s: float = Field(
        default=60.0, ge=3, description="seconds after which the work of a run that stopped renewing its claims "
                                        "(killed, or stalled) is taken over by another run")
    timeout_s: float = Field(default=30.0, gt=0)
    chunk_size: int = Field(default=50_000, ge=100, description="source messages read and transformed at a time")
    text_limit: int | None = Field(default=None, ge=1, description="longest text sent; longer ones are rejected")
    media_base_url: str | None = Field(
        default=None,
        description="where the source's stored files are fetched from: an http(s) base URL, or s3://bucket/prefix/ "
                    "(presigned when sent); a mapping's queries read it as :media_base_url and append each file's key")
    lookback_days: int = Field(
        default=3, ge=0, le=31,
        description="days before its own that a scheduled run reads again, to send rows that arrived late (a replica "
                    "catching up over a weekend, a phone synced days later); an unchanged day costs its source "
                    "query and nothing else")

    media_check: Literal["off", "dry-run", "always"] = Field(
        default="off",
        description="whether media URLs are asked if they answer (one HEAD each): off; in dry runs; or in dry runs "
                    "and before sending. Off by default: a run without internet must still end complete")
    media_unreachable: Literal["reject", "send"] = Field(
        default="reject",
        description="what becomes of a new message whose media URL did not answer the check: rejected "
                    "(media_unreachable, listed by `amojo-etl rejects`), or sent all the same")
    media_url_expiry_s: int = Field(
        default=MAX_PRESIGN_S, ge=60, le=MAX_PRESIGN_S,
        description="seconds an s3:// media URL stays valid once presigned (at most 7 days, SigV4's limit): "
                    "amoCRM downloads the file from the URL itself, possibly later than the import")
    media_timeout_s: float = Field(default=10.0, gt=0, le=300,
                                   description="seconds a media URL has to answer its HEAD request")
    media_concurrency: int = Field(default=8, ge=1, le=64, description="media URLs asked at once")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_VARIABLE)
        if config_file:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=config_file_values(config_file)))
        return tuple(sources)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """A blank optional setting (`channel_secret = ""` in the file) is an unset one, as in the environment."""
        if isinstance(value, str) and not value.strip() and info.field_name \
                and cls.model_fields[info.field_name].default is None:
            return None
        return value

    @field_validator("source_url", "state_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return database_url(value)

    @field_validator("amojo_url", "amocrm_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("media_base_url")
    @classmethod
    def _media_base(cls, value: str | None) -> str | None:
        if value is None or urlsplit(value).scheme == "s3" and urlsplit(value).hostname:
            return value
        return _http_url(value)

    @field_validator("mapping")
    @classmethod
    def _mapping_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file: give the path of a mapping file (see README, Another schema)")
        return value

    @field_validator("source_timezone", "timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Moscow") from exc
        return value

    @property
    def account_tags(self) -> list[str]:
        """The tags that tell this channel's and account's runs apart on a server serving several:
        `channel:<channel_id>` and, when set, `account:<account_id>`."""
        return [f"{kind}:{value}" for kind, value in (("channel", self.channel_id), ("account", self.account_id))
                if value]

    @property
    def account(self) -> str | None:
        """The amoCRM account by name: the subdomain of `amocrm_url` (mycompany of mycompany.amocrm.ru), another
        host by its name and port (a stand-in); None without a URL."""
        if not self.amocrm_url:
            return None
        url = urlsplit(self.amocrm_url)
        host = (url.hostname or "").lower().rstrip(".")  # mycompany.amocrm.ru. is mycompany.amocrm.ru
        with contextlib.suppress(UnicodeError):  # a name in another script keeps a name in the key
            host = host.encode("idna").decode("ascii")
        subdomain = next((host[:-len(d)] for d in AMOCRM_DOMAINS if host.endswith(d)), None)
        return subdomain or (f"{host}:{url.port}" if url.port else host)

    @property
    def mapping_parameters(self) -> dict[str, Any]:
        """The settings a mapping's queries may read as `:name` parameters."""
        return {"media_base_url": self.media_base_url}

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def source_zone(self) -> ZoneInfo:
        return ZoneInfo(self.source_timezone)

    def require_api(self) -> None:
        """Fail before the first request when a credential is missing, naming the variable to set."""
        missing = [f"AMOJO_ETL_{name.upper()}" for name in ("channel_id", "amocrm_url") if not getattr(self, name)]
        if not (self.channel_secret or self.channel_secret_block):
            missing.append("AMOJO_ETL_CHANNEL_SECRET (or AMOJO_ETL_CHANNEL_SECRET_BLOCK)")
        if not (self.amocrm_token or self.amocrm_token_block or (self.oauth_client_id and self.oauth_client_secret)):
            missing.append("AMOJO_ETL_AMOCRM_TOKEN (or AMOJO_ETL_AMOCRM_TOKEN_BLOCK, or the OAuth pair: "
                           "AMOJO_ETL_OAUTH_CLIENT_ID and AMOJO_ETL_OAUTH_CLIENT_SECRET)")
        if missing:
            raise ConfigurationError(
                f"missing {', '.join(missing)}: set them in the environment or in the TOML file named by "
                "AMOJO_ETL_CONFIG (see README, Configuration)"
            )


def with_secret_blocks(settings: Settings) -> Settings:
    """Fill the channel secret and the token from the Prefect Secret blocks named, where the environment gave none.

    Called inside a flow run, where the Prefect API is at hand; the environment wins over a block.
    """
    from prefect.blocks.system import Secret

    updates: dict[str, SecretStr] = {}
    for field, block in (("channel_secret", settings.channel_secret_block),
                         ("amocrm_token", settings.amocrm_token_block)):
        if block and getattr(settings, field) is None:
            try:
                updates[field] = SecretStr(str(Secret.load(block, _sync=True).get()))
            except ValueError as exc:
                raise ConfigurationError(f"no Prefect Secret block named {block!r} (AMOJO_ETL_{field.upper()}_BLOCK): "
                                         f"create it in the UI (Blocks -> Secret) or with Secret(value=...).save()") \
                    from exc
    return settings.model_copy(update=updates) if updates else settings


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's validation error into a `ConfigurationError` that says what to fix."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # err["msg"] never holds the value itself (a URL may carry a password); err["input"] is left out
        problems = "; ".join(
            f"AMOJO_ETL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        where = f" (in the environment or {os.environ[CONFIG_VARIABLE]})" if os.environ.get(CONFIG_VARIABLE) else ""
        raise ConfigurationError(f"invalid configuration{where}: {problems}") from None
