"""The ways a command is expected to fail, as a small hierarchy: each says what to fix in one line, no traceback.

`ConfigurationError` (exit status 2): a setting or a file is wrong and stays wrong until it is changed.
`RunError` (exit status 1): the settings look right but the run could not go on (a server did not answer in time).
`classify` is the one place that turns what the layers below raise (amoCRM's answers, a date out of range) into
these; the boundaries that know which setting was in play (source, ledger, API) raise them directly.
Messages never carry a secret: URLs are shown with their password hidden, and `redact` removes any secret value
that a foreign message might still hold.
"""

from __future__ import annotations

import os
import re


class EtlError(Exception):
    """An expected failure of a command; the message names the setting or the file, and the fix."""

    exit_code = 1


class ConfigurationError(EtlError):
    """A setting is missing or wrong; the message says which and how to fix it."""

    exit_code = 2


class RunError(EtlError):
    """The configuration looks right, but the run could not go on (a server hung, answered 5xx, or went away)."""

    exit_code = 1


def classify(exc: BaseException) -> EtlError | None:
    """`exc` as one of ours when it is an expected way to fail, else None (a defect: its traceback matters)."""
    from amojo.errors import AmojoError, NotFound, Redirected, SignatureRejected, Transient, Unauthorized

    if isinstance(exc, EtlError):
        return exc
    if isinstance(exc, SignatureRejected | Unauthorized | Redirected | NotFound):
        return ConfigurationError(str(exc))
    if isinstance(exc, Transient):
        return RunError(f"{exc}; amoCRM did not answer in time or failed (5xx): try again later, or raise "
                        "AMOJO_ETL_TIMEOUT_S")
    if isinstance(exc, AmojoError):
        return RunError(str(exc))
    return None


def one_line(message: str) -> str:
    """A message on one line: drivers answer on several (psycopg's DETAIL, HINT)."""
    return re.sub(r"\s*\n\s*", " ", message.strip())


_SECRET_NAME = re.compile(r"^AMOJO_ETL_.*(SECRET|TOKEN|PASSWORD)$")
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://[^/:@\s]*:)(?P<password>[^@\s/]+)@")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The secret values the environment holds: AMOJO_ETL_*SECRET/TOKEN, and passwords inside AMOJO_ETL_*_URL."""
    env = os.environ if environ is None else environ
    values = [v for k, v in env.items() if _SECRET_NAME.match(k) and not k.endswith("_BLOCK")]
    values += [m.group("password") for k, v in env.items() if k.startswith("AMOJO_ETL_") and k.endswith("_URL")
               for m in _URL_PASSWORD.finditer(v)]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(message: str, environ: dict[str, str] | None = None) -> str:
    """`message` with every secret value of the environment, and any password in a URL, replaced by ***."""
    for value in secret_values(environ):
        message = message.replace(value, "***")
    return _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}***@", message)
