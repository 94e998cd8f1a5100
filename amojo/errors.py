"""The errors amoCRM answers with, as a small hierarchy the loader can act on.

    AmojoError
    ├── SignatureRejected   ┐
    ├── Unauthorized        │ FATAL: every request of the run would meet the same
    ├── AccessDenied        │   (AccountBlocked: for overrunning the REST limit)
    ├── Redirected          ┘
    ├── InvalidRequest      the data: resending it will not help
    ├── Refused             amoCRM's own reasons: a later run tries again
    ├── NotFound
    ├── RateLimited         retryable: wait, then again
    └── Transient           retryable: 408, 425, 5xx, timeouts, dropped connections

Retrying is decided by class: `Transient` (408, 425, 5xx, timeouts, dropped connections) and `RateLimited` (429)
are worth another attempt at once; `Refused` in a later run; the rest are not. Separately, `may_have_landed` says
whether the request (this attempt or an earlier one) may have taken effect in amoCRM: such an outcome is resolved
by reading amoCRM before anything is sent again (`amojo.resolve`). Messages carry the API's own reason and never a
secret or a token.
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


class AccountBlocked(AccessDenied):
    """403 with an HTML page from REST v4: amoCRM blocked the account for overrunning its request limit again and
    again (amojo-api.md §5.2). Every request until the block lifts prolongs it: stop, wait, send slower."""


class InvalidRequest(AmojoError):
    """400, 413, 414, 415 or 422: amoCRM refused what the request says (the data); resending it will not help."""


class Refused(AmojoError):
    """Another 4xx (409, 410, 423, ...): amoCRM would not take the request now, for reasons of its own rather than
    the data's; a later run tries again."""


class Redirected(AmojoError):
    """3xx: the URL is not the API's (http instead of https, another host); every request would meet the same."""


class NotFound(AmojoError):
    """404: the channel, chat or message does not exist."""


class RateLimited(AmojoError):
    """429: too many requests; nothing was done. Wait `retry_after` seconds: a reason to wait, not to fail."""

    retryable = True


class Transient(AmojoError):
    """408, 425 (nothing was done), 5xx, a timeout or a dropped connection (`uncertain`: it may have been)."""

    retryable = True


FATAL = (SignatureRejected, Unauthorized, AccessDenied, Redirected)
"""Errors that will repeat for every request of the run: stop instead of burning through the queue."""
