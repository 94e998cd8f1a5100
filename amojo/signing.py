"""Request signing for the Chats API (amojo-api.md §2).

Every amojo request carries `Date`, `Content-Type`, `Content-MD5` (of the exact body bytes) and `X-Signature`,
an HMAC-SHA1 keyed by the channel secret over method, MD5, content type, date and the path without its query.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx

CONTENT_TYPE = "application/json"


def content_md5(body: bytes) -> str:
    """Lowercase hex MD5 of the body exactly as it goes on the wire (the empty string for a GET)."""
    return hashlib.md5(body).hexdigest()


def rfc2822_date(moment: datetime | None = None) -> str:
    """The `Date` header in the documented form, `Thu, 01 Jan 2023 12:00:00 +0000`."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return format_datetime(moment).replace("-0000", "+0000")


def string_to_sign(method: str, md5: str, content_type: str, date: str, path: str) -> str:
    """Method, Content-MD5, Content-Type, Date and path, joined by single newlines, as sent."""
    return "\n".join([method.upper(), md5, content_type, date, path])


def signature(secret: str, method: str, md5: str, content_type: str, date: str, path: str) -> str:
    """The `X-Signature` value: lowercase hex HMAC-SHA1 keyed by the raw secret string."""
    message = string_to_sign(method, md5, content_type, date, path).encode()
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()


def wire_path(url: httpx.URL) -> str:
    """The path as it goes on the wire, without the query string (which never enters the signature)."""
    return url.raw_path.split(b"?", 1)[0].decode("ascii")


class AmojoAuth(httpx.Auth):
    """Signs each request as it is sent, so that a retry gets a fresh `Date` and signature."""

    requires_request_body = True

    def __init__(self, secret: str, clock: Callable[[], datetime] | None = None) -> None:
        self._secret = secret
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:  # never show the secret
        return "AmojoAuth(secret=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        body = request.content
        md5 = content_md5(body)
        date = rfc2822_date(self._clock())
        request.headers["Date"] = date
        request.headers["Content-Type"] = CONTENT_TYPE
        request.headers["Content-MD5"] = md5
        request.headers["X-Signature"] = signature(
            self._secret, request.method, md5, CONTENT_TYPE, date, wire_path(request.url)
        )
        yield request
