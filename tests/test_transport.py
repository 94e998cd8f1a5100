"""Status classes and retries of both API clients: what is sent again, after how long, and what is left uncertain."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from amojo.errors import (
    FATAL,
    AccessDenied,
    AccountBlocked,
    InvalidRequest,
    RateLimited,
    Redirected,
    Refused,
    Transient,
)
from amojo.transport import RetryPolicy, TokenBucket, Transport, retry_after

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def _transport(answers: list, policy: RetryPolicy | None = None) -> tuple[Transport, list[float], list[int]]:
    """A transport over scripted answers (a status with headers, or an exception); the waits it makes, recorded."""
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return httpx.Response(status, headers=headers, json={"ok": status < 300})

    client = httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(handler))
    transport = Transport(client, "REST v4", retry=policy or RetryPolicy())
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    transport.sleep = sleep
    return transport, waits, sent


def _date(moment: datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504])
async def test_timeouts_too_early_and_server_errors_are_retried(status):
    transport, waits, sent = _transport([status, status, 200])
    response = await transport.request("GET", "/api/v4/users")
    assert response.status_code == 200 and len(sent) == 3 and len(waits) == 2


@pytest.mark.parametrize("status, kind", [(400, InvalidRequest), (413, InvalidRequest), (422, InvalidRequest),
                                          (409, Refused), (410, Refused), (423, Refused)])
async def test_other_client_errors_are_refusals_of_the_data_or_by_the_api(status, kind):
    """A refusal of the data stays one; one for reasons of amoCRM's own (a conflict, a lock) is for a later run."""
    transport, waits, sent = _transport([status])
    with pytest.raises(kind) as refused:
        await transport.request("POST", "/api/v4/contacts", json_body=[{}])
    assert refused.value.status == status and len(sent) == 1 and not refused.value.may_have_landed


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_stops_the_run_naming_the_url_settings(status):
    transport, _, sent = _transport([(status, {"Location": "https://elsewhere.test/"})])
    with pytest.raises(Redirected, match="AMOJO_ETL_AMOCRM_URL"):
        await transport.request("GET", "/api/v4/users")
    assert len(sent) == 1


