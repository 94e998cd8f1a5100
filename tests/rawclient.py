"""An independent amojo signer for conformance tests: written from amojo-api.md §2.2, sharing no code with amojo/."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import httpx


def sign(secret: str, method: str, path: str, body: bytes, date: str,
         content_type: str = "application/json") -> dict[str, str]:
    md5 = hashlib.md5(body).hexdigest()
    text = "\n".join([method.upper(), md5, content_type, date, path])
    return {
        "Date": date,
        "Content-Type": content_type,
        "Content-MD5": md5,
        "X-Signature": hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest(),
    }


def now_date() -> str:
    return datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def send(base: str, secret: str, method: str, path: str, payload: object = None, *,
         query: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    signed = sign(secret, method, path, body, now_date())
    signed.update(headers or {})
    return httpx.request(method, f"{base}{path}{'?' + query if query else ''}", content=body, headers=signed)
