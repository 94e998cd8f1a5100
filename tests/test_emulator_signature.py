"""The emulator checks signatures as amojo does (amojo-api.md §2), driven over real HTTP by an independent signer."""

from __future__ import annotations

import hashlib
import hmac
from email.utils import parsedate_to_datetime

import httpx
import pytest
from rawclient import now_date, send, sign
from vectors import B1, SECRET, VECTORS

INVALID = {"status": 0, "error_code": 403, "error_type": "ORIGIN_INVALID_SIGNATURE",
           "error_description": "invalid signature"}


def _post_vector(url: str, vector: tuple, *, body: bytes | None = None, headers: dict | None = None,
                 path_suffix: str = "") -> httpx.Response:
    name, method, path, date, original, md5, signature = vector
    sent = {"Date": date, "Content-Type": "application/json", "Content-MD5": md5, "X-Signature": signature}
    sent.update(headers or {})
    sent = {k: v for k, v in sent.items() if v is not None}
    return httpx.request(method, f"{url}{path}{path_suffix}", content=original if body is None else body,
                         headers=sent)


def test_official_vectors_accepted_at_their_date(emulator):
    """V1 connect, V3 create chat and V2 new_message, exactly as printed in the docs, each at its own Date."""
    for vector in (VECTORS[0], VECTORS[2], VECTORS[1]):
        emulator.emulator.set_clock(parsedate_to_datetime(vector[3]))
        response = _post_vector(emulator.url, vector)
        assert response.status_code == 200, (vector[0], response.text)
    state = emulator.emulator.snapshot()
    assert len(state["chats"]) == 2  # V3's chat, and V2's new conversation_id made its own
    # V2 is a non-silent incoming message into an unlinked chat: amoCRM makes an unsorted lead.
    assert len(state["leads"]) == 1 and len(state["notifications"]) == 1


@pytest.mark.parametrize("tamper", [
    "body changed after signing", "wrong secret", "stale date", "future date", "query string signed",
    "upper-case md5", "missing X-Signature", "missing Date", "missing Content-MD5", "missing Content-Type",
])
def test_tampered_requests_answer_403_envelope(emulator, tamper):
    vector = VECTORS[0]
    name, method, path, date, body, md5, signature = vector
    emulator.emulator.set_clock(parsedate_to_datetime(date))
    kwargs: dict = {}
    if tamper == "body changed after signing":
        kwargs["body"] = B1.replace(b"ChatsIntegration", b"ChatsIntegratioN")
    elif tamper == "wrong secret":
        kwargs["headers"] = sign("0" * 40, method, path, body, date)
    elif tamper == "stale date":
        emulator.emulator.set_clock(parsedate_to_datetime(date).replace(minute=28, second=0))  # 15m05s later
    elif tamper == "future date":
        emulator.emulator.set_clock(parsedate_to_datetime(date).replace(minute=57))
    elif tamper == "query string signed":
        kwargs["headers"] = sign(SECRET, method, path + "?x=1", body, date)
        kwargs["path_suffix"] = "?x=1"
    elif tamper == "upper-case md5":
        upper = hashlib.md5(body).hexdigest().upper()
        headers = sign(SECRET, method, path, body, date)
        # Signed consistently over the upper-case value: only the MD5's case is wrong.
        text = "\n".join([method, upper, "application/json", date, path])
        headers.update({"Content-MD5": upper,
                        "X-Signature": hmac.new(SECRET.encode(), text.encode(), hashlib.sha1).hexdigest()})
        kwargs["headers"] = headers
    else:
        header = tamper.removeprefix("missing ")
        kwargs["headers"] = {header: None}
        if header == "Content-Type":  # httpx would add none; make sure it is absent
            kwargs["headers"] = {"Content-Type": ""}
    response = _post_vector(emulator.url, vector, **kwargs)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == INVALID


def test_query_string_is_not_signed_on_get(emulator):
    config = emulator.emulator.config
    assert send(emulator.url, config.channel_secret, "POST", f"/v2/origin/custom/{config.channel_id}/connect",
                {"account_id": config.account_id, "hook_api_version": "v2"}).status_code == 200
    path = f"/v2/origin/custom/{emulator.emulator.scope_id}/chats/unknown/history"
    response = send(emulator.url, config.channel_secret, "GET", path, query="limit=50&offset=0")
    assert response.status_code == 204  # signature accepted; the chat does not exist
    assert response.content == b""


def test_gmt_dates_accepted(emulator):
    """Production clients send `GMT` (§2.4); the emulator parses any RFC 2822 / 7231 form."""
    from datetime import UTC, datetime

    config = emulator.emulator.config
    path = f"/v2/origin/custom/{config.channel_id}/connect"
    body = b'{"account_id":"%s"}' % config.account_id.encode()
    date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    response = httpx.post(f"{emulator.url}{path}", content=body, headers=sign(SECRET, "POST", path, body, date))
    assert response.status_code == 200


def test_lenient_md5_mode_uses_header_only(emulator_config):
    """With content_md5='lenient' (Q6 switch) a GET signed over md5("null") passes, as AMOJOWRAPPER sends it."""
    from amojo.emulator.server import start

    emulator_config.content_md5 = "lenient"
    with start(emulator_config) as running:
        config = running.emulator.config
        send(running.url, SECRET, "POST", f"/v2/origin/custom/{config.channel_id}/connect",
             {"account_id": config.account_id})
        path = f"/v2/origin/custom/{running.emulator.scope_id}/chats/x/history"
        headers = sign(SECRET, "GET", path, b"null", now_date())  # md5 of "null", but no body sent
        assert httpx.get(f"{running.url}{path}", headers=headers).status_code == 204
