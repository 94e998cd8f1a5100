"""The errors amoCRM answers with, as a small hierarchy the loader can act on.

Retrying is decided by class: `Transient` and `RateLimited` are worth another attempt; the rest are not.
Messages carry the API's own reason and never a secret or a token.
"""

from __future__ import annotations


class AmojoError(Exception):
    """Anything amoCRM (or the way to it) refused."""

    retryable = False
    attempts = 1  # how many times the request was sent before this answer

    def __init__(self, message: str, *, status: int | None = None, code: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SignatureRejected(AmojoError):
    """403 `ORIGIN_INVALID_SIGNATURE`: the channel secret or the clock is wrong."""


class Unauthorized(AmojoError):
    """401 from REST v4: the token is missing, expired or revoked."""


class AccessDenied(AmojoError):
    """402/403 from REST v4: account unpaid, blocked or the IP not allowed."""


class InvalidRequest(AmojoError):
    """400-class answer: the request itself is wrong; resending it will not help."""


class NotFound(AmojoError):
    """404: the channel, chat or message does not exist."""


class RateLimited(AmojoError):
    """429: too many requests; wait `retry_after` seconds."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Transient(AmojoError):
    """5xx, a timeout or a dropped connection: the request may or may not have taken effect."""

    retryable = True


FATAL = (SignatureRejected, Unauthorized, AccessDenied)
"""Errors that will repeat for every request of the run: stop instead of burning through the queue."""
