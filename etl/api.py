"""One run's connection to amoCRM: both clients, the account and the connected channel's scope."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from amojo.chats import ChatsClient
from amojo.errors import AmojoError, InvalidRequest, NotFound, Refused, Transient
from amojo.rest import OAuthApp, RefreshingAuth, RestClient, TokenPair
from amojo.transport import RetryPolicy, TokenBucket

from .budget import CHATS_BATCH, REST_BATCH, SharedBudget
from .errors import ConfigurationError, EtlError, RunError, classify
from .ledger import Ledger
from .settings import Settings

T = TypeVar("T")


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
    if not settings.channel_secret:
        raise ConfigurationError("no channel secret: set AMOJO_ETL_CHANNEL_SECRET, or name a Prefect Secret block "
                                 "that holds it in AMOJO_ETL_CHANNEL_SECRET_BLOCK")
    assert settings.channel_id and settings.amocrm_url  # require_api
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
    if rest is None:
        raise ConfigurationError("no amoCRM token: set AMOJO_ETL_AMOCRM_TOKEN, or name a Prefect Secret block that "
                                 "holds it in AMOJO_ETL_AMOCRM_TOKEN_BLOCK, or the OAuth pair")
    try:
        account_id = settings.account_id or await _account(rest, settings)
        scope_id = await _channel(chats, account_id, settings)
        ledger.account.save_scope(settings.channel_id, account_id, scope_id)
        yield Api(chats, rest, account_id, scope_id, settings.timeout_s)
    finally:
        await chats.aclose()
        await rest.aclose()


def shown_url(url: str) -> str:
    """An API URL as shown in messages: without any user or password it may hold."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()


async def _reaching(call: Awaitable[T], setting: str, url: str, what: str, timeout_s: float, *,
                    not_found: str, refused: str | None = None) -> T:
    """`call`, the first request to the API at `url` (`setting`): what it fails with becomes one of ours that names
    the setting and the fix (`not_found` for a 404; `refused` when amoCRM refuses the request's data: 400, ...)."""
    where = f"{setting} ({shown_url(url)})"
    try:
        return await call
    except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError: HTML, or JSON of another shape
        raise ConfigurationError(f"{where} answered {what} with something that is not amoCRM's API: check the URL "
                                 "(https://SUBDOMAIN.amocrm.ru for REST v4, https://amojo.amocrm.ru for chats)") \
            from None
    except Transient as exc:
        if exc.status is not None:
            raise RunError(f"{where} failed {what} ({exc.status}): amoCRM is in trouble; try again later") from None
        if not exc.may_have_landed:  # no connection could be made: refused, no such host
            raise ConfigurationError(f"cannot connect to {where} for {what}: {exc}; check the host and port") \
                from None
        raise RunError(f"{where} did not answer {what} within AMOJO_ETL_TIMEOUT_S={timeout_s:g} s: check that it is "
                       "amoCRM and reachable, or raise AMOJO_ETL_TIMEOUT_S") from None
    except NotFound as exc:
        raise ConfigurationError(f"{where} answered {what} with 404 ({exc}): {not_found}") from None
    except (InvalidRequest, Refused) as exc:
        if refused is None:
            raise RunError(str(exc)) from None
        raise ConfigurationError(f"{refused} ({exc})") from None
    except AmojoError as exc:
        error = classify(exc)
        raise (error if isinstance(error, EtlError) else RunError(str(exc))) from None


async def _account(rest: RestClient, settings: Settings) -> str:
    """The account's amojo_id, read from REST v4."""
    assert settings.amocrm_url
    return await _reaching(rest.account_amojo_id(), "AMOJO_ETL_AMOCRM_URL", settings.amocrm_url,
                           "GET /api/v4/account", settings.timeout_s,
                           not_found="it is not amoCRM's REST API; use https://SUBDOMAIN.amocrm.ru")


async def _channel(chats: ChatsClient, account_id: str, settings: Settings) -> str:
    """Connect the channel to the account (idempotent): the scope id. A refusal names the channel and account."""
    refused = (f"the channel AMOJO_ETL_CHANNEL_ID={settings.channel_id} refused the account {account_id}: check "
               "AMOJO_ETL_ACCOUNT_ID (unset, it is read from AMOJO_ETL_AMOCRM_URL) and that the channel is registered "
               "for this account")
    return await _reaching(chats.connect(account_id), "AMOJO_ETL_AMOJO_URL", settings.amojo_url,
                           f"the connect of channel {settings.channel_id}", settings.timeout_s, refused=refused,
                           not_found="check AMOJO_ETL_CHANNEL_ID (the channel's id from amoCRM support) and "
                                     "AMOJO_ETL_AMOJO_URL")


async def check_api(settings: Settings, *, chats: bool = True) -> None:
    """One request to each API before a run starts: a wrong URL, token, channel or account, a host that refuses the
    connection, or a server that hangs, fails within AMOJO_ETL_TIMEOUT_S instead of after every retry of the run.
    A transient answer (5xx, 408, 429) is retried by the transport's one rule within that time: one blip of amoCRM
    does not fail a night.

    Only what the settings hold is checked (secrets kept in Prefect blocks are read inside the run)."""
    if not (settings.amocrm_url and settings.amocrm_token):
        return
    # A hang spends the whole patience on its first attempt, so it is not sent again.
    quick = RetryPolicy(patience=settings.timeout_s, unreachable=False)
    rest = RestClient(settings.amocrm_url, settings.amocrm_token.get_secret_value(), timeout=settings.timeout_s,
                      retry=quick, rate=settings.rest_rate)
    try:
        account_id = await _account(rest, settings)
    finally:
        await rest.aclose()
    if settings.account_id and settings.account_id != account_id:
        raise ConfigurationError(
            f"AMOJO_ETL_ACCOUNT_ID ({settings.account_id}) is not the amojo_id of the account at AMOJO_ETL_AMOCRM_URL "
            f"({account_id}): fix it, or unset it to use the account's")
    if not (chats and settings.channel_id and settings.channel_secret):
        return
    client = ChatsClient(settings.amojo_url, settings.channel_id, settings.channel_secret.get_secret_value(),
                         timeout=settings.timeout_s, max_connections=2, retry=quick)
    try:
        await _channel(client, account_id, settings)
    finally:
        await client.aclose()


class LedgerTokenStore:
    """The OAuth pair of one account, kept in the ledger so that every run and every worker shares it."""

    def __init__(self, ledger: Ledger, account: str) -> None:
        self._ledger = ledger
        self._account = account

    def load(self) -> TokenPair | None:
        pair = self._ledger.account.oauth_pair(self._account)
        return TokenPair(*pair) if pair else None

    def save(self, pair: TokenPair) -> None:
        self._ledger.account.save_oauth_pair(self._account, *pair)


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
