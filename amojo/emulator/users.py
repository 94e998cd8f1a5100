"""The account's amoCRM users from a users file, so that a rehearsal attributes agent messages to its own managers.

A users file is TOML, one `[[users]]` table per user:

    [[users]]
    name = "Анна Смирнова"
    email = "anna@example.com"          # how the importer matches a manager to a user
    amojo_id = "a1d2c3b4-…"             # optional: derived from the email when left out; "" for a user without one
    id = 1001                           # optional: 1001, 1002, … in file order

amoCRM gives every user an amojo id of its own; a rehearsal has no reason to invent them, so an omitted one is
derived from the email (the same file gives the same ids). `amojo_id = ""` is a user without one, as the real API
allows: the importer sends that user's messages as the bot.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path
from typing import Any

from .config import EmulatedUser

FIRST_ID = 1001
USER_KEYS = ("id", "name", "email", "amojo_id")
_NS = uuid.UUID("5d0c2a61-8a7e-4f0b-9c43-1e2f3a4b5c6d")


def load_users(path: str) -> tuple[EmulatedUser, ...]:
    """The users of the file at `path`; a missing or malformed file, or a bad entry, is a ValueError that names the
    file, the entry and what to write instead."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"users file {path} does not exist: write one [[users]] table per user "
                         "(name, email, optionally amojo_id)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read users file {path}: {type(exc).__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"users file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"users"})
    entries = data.get("users")
    if unknown or not isinstance(entries, list) or not entries:
        raise ValueError(f"users file {path} must hold [[users]] tables (name, email, optionally amojo_id and id)"
                         + (f", not {', '.join(unknown)}" if unknown else ""))
    users = tuple(_user(f"{path}: users[{index}]", entry, FIRST_ID + index) for index, entry in enumerate(entries))
    _unique(path, users)
    return users


def derived_amojo_id(email: str) -> str:
    """The amojo id a user of a users file gets when the file gives none: the same for the same email."""
    return str(uuid.uuid5(_NS, email.strip().lower()))


def _user(where: str, entry: Any, default_id: int) -> EmulatedUser:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table with name and email")
    unknown = sorted(set(entry) - set(USER_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {', '.join(unknown)}; use {', '.join(USER_KEYS)}")
    name, email = entry.get("name"), entry.get("email")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name is required, as text")
    if not isinstance(email, str) or "@" not in email or email != email.strip():
        raise ValueError(f"{where} ({name}): email is required, an address such as anna@example.com, not {email!r}")
    user_id = entry.get("id", default_id)
    if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
        raise ValueError(f"{where} ({name}): id must be a whole number >= 1, not {user_id!r}")
    amojo_id = entry.get("amojo_id", derived_amojo_id(email))
    if not isinstance(amojo_id, str):
        raise ValueError(f"{where} ({name}): amojo_id must be text (\"\" for a user without one), not {amojo_id!r}")
    return EmulatedUser(user_id, name.strip(), email, amojo_id or None)


def _unique(path: str, users: tuple[EmulatedUser, ...]) -> None:
    """Two users with one id, email or amojo id would make the account ambiguous: refused, named."""
    keys = (("id", lambda u: u.id), ("email", lambda u: u.email.lower()), ("amojo_id", lambda u: u.amojo_id))
    for label, key in keys:
        seen: set = set()
        for user in users:
            value = key(user)
            if value is not None and value in seen:
                raise ValueError(f"users file {path}: two users have {label} {value}; each needs its own")
            seen.add(value)
