"""The Chats API's gate: a request not signed as amojo requires (§2.2) is refused 403 before anything else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from ..config import EmulatorConfig
from ..envelopes import amojo_error
from ..verify import BadSignature, verify
from . import Handler


class SignatureGate:
    """Checks X-Signature, Date and Content-MD5 against the channel secret and the emulator's clock; with `legacy`,
    also the pre-2019 body-only signature (§2.3)."""

    def __init__(self, app: Handler, *, config: EmulatorConfig, now: Callable[[], datetime], legacy: bool) -> None:
        self.app, self.config, self.now, self.legacy = app, config, now, legacy

    async def __call__(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        try:
            verify(
                secret=self.config.channel_secret,
                method=request.method,
                path=raw_path.split(b"?", 1)[0].decode("latin-1"),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
                now=self.now(),
                tolerance_s=self.config.date_tolerance_s,
                strict_md5=self.config.content_md5 == "strict",
                legacy=self.legacy,
            )
        except BadSignature:
            return amojo_error(403, "ORIGIN_INVALID_SIGNATURE", "invalid signature")
        return await self.app(request)
