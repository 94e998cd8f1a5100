"""The faults in force and what they decide for each request: the seeded draws and the one-shot script.

Only decisions live here; the middleware turns them into answers. Every draw comes from one generator seeded with
`Faults.seed`, in a fixed order per request, so a run repeats exactly.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import NamedTuple

from .config import Faults


class Injection(NamedTuple):
    """What the random faults do to one request before any effect: wait, then hang (answer 504) or answer an error."""

    delay_s: float
    hang_s: float | None  # None: no hang
    error_status: int | None


class Injector:
    """The faults in force, their seeded generator and what is left of their script."""

    def __init__(self, faults: Faults, now: Callable[[], datetime]) -> None:
        self._lock = threading.Lock()
        self._now = now
        self.replace(faults)

    def replace(self, faults: Faults) -> None:
        """Put `faults` in force, with a fresh generator and the whole script."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self._script: list[dict] = [dict(entry) for entry in faults.script]  # what is left of it

    def script_left(self) -> list[dict]:
        """The script entries not used up yet, each with the uses it has left."""
        with self._lock:
            return [dict(entry) for entry in self._script]

    def take_script(self, endpoint: str, method: str) -> dict | None:
        """Use up one use of the first script entry for this endpoint and method; None when none matches."""
        with self._lock:
            for index, entry in enumerate(self._script):
                if entry["endpoint"] == endpoint and entry.get("method", method) == method:
                    entry["times"] -= 1
                    if entry["times"] <= 0:
                        del self._script[index]
                    return dict(entry)
        return None

    def before_effect(self, random_faults: bool = True) -> Injection:
        """Latency, and (unless a script entry decides this request) a hang or an error status, drawn in order."""
        f = self.faults
        delay = f.latency_ms + (self._rng.uniform(0, f.jitter_ms) if f.jitter_ms else 0.0)
        hang = random_faults and f.hang_rate and self._rng.random() < f.hang_rate
        error_status = None
        for status, rate in sorted(f.error_rates.items()) if random_faults else ():
            if rate and self._rng.random() < rate:
                error_status = status
                break
        return Injection(delay / 1000, f.hang_seconds if hang else None, error_status)

    def lost_answer(self, endpoint: str) -> str | None:
        """How a 2xx answer of `endpoint` is lost at `lost_answer_rate` ("500" or "drop"), or None: it is not."""
        f = self.faults
        if endpoint not in f.lost_answer_endpoints:
            return None
        if not (f.lost_answer_rate and self._rng.random() < f.lost_answer_rate):
            return None
        return f.lost_answer_mode if f.lost_answer_mode != "mixed" else self._rng.choice(["500", "drop"])

    def late_commit(self, endpoint: str, method: str) -> float | None:
        """How late (seconds) a write of `endpoint` is stored after its 504, at `late_commit_rate`; None: not late."""
        f = self.faults
        if method != "POST" or endpoint not in f.late_commit_endpoints:
            return None
        if not (f.late_commit_rate and self._rng.random() < f.late_commit_rate):
            return None
        return f.late_commit_ms / 1000

    def retry_after(self, status: int | None) -> dict[str, str]:
        """Retry-After for an injected 429 or 503, in the form `Faults.retry_after` asks for."""
        f = self.faults
        if status not in (429, 503) or f.retry_after == "none":
            return {}
        if f.retry_after == "seconds":
            return {"Retry-After": str(math.ceil(f.retry_after_s))}
        moment = self._now() + timedelta(seconds=f.retry_after_s)
        whole = moment.replace(microsecond=0)
        if whole < moment:
            whole += timedelta(seconds=1)
        return {"Retry-After": format_datetime(whole.astimezone(UTC), usegmt=True)}
