"""Typed settings: the environment (`AMOJO_ETL_*`), or a TOML file named by `AMOJO_ETL_CONFIG`; the environment wins."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DB = PROJECT_DIR / "data" / "sample.db"


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Settings(BaseSettings):
    """Everything a run needs to know; secrets are `SecretStr` so they never print."""

    model_config = SettingsConfigDict(env_prefix="AMOJO_ETL_", extra="ignore")

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
        config_file = os.environ.get("AMOJO_ETL_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("source_timezone", "timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Moscow") from exc
        return value

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
        problems = "; ".join(
            f"AMOJO_ETL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
