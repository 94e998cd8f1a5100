"""The emulator's route handlers, one module per API: the Chats API (chats, messages), REST v4, and the admin
surface. Each handler takes the request and its body already read as JSON, and returns the answer or raises
`ApiError`; the middleware around it does the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Emulator


class Handlers:
    """What every API's handlers work with: the emulator, its config, its store and its participants."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.config = emulator.config
        self.store = emulator.store
        self.participants = emulator.participants
