"""One run's connection to amoCRM: both clients, the account and the connected channel's scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from amojo.chats import ChatsClient
from amojo.rest import RestClient

from .ledger import Ledger
from .settings import Settings


@dataclass
class Api:
    chats: ChatsClient
    rest: RestClient
    account_id: str
    scope_id: str


@asynccontextmanager
async def open_api(settings: Settings, ledger: Ledger) -> AsyncIterator[Api]:
    """Open both clients, find the account's amojo_id if not configured, and connect the channel (idempotent)."""
    settings.require_api()
    assert settings.channel_id and settings.channel_secret and settings.amocrm_url and settings.amocrm_token
    chats = ChatsClient(
        settings.amojo_url,
        settings.channel_id,
        settings.channel_secret.get_secret_value(),
        timeout=settings.timeout_s,
        max_connections=settings.concurrency * 2,
        rate=settings.amojo_rate,
    )
    rest = rest_client(settings)
    assert rest is not None
    try:
        account_id = settings.account_id or await rest.account_amojo_id()
        scope_id = await chats.connect(account_id)
        ledger.save_scope(settings.channel_id, account_id, scope_id)
        yield Api(chats, rest, account_id, scope_id)
    finally:
        await chats.aclose()
        await rest.aclose()


def rest_client(settings: Settings) -> RestClient | None:
    """The REST v4 client, or None when its credentials are not configured."""
    if not (settings.amocrm_url and settings.amocrm_token):
        return None
    return RestClient(settings.amocrm_url, settings.amocrm_token.get_secret_value(), rate=settings.rest_rate,
                      timeout=settings.timeout_s)
