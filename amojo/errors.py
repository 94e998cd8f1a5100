"""The errors amoCRM answers with, as a small hierarchy the loader can act on.

Retrying is decided by class: `Transient` (408, 425, 5xx, timeouts, dropped connections) and `RateLimited` (429)
are worth another attempt; the rest are not. Separately, `may_have_landed` says whether the request (this attempt or
an earlier one) may have taken effect in amoCRM: such an outcome is resolved by reading amoCRM before anything is
sent again. Messages carry the API's own reason and never a secret or a token.
"""

from __future__ import annotations


class AmojoError(Exception):
    """Anything amoCRM (or the way to it) refused."""

    retryable = False
    attempts = 1  # how many times the request was sent before this answer

    def __init__(self, message: str, *, status: int | None = None, code: int | str | None = None,
                 retry_after: float | None = None, uncertain: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after  # seconds the API asked us to wait (Retry-After), if it did
        self.uncertain = uncertain  # this answer leaves unknown whether the request took effect
        self.may_have_landed = uncertain  # this attempt or an earlier one of the same request may have taken effect


class SignatureRejected(AmojoError):
    """403 `ORIGIN_INVALID_SIGNATURE`: the channel secret or the clock is wrong."""


class Unauthorized(AmojoError):
    """401 from REST v4: the token is missing, expired or revoked."""


class AccessDenied(AmojoError):
    """402/403 from REST v4: account unpaid, blocked or the IP not allowed."""


class InvalidRequest(AmojoError):
    """400-class answer other than 401-404, 408, 425 and 429: amoCRM refused the request; resending the same
    request will not help, though a later run may (the refusal is counted against the interval's verdict)."""


class NotFound(AmojoError):
    """404: the channel, chat or message does not exist."""


class RateLimited(AmojoError):
    """429: too many requests; nothing was done. Wait `retry_after` seconds: a reason to wait, not to fail."""

    retryable = True


class Transient(AmojoError):
    """408, 425 (nothing was done), 5xx, a timeout or a dropped connection (`uncertain`: it may have been)."""

    retryable = True


FATAL = (SignatureRejected, Unauthorized, AccessDenied)
"""Errors that will repeat for every request of the run: stop instead of burning through the queue."""
