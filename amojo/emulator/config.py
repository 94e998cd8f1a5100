"""What the emulator is told at start: the channel, the account, its users, the ⚠️ switches and the faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEMO_CHANNEL_ID = "344a5002-f8ca-454d-af3d-396180102ac7"
DEMO_CHANNEL_SECRET = "f2d7f8704eff95087ed45b23ba99c0b5aac8278e"  # the public secret of amojo-api.md §2.6
DEMO_ACCOUNT_ID = "52e591f7-c98f-4255-8495-827210138c81"
DEMO_TOKEN = "demo-long-lived-token"
DEMO_BOT_ID = "7d1f5a4e-0b3c-4a4e-9d4f-2b1e6f0c9a10"


@dataclass(frozen=True)
class EmulatedUser:
    """An amoCRM user; `amojo_id` may be None, as the real API allows."""

    id: int
    name: str
    email: str
    amojo_id: str | None


DEMO_USERS: tuple[EmulatedUser, ...] = (
    EmulatedUser(1001, "Анна Смирнова", "anna@example.com", "a1d2c3b4-0001-4a5b-8c6d-7e8f9a0b1c01"),
    EmulatedUser(1002, "Boris Petrov", "boris@example.com", "a1d2c3b4-0002-4a5b-8c6d-7e8f9a0b1c02"),
    EmulatedUser(1003, "Claire Martin", "claire@example.com", "a1d2c3b4-0003-4a5b-8c6d-7e8f9a0b1c03"),
    EmulatedUser(1004, "Дмитрий Орлов", "dmitry@example.com", None),
)


@dataclass
class Faults:
    """Seeded, reproducible faults; every rate is a probability per request in [0, 1]."""

    seed: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rates: dict[int, float] = field(default_factory=dict)  # status (500/502/503/429) -> rate, before any effect
    lost_answer_rate: float = 0.0  # the message is stored, then the answer is lost
    lost_answer_mode: Literal["500", "drop", "mixed"] = "mixed"
    hang_rate: float = 0.0
    hang_seconds: float = 60.0
    history_lag_ms: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> Faults:
        data = dict(data)
        if "error_rates" in data:
            data["error_rates"] = {int(k): float(v) for k, v in data["error_rates"].items()}
        return cls(**data)


@dataclass
class EmulatorConfig:
    """Identity of the emulated channel and account, and the switches for behaviour amojo-api.md leaves open."""

    channel_id: str = DEMO_CHANNEL_ID
    channel_secret: str = DEMO_CHANNEL_SECRET
    account_id: str = DEMO_ACCOUNT_ID
    token: str = DEMO_TOKEN
    bot_id: str = DEMO_BOT_ID
    users: tuple[EmulatedUser, ...] = DEMO_USERS
    # OAuth (§6.6): an integration whose refresh token rotates on every use.
    oauth_client_id: str = "demo-client-id"
    oauth_client_secret: str = "demo-client-secret"
    oauth_refresh_token: str | None = "demo-refresh-token-0"
    access_token_ttl_s: float = 86400.0  # §6.6: an OAuth access token lives 24 hours
    # ⚠️ switches (amojo-api.md §9), defaults as recommended there.
    duplicate_msgid: Literal["idempotent", "reject"] = "idempotent"  # Q1
    content_md5: Literal["strict", "lenient"] = "strict"  # Q6
    legacy_signatures: bool = False  # Q8
    history_limit: Literal["clamp", "reject"] = "clamp"  # Q4
    text_limit: int | None = None  # Q2
    check_ref_id: bool = True  # ⚠️ our choice: an outgoing sender.ref_id must be a user's amojo_id or the bot
    rest_rate: float | None = 7.0  # Q14, per token
    amojo_rate: float | None = None  # Q9
    date_tolerance_s: int = 15 * 60  # Q5, both directions
    state_path: str | None = None  # SQLite file; None keeps state in memory
    faults: Faults = field(default_factory=Faults)
