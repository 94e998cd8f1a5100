"""The client signs exactly as amojo-api.md §2 says, pinned to the official vectors."""

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest
from vectors import SECRET, VECTORS

from amojo.signing import AmojoAuth, content_md5, rfc2822_date, signature


def _signed(request: httpx.Request, auth: AmojoAuth) -> httpx.Request:
    flow = auth.auth_flow(request)
    return next(flow)


@pytest.mark.parametrize("name, method, path, date, body, md5, expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_official_vectors_reproduce_byte_for_byte(name, method, path, date, body, md5, expected):
    moment = parsedate_to_datetime(date)
    request = httpx.Request(method, f"https://amojo.amocrm.ru{path}", content=body)
    signed = _signed(request, AmojoAuth(SECRET, clock=lambda: moment))
    assert signed.headers["Date"] == date
    assert signed.headers["Content-Type"] == "application/json"
    assert signed.headers["Content-MD5"] == md5
    assert signed.headers["X-Signature"] == expected
    assert signed.content == body  # the bytes hashed are the bytes sent


def test_get_signs_the_md5_of_the_empty_string():
    request = httpx.Request("GET", "https://amojo.amocrm.ru/v2/origin/custom/s/chats/c/history")
    signed = _signed(request, AmojoAuth(SECRET))
    assert signed.headers["Content-MD5"] == "d41d8cd98f00b204e9800998ecf8427e"
    assert content_md5(b"") == "d41d8cd98f00b204e9800998ecf8427e"


def test_query_string_never_enters_the_signature():
    moment = datetime(2020, 10, 3, 16, 23, 14, tzinfo=UTC)
    path = "/v2/origin/custom/s_a/chats/c/history"
    with_query = _signed(httpx.Request("GET", f"https://amojo.amocrm.ru{path}?limit=50&offset=0"),
                         AmojoAuth(SECRET, clock=lambda: moment))
    expected = signature(SECRET, "GET", content_md5(b""), "application/json", rfc2822_date(moment), path)
    assert with_query.headers["X-Signature"] == expected
    assert with_query.url.query == b"limit=50&offset=0"


def test_date_is_rfc2822_with_numeric_offset():
    moment = datetime(2021, 12, 15, 23, 12, 55, 123456, tzinfo=UTC)
    assert rfc2822_date(moment) == "Wed, 15 Dec 2021 23:12:55 +0000"
    assert rfc2822_date(moment.astimezone(UTC).replace(tzinfo=UTC) + timedelta(0)) == rfc2822_date(moment)


async def test_every_retry_is_signed_afresh():
    """A retried request carries a new Date and a signature valid for that Date."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 1 else 200, json={"scope_id": "x"})

    ticks = iter([datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)])
    from amojo.transport import RetryPolicy, Transport

    async with httpx.AsyncClient(base_url="https://amojo.amocrm.ru", transport=httpx.MockTransport(answer),
                                 auth=AmojoAuth(SECRET, clock=lambda: next(ticks))) as client:
        transport = Transport(client, "amojo", retry=RetryPolicy(attempts=3, base_delay=0.001))
        await transport.request("POST", "/v2/origin/custom/ch/connect", json_body={"account_id": "a"})
    assert len(seen) == 2
    assert seen[0].headers["Date"] != seen[1].headers["Date"]
    for request in seen:
        assert request.headers["X-Signature"] == signature(
            SECRET, "POST", request.headers["Content-MD5"], "application/json", request.headers["Date"],
            request.url.path)


def test_secret_never_shows_in_repr():
    assert SECRET not in repr(AmojoAuth(SECRET))
