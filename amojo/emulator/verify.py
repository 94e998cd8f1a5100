"""How amojo checks a request's signature (amojo-api.md §2.2, §2.4, §2.5), as the server sees it."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from email.utils import parsedate_to_datetime

from amojo.signing import signature


class BadSignature(Exception):
    """Why a request was refused; the emulator answers 403 ORIGIN_INVALID_SIGNATURE either way."""


def verify(
    *,
    secret: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime,
    tolerance_s: int,
    strict_md5: bool,
    legacy: bool = False,
) -> None:
    """Raise `BadSignature` unless the request is signed as amojo requires; any header value, however odd, is a
    BadSignature at worst."""
    given = headers.get("x-signature")
    if not given:
        raise BadSignature("missing X-Signature")
    if not given.isascii():  # compare_digest refuses non-ASCII text; no hex signature holds any
        raise BadSignature("X-Signature is not hex")
    if legacy and hmac.compare_digest(given, hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()):
        return  # the pre-2019 body-only scheme, accepted on the old methods when switched on (§2.3)
    date = headers.get("date")
    if not date:
        raise BadSignature("missing Date")
    try:
        sent_at = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise BadSignature(f"unreadable Date {date[:60]!r}") from exc
    if sent_at.tzinfo is None:
        raise BadSignature("Date without a zone")
    if abs((now - sent_at).total_seconds()) > tolerance_s:
        raise BadSignature("Date outside the 15 minute window")
    md5 = headers.get("content-md5", "")
    if strict_md5 and md5 != hashlib.md5(body).hexdigest():
        raise BadSignature("Content-MD5 does not match the body (lowercase hex md5 of the exact bytes)")
    content_type = headers.get("content-type", "")
    expected = signature(secret, method, md5, content_type, date, path)
    if not hmac.compare_digest(given, expected):
        raise BadSignature("X-Signature does not match")
