"""One run's connection to amoCRM: both clients, the account and the connected channel's scope."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from amojo.chats import ChatsClient
from amojo.rest import OAuthApp, RefreshingAuth, RestClient, TokenPair
from amojo.transport import TokenBucket

from .budget import CHATS_BATCH, REST_BATCH, SharedBudget
from .ledger import Ledger
from .settings import Settings


@dataclass
class Api:
    chats: ChatsClient
    rest: RestClient
    account_id: str
    scope_id: str
    timeout_s: float = 30.0  # HTTP timeout per phase of a request: a request sent may land this long after

    def guard(self, check: Callable[[], None]) -> None:
        """Call `check` before every request either client sends, retries included; it raises to stop them."""
        self.chats.guards.append(check)
        self.rest.guards.append(check)


@asynccontextmanager
async def open_api(settings: Settings, ledger: Ledger) -> AsyncIterator[Api]:
    """Open both clients, find the account's amojo_id if not configured, and connect the channel (idempotent)."""
    settings.require_api()
    assert settings.channel_id and settings.channel_secret and settings.amocrm_url
    chats = ChatsClient(
        settings.amojo_url,
        settings.channel_id,
        settings.channel_secret.get_secret_value(),
        timeout=settings.timeout_s,
        max_connections=settings.concurrency * 2,
        rate=settings.amojo_rate,
        budget=SharedBudget(settings.shared_rate_limit, CHATS_BATCH, "AMOJO_ETL_SHARED_RATE_LIMIT")
        if settings.shared_rate_limit else None,
    )
    rest = rest_client(settings, ledger)
    assert rest is not None
    try:
        account_id = settings.account_id or await rest.account_amojo_id()
        scope_id = await chats.connect(account_id)
        ledger.save_scope(settings.channel_id, account_id, scope_id)
        yield Api(chats, rest, account_id, scope_id, settings.timeout_s)
    finally:
        await chats.aclose()
        await rest.aclose()


class LedgerTokenStore:
    """The OAuth pair of one account, kept in the ledger so that every run and every worker shares it."""

    def __init__(self, ledger: Ledger, account: str) -> None:
        self._ledger = ledger
        self._account = account

    def load(self) -> TokenPair | None:
        pair = self._ledger.oauth_pair(self._account)
        return TokenPair(*pair) if pair else None

    def save(self, pair: TokenPair) -> None:
        self._ledger.save_oauth_pair(self._account, *pair)


def rest_client(settings: Settings, ledger: Ledger | None = None) -> RestClient | None:
    """The REST v4 client with a long-lived token or an OAuth pair; None when neither is configured."""
    if not settings.amocrm_url:
        return None
    if settings.amocrm_token:
        auth: httpx.Auth | str = settings.amocrm_token.get_secret_value()
    elif settings.oauth_client_id and settings.oauth_client_secret and ledger is not None:
        app = OAuthApp(settings.oauth_client_id, settings.oauth_client_secret.get_secret_value(),
                       settings.oauth_redirect_uri or "")
        first = settings.oauth_refresh_token.get_secret_value() if settings.oauth_refresh_token else None
        auth = RefreshingAuth(settings.amocrm_url, app, LedgerTokenStore(ledger, settings.amocrm_url), first)
    else:
        return None
    budget = (SharedBudget(settings.shared_rest_rate_limit, REST_BATCH, "AMOJO_ETL_SHARED_REST_RATE_LIMIT")
              if settings.shared_rest_rate_limit else None)
    return RestClient(settings.amocrm_url, auth, timeout=settings.timeout_s, budget=budget,
                      limiter=account_rest_limiter(settings.amocrm_url, settings.rest_rate))


_REST_LIMITERS: dict[tuple[str, float], TokenBucket] = {}
_REST_LIMITERS_LOCK = threading.Lock()


def account_rest_limiter(amocrm_url: str, rate: float) -> TokenBucket:
    """One REST v4 rate limit per account in this process: the days of a backfill, run side by side, share
    amoCRM's 7 requests/s instead of asking for 7 each."""
    key = (amocrm_url.rstrip("/").lower(), float(rate))
    with _REST_LIMITERS_LOCK:
        return _REST_LIMITERS.setdefault(key, TokenBucket(rate, burst=1))
