"""The emulator's one validation layer: how a request body is read, and the typed checks every handler uses.

Whatever a client sends, a handler sees either a JSON value that can be stored and answered again (finite
numbers, 64-bit integers, bounded nesting) or an `ApiError`, which the endpoint wrapper renders in the API's own
error envelope. So bad input ends as a 4xx, never a 500, and nothing stored can poison a later answer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

INT64_MAX = 2**63 - 1
# ⚠️ amojo-api.md is silent on nesting: 32 levels hold every documented body several times over, and keep a hostile
# one far from Python's recursion limit when it is stored and answered again.
MAX_DEPTH = 32
TIMESTAMP_MAX = INT64_MAX // 1000  # seconds whose milliseconds still fit the 64-bit msec_timestamp

MESSAGE_TYPES = {"text", "contact", "file", "video", "picture", "voice", "audio", "sticker", "location"}
MEDIA_TYPES = {"file", "video", "picture", "voice", "audio", "sticker"}
NEEDS_FILE_META = {"file", "video", "picture"}  # AMO-REF: file_name and file_size required


class ApiError(Exception):
    """An answer other than success, raised from a handler; `extra` goes into the body (e.g. validation-errors)."""

    def __init__(self, status: int, description: str, error_type: str = "", code: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.error_type = error_type
        self.code = code
        self.extra = extra or {}


# -- reading a body
def _bounded_int(text: str) -> int:
    value = int(text)  # a number longer than Python's digit limit is a ValueError too
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"integer {text[:20]}… does not fit 64 bits")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json takes them, RFC 8259 does not


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unstorable(value: Any, limit: int) -> str | None:
    """Why `value` cannot be stored and answered again as UTF-8 JSON (too deep, a lone surrogate such as
    "\\ud800", which no UTF-8 answer can carry), or None; iterative, so any depth can be measured."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "a string holds a lone UTF-16 surrogate, which is not Unicode text"
            continue
        if isinstance(item, dict):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return f"the body nests deeper than {limit} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_json(body: bytes) -> Any:
    """The body as JSON (None when empty), or an ApiError 400: not UTF-8 JSON, NaN or infinite numbers,
    integers beyond 64 bits, lone surrogates, or nested deeper than MAX_DEPTH."""
    if not body:
        return None
    try:
        value = json.loads(body, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels", "INVALID_JSON") from exc
    except ValueError as exc:  # also UnicodeDecodeError
        raise ApiError(400, f"the body is not valid JSON: {exc}", "INVALID_JSON") from exc
    problem = _unstorable(value, MAX_DEPTH)
    if problem:
        raise ApiError(400, problem, "INVALID_JSON")
    return value


# -- typed fields (§3.3, §3.4): the API is strictly typed
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _where(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def obj(value: Any, name: str = "body") -> dict:
    if not isinstance(value, dict):
        raise ApiError(400, f"{name} must be a JSON object", "INVALID_TYPE")
    return value


def string(body: dict, key: str, required: bool = False, where: str = "", blank: bool = True) -> str | None:
    """`body[key]` as a string, None when absent and not required; a required one, or one with `blank` False
    (an id), must not be empty. `where` names the object in errors."""
    name = _where(where, key)
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", "FIELD_REQUIRED")
        return None
    if not isinstance(value, str) or ((required or not blank) and not value):
        raise ApiError(400, f"{name} must be a non-empty string", "INVALID_TYPE")
    return value


def integer(body: dict, key: str, required: bool = False, where: str = "", most: int = INT64_MAX) -> int | None:
    """`body[key]` as an integer in 0..`most`, None when absent and not required."""
    name = _where(where, key)
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", "FIELD_REQUIRED")
        return None
    if not is_int(value) or not 0 <= value <= most:
        raise ApiError(400, f"{name} must be an integer between 0 and {most}", "INVALID_TYPE")
    return value


def boolean(body: dict, key: str, where: str = "") -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{_where(where, key)} must be a boolean", "INVALID_TYPE")
    return value


def participant(value: Any, name: str, *, by_ref: bool = False) -> dict:
    """A `sender`/`receiver`/`user` object (§3.4). `id` and `name` are required as the reference marks them;
    with `by_ref`, a participant given by `ref_id` alone passes here and is resolved by the caller."""
    given = obj(value, name)
    for key in ("id", "ref_id", "name", "avatar", "profile_link", "phone", "email"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise ApiError(400, f"{name}.{key} must be a string", "INVALID_TYPE")
    if not (by_ref and given.get("ref_id")):
        string(given, "id", required=True, where=name)
        if given.get("name") is None:
            raise ApiError(400, f"{name}.name is required", "FIELD_REQUIRED")
    profile = given.get("profile")
    if profile is not None:
        obj(profile, f"{name}.profile")
        string(profile, "phone", where=f"{name}.profile")
        string(profile, "email", where=f"{name}.profile")
    return given


def external_id(source: Any) -> str | None:
    """A `source.external_id` as amojo takes it (at most 40 printable ASCII characters), or None when absent."""
    value = string(obj(source, "source"), "external_id", where="source")
    if value is not None and (len(value) > 40 or not all(32 <= ord(c) < 127 for c in value)):
        raise ApiError(400, "source.external_id: at most 40 printable ASCII characters", "INVALID_SOURCE")
    return value


def _location(value: Any, name: str) -> None:
    # ⚠️ The reference says only "{lon: float, lat: float}"; outside the earth's ranges is refused as invalid data.
    location = obj(value, name)
    for key, bound in (("lat", 90), ("lon", 180)):
        number = location.get(key)
        if not isinstance(number, int | float) or isinstance(number, bool) or not -bound <= number <= bound:
            raise ApiError(400, f"{name}.{key} must be a number between -{bound} and {bound}", "INVALID_TYPE")


def message_body(value: Any, text_limit: int | None, *, edit: bool) -> dict:
    """The `message` object of new_message / edit_message (§3.4), checked by type."""
    message = obj(value, "message")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ApiError(400, f"message.type must be one of {sorted(MESSAGE_TYPES)}", "INVALID_MESSAGE_TYPE")
    text = message.get("text")
    if text is not None and not isinstance(text, str):
        raise ApiError(400, "message.text must be a string", "INVALID_TYPE")
    if kind == "text" and not text:
        raise ApiError(400, "message.text is required for type text", "FIELD_REQUIRED")
    if text and text_limit is not None and len(text) > text_limit:
        raise ApiError(400, f"message.text is longer than {text_limit} characters", "TEXT_TOO_LONG")
    for key in ("file_name", "sticker_id", "callback_data"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise ApiError(400, f"message.{key} must be a string", "INVALID_TYPE")
    integer(message, "file_size", where="message")
    integer(message, "media_duration", where="message")
    if kind in MEDIA_TYPES:
        media = message.get("media")
        if media is None and not edit and not (kind == "sticker" and message.get("sticker_id")):
            raise ApiError(400, f"message.media is required for type {kind}", "FIELD_REQUIRED")
        if media is not None and (not isinstance(media, str) or not media.startswith(("http://", "https://"))):
            raise ApiError(400, "message.media must be an http(s) URL", "INVALID_MEDIA")
    if kind in NEEDS_FILE_META and not edit:
        if not message.get("file_name"):
            raise ApiError(400, f"message.file_name is required for type {kind}", "FIELD_REQUIRED")
        if message.get("file_size") is None:
            raise ApiError(400, f"message.file_size (int) is required for type {kind}", "FIELD_REQUIRED")
    if kind == "location":
        _location(message.get("location"), "message.location")
    if kind == "contact":
        contact = obj(message.get("contact"), "message.contact")
        string(contact, "name", required=True, where="message.contact")
        string(contact, "phone", required=True, where="message.contact")
    return message


def embedded_message(value: Any, name: str) -> dict:
    """A quoted or forwarded message (§3.4 `embedded_message`): `id` or `msgid` of a stored one, or in full."""
    message = obj(obj(value, name).get("message"), f"{name}.message")
    string(message, "id", where=f"{name}.message", blank=False)
    string(message, "msgid", where=f"{name}.message", blank=False)
    if message.get("id") or message.get("msgid"):
        return message
    where = f"{name}.message"
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ApiError(400, f"{where} needs id or msgid, or type, timestamp, msec_timestamp and sender",
                       "FIELD_REQUIRED")
    integer(message, "timestamp", required=True, where=where, most=TIMESTAMP_MAX)
    integer(message, "msec_timestamp", required=True, where=where)
    sender = obj(message.get("sender"), f"{where}.sender")
    if not any(isinstance(sender.get(key), str) and sender[key] for key in ("id", "ref_id", "name")):
        raise ApiError(400, f"{where}.sender needs id, ref_id or name", "FIELD_REQUIRED")
    if kind == "text":
        string(message, "text", required=True, where=where)
    if kind == "location":
        _location(message.get("location"), f"{where}.location")
    if kind == "contact":
        obj(message.get("contact"), f"{where}.contact")
    return message


def query_int(raw: str, name: str) -> int:
    """A query-string integer: ASCII digits only (int() would take '²' as a digit and then fail on it)."""
    text = raw.strip()
    body = text[1:] if text[:1] == "-" else text
    if not body or not body.isascii() or not body.isdigit() or len(body) > 18:
        raise ApiError(400, f"{name} must be an integer, not {raw[:40]!r}", "INVALID_PAGINATION")
    return int(text)