NGINX_403 = ("<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1>"
             "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def _answering(status: int, **body: object) -> tuple[Transport, list[httpx.Request]]:
    """A REST v4 transport whose every request gets this answer."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status, **body)

    client = httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return Transport(client, "REST v4"), sent


async def test_a_403_with_an_html_page_is_the_account_blocked_and_stops_at_once():
    """amojo-api.md §5.2: an account that overran the REST limit again and again is blocked, and amoCRM's nginx
    answers an HTML page with 403: sending again would only prolong the block."""
    transport, sent = _answering(403, headers={"Content-Type": "text/html"}, text=NGINX_403)
    with pytest.raises(AccountBlocked) as blocked:
        await transport.request("GET", "/api/v4/contacts", params={"query": "x"})
    assert len(sent) == 1 and isinstance(blocked.value, FATAL)
    message = str(blocked.value)
    assert "blocked" in message and "AMOJO_ETL_REST_RATE" in message and "wait" in message
    assert "<" not in message and "\n" not in message  # what happened and what to do, not the page


async def test_a_403_in_the_apis_own_json_is_access_denied_not_a_block():
    """403 code 113 (the IP is not in the API whitelist, §5.3) comes as problem+json: no block to wait out."""
    transport, sent = _answering(403, json={"title": "Forbidden", "status": 403, "detail": "IP not in whitelist"},
                                 headers={"Content-Type": "application/problem+json"})
    with pytest.raises(AccessDenied) as denied:
        await transport.request("GET", "/api/v4/account")
    assert not isinstance(denied.value, AccountBlocked) and len(sent) == 1
    assert "IP not in whitelist" in str(denied.value)


def test_retry_after_in_seconds_and_as_an_http_date_counted_from_the_answers_date():
    def answer(value: str, date: datetime | None = NOW) -> httpx.Response:
        headers = {"Retry-After": value}
        if date is not None:
            headers["Date"] = _date(date)
        return httpx.Response(429, headers=headers)

    assert retry_after(answer("120")) == 120
    assert retry_after(answer(_date(NOW + timedelta(seconds=90)))) == 90  # our clock does not matter
    assert retry_after(answer(_date(NOW - timedelta(seconds=5)))) == 0  # a date in the past: at once
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert 55 <= retry_after(answer(_date(later), date=None)) <= 60  # no Date: from our clock
    assert retry_after(answer("Wed Dec  2 12:01:00 2026")) == 60  # the asctime form, in UTC
    assert retry_after(answer("Wed, 02 Dec 2026 12:00:30 -0000")) == 30
    assert retry_after(answer("soon")) is None
    assert retry_after(httpx.Response(429)) is None


async def test_a_long_retry_after_is_honoured_and_a_429_waits_rather_than_fails():
    # A server asking for 120 s between attempts, nine times: more attempts than other errors get, all waited.
    answers = [(429, {"Retry-After": "120"})] * 9 + [200]
    transport, waits, sent = _transport(answers, RetryPolicy(attempts=6, patience=1200))
    response = await transport.request("GET", "/api/v4/contacts", params={"query": "x"})
    assert response.status_code == 200 and len(sent) == 10 and waits == [120.0] * 9


async def test_retry_after_is_capped_and_the_requests_patience_ends_the_waiting():
    policy = RetryPolicy(retry_after_cap=300, patience=1000)
    assert policy.delay(1, RateLimited("x", retry_after=86400)) == 300
    transport, waits, sent = _transport([(429, {"Retry-After": "400"})] * 10, policy)
    with pytest.raises(RateLimited):
        await transport.request("GET", "/api/v4/users")
    # Waited 300 s at a time while the total stayed within the patience of 1000 s: three waits, four attempts.
    assert waits == [300.0, 300.0, 300.0] and len(sent) == 4


async def test_a_retry_after_of_zero_makes_no_tight_loop():
    transport, waits, sent = _transport([(429, {"Retry-After": "0"})] * 8 + [200])
    await transport.request("GET", "/api/v4/users")
    assert len(sent) == 9 and all(w > 0 for w in waits) and waits[-1] >= 5  # the backoff, growing


async def test_a_request_that_is_not_idempotent_is_not_sent_again_after_an_uncertain_answer():
    for uncertain in (500, httpx.ReadTimeout("lost"), httpx.RemoteProtocolError("dropped")):
        transport, _, sent = _transport([uncertain, 200])
        with pytest.raises(Transient) as lost:
            await transport.request("POST", "/api/v4/contacts", json_body=[{}], idempotent=False)
        assert lost.value.may_have_landed and len(sent) == 1


async def test_a_request_that_is_not_idempotent_is_sent_again_when_nothing_was_done():
    for nothing_done in (408, 425, (429, {"Retry-After": "1"}), httpx.ConnectError("refused")):
        transport, _, sent = _transport([nothing_done, 200])
        response = await transport.request("POST", "/api/v4/contacts", json_body=[{}], idempotent=False)
        assert response.status_code == 200 and len(sent) == 2


async def test_a_refusal_after_a_lost_answer_says_the_request_may_have_landed():
    transport, _, _ = _transport([500, 400])
    with pytest.raises(InvalidRequest) as refused:
        await transport.request("POST", "/v2/origin/custom/scope", json_body={})
    assert refused.value.attempts == 2 and refused.value.may_have_landed


async def test_guards_run_before_every_attempt_and_stop_the_request():
    transport, _, sent = _transport([500, 200])
    calls: list[int] = []

    def guard() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("lease gone")

    transport.guards.append(guard)
    with pytest.raises(RuntimeError, match="lease gone"):
        await transport.request("GET", "/api/v4/users")
    assert len(sent) == 1  # the retry was never sent


def test_one_rate_limit_is_shared_by_event_loops_in_threads():
    """The days of a backfill run side by side on their own loops: together they keep to the account's rate."""
    bucket = TokenBucket(20, burst=1)
    stamps: list[float] = []

    def run_loop() -> None:
        async def requests() -> None:
            for _ in range(10):
                await bucket.acquire()
                stamps.append(time.monotonic())

        asyncio.run(requests())

    threads = [threading.Thread(target=run_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    # 30 requests at 20/s take at least 29/20 s; with a bucket per loop they would take a third of that.
    assert stamps[-1] - stamps[0] >= 29 / 20 * 0.95


@pytest.mark.parametrize("mode", ["drop", "500"])
async def test_over_the_real_pool_a_dropped_answer_is_uncertain_and_a_refused_connection_is_not(emulator, mode):
    from amojo.emulator.config import Faults
    from amojo.rest import RestClient

    emulator.emulator.set_faults(Faults(script=[{"endpoint": "contacts", "method": "POST", "lose": mode}]))
    async with RestClient(emulator.url, emulator.emulator.config.token, rate=100) as rest:
        with pytest.raises(Transient) as lost:
            await rest.create_contacts([{"name": "Client"}])
    assert lost.value.may_have_landed and len(emulator.emulator.snapshot()["contacts"]) == 1

    async with RestClient("http://127.0.0.1:9", "token", rate=100, retry=RetryPolicy(attempts=2)) as rest:
        with pytest.raises(Transient) as refused:
            await rest.create_contacts([{"name": "Client"}])
    assert not refused.value.may_have_landed and refused.value.attempts == 2  # never sent: tried again


async def test_over_the_real_pool_a_server_that_hangs_up_after_reading_the_request_leaves_it_uncertain():
    """aiohttp reports this as a disconnect, which httpx-aiohttp maps to ConnectTimeout: it must not read as
    'never sent', or a contact create would be sent again blindly."""
    from amojo.rest import RestClient

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, RestClient(f"http://127.0.0.1:{port}", "token", rate=100) as rest:
        with pytest.raises(Transient) as lost:
            await rest.create_contacts([{"name": "Client"}])
    assert lost.value.may_have_landed and lost.value.attempts == 1


async def test_a_refused_connection_is_sent_again_unless_the_policy_says_fail_fast():
    """A run waits out amoCRM's restart; the check before a run says at once that the host or port is wrong. A
    5xx is sent again either way."""
    refused = httpx.ConnectError("connection refused")
    transport, _, sent = _transport([refused, 200])
    assert (await transport.request("GET", "/x")).status_code == 200 and len(sent) == 2

    transport, _, sent = _transport([refused, 200], RetryPolicy(unreachable=False))
    with pytest.raises(Transient) as raised:
        await transport.request("GET", "/x")
    assert len(sent) == 1 and not raised.value.may_have_landed

    transport, _, sent = _transport([502, 503, 200], RetryPolicy(unreachable=False))
    assert (await transport.request("GET", "/x")).status_code == 200 and len(sent) == 3


async def test_an_oauth_refresh_answered_502_is_sent_again_under_the_one_retry_rule(emulator):
    """The refresh is a request like any other: a 5xx is retried (spending nothing: a refresh token that a lost
    answer did spend is refused, as without a retry), not turned into "the refresh token is spent"."""
    from amojo.emulator.config import Faults
    from amojo.rest import OAuthApp, RefreshingAuth, RestClient

    class Memory:
        pair = None

        def load(self):
            return self.pair

        def save(self, pair):
            self.pair = pair

    config = emulator.emulator.config
    emulator.emulator.set_faults(Faults(script=[{"endpoint": "oauth", "status": 502}]))
    store = Memory()
    auth = RefreshingAuth(emulator.url, OAuthApp(config.oauth_client_id, config.oauth_client_secret,
                                                 "https://example.com/oauth"), store, config.oauth_refresh_token)
    async with RestClient(emulator.url, auth) as rest:
        assert await rest.users()
    assert store.pair is not None and emulator.emulator.injector.script_left() == []
