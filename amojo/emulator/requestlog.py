"""What the emulator was asked: every answer of the two APIs, and the exceptions no validation foresaw."""

from __future__ import annotations

import threading
import time
from collections import Counter

UNHANDLED_KEPT = 50  # the last unforeseen exceptions shown in /_emulator/state


class RequestLog:
    """The request log, `(time, api, endpoint, status)` each, and the unforeseen exceptions (a robustness test
    expects none)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[float, str, str, int]] = []
        self.unhandled: list[str] = []

    def record(self, api: str, endpoint: str, status: int) -> None:
        with self._lock:
            self.entries.append((time.time(), api, endpoint, status))

    def unforeseen(self, what: str) -> None:
        with self._lock:
            self.unhandled.append(what)
            del self.unhandled[:-UNHANDLED_KEPT]

    def counts(self) -> dict[str, int]:
        """Requests by `api endpoint status`."""
        with self._lock:
            return dict(Counter(f"{api} {endpoint} {status}" for _, api, endpoint, status in self.entries))

    def of(self, endpoint: str | None) -> list[list]:
        """The entries as lists, all or those of one endpoint."""
        with self._lock:
            return [list(entry) for entry in self.entries if endpoint in (None, entry[2])]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.unhandled.clear()
