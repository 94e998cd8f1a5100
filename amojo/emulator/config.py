"""What the emulator is told at start: the channel, the account, its users, the ⚠️ switches and the faults.

A field with a `help` in its metadata is an option of `amojo-etl emulator` too, generated from the field: `flag`
names the option when it is not the field's name, `env` the variable it is also read from, and `secret` hides its
default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
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


# Route names of the emulated endpoints (`routes.routes`) and their methods: what `lost_answer_endpoints` and
# `script` entries name.
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "connect": ("POST",),
    "disconnect": ("DELETE", "POST"),
    "create_chat": ("POST",),
    "history": ("GET",),
    "typing": ("POST",),
    "delivery_status": ("POST",),
    "message": ("POST",),
    "react": ("POST",),
    "account": ("GET",),
    "users": ("GET",),
    "contacts": ("GET", "POST"),
    "contacts_chats": ("GET", "POST"),
    "oauth": ("POST",),
}

SCRIPT_KEYS = ("endpoint", "method", "status", "lose", "late_ms", "retry_after", "times")
MAX_DELAY_S = 86400.0  # ⚠️ our bound on every injected delay: a day


@dataclass
class Faults:
    """Seeded, reproducible faults; every rate is a probability per request in [0, 1].

    Random faults (drawn from a generator seeded with `seed`, so a run repeats exactly):
      - `latency_ms` + up to `jitter_ms` on every answer that passes the API's own checks;
      - `hang_rate`: the request hangs `hang_seconds`, then answers 504;
      - `error_rates`: status (400..599, e.g. 429, 500, 502, 503) -> rate, answered before any effect; an injected
        429 or 503 carries Retry-After as `retry_after` says;
      - `lost_answer_rate`: on the endpoints named in `lost_answer_endpoints`, a 2xx answer is lost after the
        handler ran (its effect is stored): the client sees a 500 in the API's envelope, or a connection dropped
        mid-answer (`lost_answer_mode`: "500", "drop", or "mixed", chosen per request);
      - `history_lag_ms`: a stored message shows in history only this long after it was stored;
      - `late_commit_rate`: on the endpoints named in `late_commit_endpoints` (POST only), the request is answered
        504 at once and its effect stored `late_commit_ms` later, as a gateway that timed out while amoCRM went on
        (issue 25: a contact create answered 504 that shows a second later).

    Retry-After on injected 429/503 (`retry_after`): "seconds" sends ceil(`retry_after_s`) as delay-seconds,
    "http-date" sends the RFC 9110 IMF-fixdate of the emulator's clock + `retry_after_s`, rounded up to a whole
    second (e.g. "Sun, 06 Nov 1994 08:49:37 GMT"), "none" sends no header. The REST rate limiter's own 429 always
    says seconds.

    `script`: one-shot faults in order, each `{"endpoint": <route name, see ENDPOINTS>, "method": "POST"
    (optional: any method), "status": 408 | "lose": "500" | "drop" | "late_ms": 1000, "retry_after": "120" |
    <HTTP-date> (optional, only with status), "times": 1 (optional, >= 1)}` with exactly one of `status`, `lose`
    and `late_ms`. A request
    that passes the API's own checks (signature; token and rate limit) consumes one use of the first entry that
    matches its endpoint and method, and then gets no random error, hang or lost answer (latency still applies):
      - `status` (200..599): answered before any effect, with the API's error envelope (amojo
        `{"status":0,"error_code":N,"error_type":"FAULT","error_description":"injected N"}`, REST problem+json
        `{"title":<reason>,"type":…,"status":N,"detail":"injected"}`; no body for 204/304); `retry_after` is sent
        verbatim as Retry-After (so malformed values can be tested too); without it a 429 or 503 gets the
        `retry_after` form above;
      - `lose`: the handler runs (its effect is stored), then a 2xx answer is lost as a 500 or a dropped
        connection; an answer that is not 2xx is passed on as it is (the entry is used up all the same);
      - `late_ms`: answered 504 at once; the request's effect is stored `late_ms` later (a late commit).
    GET /_emulator/faults shows what is left of the script (entries with the uses they have left).

    `from_dict` (and POST /_emulator/faults, which answers 400 for it) rejects unknown keys and wrongly typed or
    out-of-range values with a ValueError naming the field. Every delay is at most a day (`MAX_DELAY_S`), so that
    no setting can overflow the clock arithmetic of a later request.
    """

    seed: int = field(default=0, metadata={"help": "seed of every injected fault"})
    latency_ms: float = field(default=0.0, metadata={"help": "added to every answer"})
    jitter_ms: float = field(default=0.0, metadata={"help": "random extra latency, up to this"})
    error_rates: dict[int, float] = field(  # status -> rate, before any effect
        default_factory=dict, metadata={"help": "STATUS=RATE, answered before any effect; repeat for several (429, "
                                                "408, 503, ...)", "flag": "--error-rate"})
    lost_answer_rate: float = field(  # the handler's effect is stored, then the answer is lost
        default=0.0, metadata={"help": "request done, then a 500 or a dropped connection"})
    lost_answer_mode: Literal["500", "drop", "mixed"] = "mixed"
    lost_answer_endpoints: tuple[str, ...] = field(  # route names (ENDPOINTS) whose answers may be lost
        default=("message",), metadata={"help": "where answers are lost (repeat): message, create_chat, contacts, "
                                                "contacts_chats, history, ...", "flag": "--lost-answer-endpoint"})
    hang_rate: float = field(default=0.0, metadata={"help": "requests that hang for --hang-seconds"})
    hang_seconds: float = field(default=60.0, metadata={"help": "how long a hang lasts"})
    history_lag_ms: float = field(default=0.0, metadata={"help": "a stored message shows in history only after this"})
    late_commit_rate: float = field(  # answered 504 at once, the effect stored late_commit_ms later
        default=0.0, metadata={"help": "writes answered 504, then stored --late-commit-ms later"})
    late_commit_ms: float = field(default=1000.0, metadata={"help": "how late a late commit is stored"})
    late_commit_endpoints: tuple[str, ...] = field(  # route names (ENDPOINTS) whose POSTs may commit late
        default=("contacts",), metadata={"help": "where writes may commit late (repeat): contacts, ...",
                                         "flag": "--late-commit-endpoint"})
    retry_after: Literal["seconds", "http-date", "none"] = field(  # Retry-After form on injected 429/503
        default="seconds", metadata={"help": "Retry-After of injected 429/503: seconds or HTTP date"})
    retry_after_s: float = field(default=1.0, metadata={"help": "the wait Retry-After asks for"})  # its delay
    script: list[dict] = field(default_factory=list)  # one-shot faults, see above

    def __post_init__(self) -> None:
        self.seed = _int("seed", self.seed)
        for name in ("latency_ms", "jitter_ms", "history_lag_ms", "late_commit_ms"):
            setattr(self, name, _number(name, getattr(self, name), MAX_DELAY_S * 1000))
        for name in ("hang_seconds", "retry_after_s"):
            setattr(self, name, _number(name, getattr(self, name), MAX_DELAY_S))
        for name in ("lost_answer_rate", "hang_rate", "late_commit_rate"):
            setattr(self, name, _rate(name, getattr(self, name)))
        if not isinstance(self.error_rates, dict):
            raise ValueError(f"error_rates must be an object of status -> rate, not {self.error_rates!r}")
        self.error_rates = {_status(f"error_rates key {k!r}", k, 400): _rate(f"error_rates[{k!r}]", v)
                            for k, v in self.error_rates.items()}
        _choice("lost_answer_mode", self.lost_answer_mode, ("500", "drop", "mixed"))
        _choice("retry_after", self.retry_after, ("seconds", "http-date", "none"))
        if not isinstance(self.lost_answer_endpoints, list | tuple):
            raise ValueError(f"lost_answer_endpoints must be a list of route names, not {self.lost_answer_endpoints!r}")
        self.lost_answer_endpoints = tuple(_endpoint("lost_answer_endpoints", e) for e in self.lost_answer_endpoints)
        if not isinstance(self.late_commit_endpoints, list | tuple):
            raise ValueError(f"late_commit_endpoints must be a list of route names, not {self.late_commit_endpoints!r}")
        self.late_commit_endpoints = tuple(_endpoint("late_commit_endpoints", e) for e in self.late_commit_endpoints)
        if not isinstance(self.script, list | tuple):
            raise ValueError(f"script must be a list of entries, not {self.script!r}")
        self.script = [_script_entry(i, entry) for i, entry in enumerate(self.script)]

    @classmethod
    def from_dict(cls, data: dict) -> Faults:
        """Faults from JSON: error_rates keys may be strings ("503"); unknown keys and bad values are a ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"faults must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(map(str, unknown))}")
        data = dict(data)
        if isinstance(data.get("error_rates"), dict):
            data["error_rates"] = {_status_key(k): v for k, v in data["error_rates"].items()}
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(name: str, value: object) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    return value  # type: ignore[return-value]


def _number(name: str, value: object, most: float = math.inf) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not 0 <= value <= most:  # type: ignore[operator]
        raise ValueError(f"{name} must be a number between 0 and {most:g}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def _rate(name: str, value: object) -> float:
    number = _number(name, value)
    if number > 1:
        raise ValueError(f"{name} must be a rate between 0 and 1, not {value!r}")
    return number


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _status_key(key: object) -> object:
    # isascii: str.isdigit() holds for "²", which int() refuses
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 5 else key


def _status(name: str, value: object, low: int) -> int:
    if not _is_int(value) or not low <= value <= 599:  # type: ignore[operator]
        raise ValueError(f"{name} must be an HTTP status between {low} and 599, not {value!r}")
    return value  # type: ignore[return-value]


def _endpoint(name: str, value: object) -> str:
    if not isinstance(value, str) or value not in ENDPOINTS:  # isinstance first: a list is not hashable
        raise ValueError(f"{name}: {value!r} is not a route name; use one of {', '.join(ENDPOINTS)}")
    return value


def _script_entry(index: int, entry: object) -> dict:
    where = f"script[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object, not {entry!r}")
    unknown = sorted(set(entry) - set(SCRIPT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(map(str, unknown))}; use {', '.join(SCRIPT_KEYS)}")
    out: dict = {"endpoint": _endpoint(f"{where}.endpoint", entry.get("endpoint"))}
    if entry.get("method") is not None:
        method = entry["method"]
        if not isinstance(method, str) or method.upper() not in ENDPOINTS[out["endpoint"]]:
            raise ValueError(f"{where}.method: {out['endpoint']} takes {', '.join(ENDPOINTS[out['endpoint']])}, "
                             f"not {method!r}")
        out["method"] = method.upper()
    has_status, has_lose = entry.get("status") is not None, entry.get("lose") is not None
    if has_status + has_lose + (entry.get("late_ms") is not None) != 1:
        raise ValueError(f"{where} needs exactly one of status, lose and late_ms")
    if entry.get("late_ms") is not None:
        out["late_ms"] = _number(f"{where}.late_ms", entry["late_ms"], MAX_DELAY_S * 1000)
    elif has_status:
        out["status"] = _status(f"{where}.status", entry["status"], 200)
    else:
        _choice(f"{where}.lose", entry["lose"], ("500", "drop"))
        out["lose"] = entry["lose"]
    retry_after = entry.get("retry_after")
    if retry_after is not None:
        if not has_status:
            raise ValueError(f"{where}.retry_after goes only with a status")
        if _is_int(retry_after) and retry_after >= 0:
            retry_after = str(retry_after)
        if not isinstance(retry_after, str) or not retry_after or not all(" " <= ch <= "~" for ch in retry_after):
            raise ValueError(f"{where}.retry_after must be seconds (\"120\") or an HTTP-date, not {retry_after!r}")
        out["retry_after"] = retry_after
    times = entry.get("times", 1)
    if not _is_int(times) or times < 1:
        raise ValueError(f"{where}.times must be an integer >= 1, not {times!r}")
    out["times"] = times
    return out


@dataclass
class EmulatorConfig:
    """Identity of the emulated channel and account, and the switches for behaviour amojo-api.md leaves open."""

    # The identity: on the command line, each from its flag or the importer's variable (`env`), else its settings
    # file, else the demo's.
    channel_id: str = field(default=DEMO_CHANNEL_ID, metadata={
        "help": "channel id (default: the demo channel)", "env": "AMOJO_ETL_CHANNEL_ID"})
    channel_secret: str = field(default=DEMO_CHANNEL_SECRET, metadata={
        "help": "channel secret (default: the demo secret); better from the environment or --config than as a flag, "
                "which every user of the machine sees in ps", "env": "AMOJO_ETL_CHANNEL_SECRET", "secret": True})
    account_id: str = field(default=DEMO_ACCOUNT_ID, metadata={
        "help": "the account's amojo_id", "env": "AMOJO_ETL_ACCOUNT_ID"})
    token: str = field(default=DEMO_TOKEN, metadata={
        "help": "REST v4 bearer token; better from the environment or --config, as the channel secret",
        "env": "AMOJO_ETL_AMOCRM_TOKEN", "secret": True})
    bot_id: str = field(default=DEMO_BOT_ID, metadata={"help": "the channel bot's id", "env": "AMOJO_ETL_BOT_ID"})
    users: tuple[EmulatedUser, ...] = DEMO_USERS
    # A rehearsal's own managers (`users.load_users`): when given, the file's users replace the demo's.
    users_path: str | None = field(default=None, metadata={
        "help": "TOML file of the account's users, a users table each with name, email and optionally amojo_id "
                "(default: the demo's four, the sample's managers; see README, The emulator)", "flag": "--users",
        "env": "AMOJO_ETL_EMULATOR_USERS"})
    # OAuth (§6.6): an integration whose refresh token rotates on every use.
    oauth_client_id: str = "demo-client-id"
    oauth_client_secret: str = "demo-client-secret"
    oauth_refresh_token: str | None = "demo-refresh-token-0"
    access_token_ttl_s: float = 86400.0  # §6.6: an OAuth access token lives 24 hours
    # ⚠️ switches (amojo-api.md §9), defaults as recommended there.
    duplicate_msgid: Literal["idempotent", "reject"] = field(default="idempotent", metadata={  # Q1
        "help": "a repeated msgid: original ids back, or 400"})
    content_md5: Literal["strict", "lenient"] = field(default="strict", metadata={  # Q6
        "help": "check Content-MD5 against the body, or only sign it"})
    legacy_signatures: bool = field(default=False, metadata={  # Q8
        "help": "also accept body-only HMAC on the old methods"})
    history_limit: Literal["clamp", "reject"] = field(default="clamp", metadata={  # Q4
        "help": "history limit over 50: clamp, or 400"})
    text_limit: int | None = field(default=None, metadata={"help": "longest text accepted (default: no limit)"})  # Q2
    check_ref_id: bool = True  # ⚠️ our choice: an outgoing sender.ref_id must be a user's amojo_id or the bot
    # ⚠️ The reference marks a participant's `id` and `name` required, but third-party clients send a manager as
    # `sender: {ref_id}` and a client as `receiver: {ref_id}`; unconfirmed which the live API takes. "reject" (400
    # naming the participant and the field) or "accept": a known ref_id (a user's amojo_id, the bot, a client's
    # amojo id) stands for the whole participant.
    ref_id_participants: Literal["reject", "accept"] = field(default="reject", metadata={
        "help": "a participant given by ref_id alone: refused (as the reference reads), or taken for the known one"})
    # ⚠️ §3.3: a client sent again with other name/avatar/phone: "merge" (what it sends replaces what was known,
    # absent fields stay) or "keep" (the first values stay; only fields never given are filled in). Either way
    # history shows one record per user, not each message's payload.
    participant_updates: Literal["merge", "keep"] = field(default="merge", metadata={
        "help": "what a later request says about a user: replaces what is held, or leaves it"})
    # ⚠️ amojo-api.md names no body limit; nginx's default (1 MiB) answers a larger request 413.
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body; larger ones get 413"})
    rest_rate: float | None = field(default=7.0, metadata={  # Q14, per token
        "help": "REST v4 requests per second per token (0: no limit)"})
    # §5.2: an account that overruns the REST limit again and again is blocked: amoCRM's nginx answers every REST
    # request 403 with an HTML page. ⚠️ How many overruns, within how long, and for how long are not stated (Q19):
    # off by default.
    rest_block_after: int = field(default=0, metadata={
        "help": "block the account after this many REST overruns (429s) within --rest-block-window-s: every REST "
                "request then gets 403 with an HTML page for --rest-block-s (0: never)"})
    rest_block_window_s: float = field(default=60.0, metadata={"help": "the window the overruns are counted in"})
    rest_block_s: float = field(default=3600.0, metadata={"help": "how long a block lasts"})
    # Q13 ⚠️: the most contacts per POST /api/v4/contacts and links per POST /api/v4/contacts/chats; a larger
    # batch is a 400 problem+json. amoCRM documents no maximum; §9 says accept up to 250.
    rest_batch_max: int = field(default=250, metadata={"help": "most contacts or links in one REST write"})
    amojo_rate: float | None = field(default=None, metadata={  # Q9
        "help": "Chats API requests per second (0: no limit)"})
    # amoCRM downloads a message's media from its URL itself (§3.4): off unless asked for, so that a rehearsal
    # without internet does not record every link as failed.
    fetch_media: bool = field(default=False, metadata={
        "help": "download the media URL of each accepted message in the background, as amoCRM does, and record "
                "those that fail (GET /_emulator/state, media_fetches)"})
    fetch_media_timeout_s: float = field(default=30.0, metadata={"help": "time a media download may take"})
    fetch_media_concurrency: int = field(default=4, metadata={"help": "media downloads at once"})
    date_tolerance_s: int = 15 * 60  # Q5, both directions
    state_path: str | None = field(default=None, metadata={  # SQLite file; None keeps state in memory
        "help": "SQLite file to keep state in (default: memory)", "flag": "--state"})
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.fetch_media_timeout_s = _number("fetch_media_timeout_s", self.fetch_media_timeout_s, MAX_DELAY_S)
        for name in ("rest_batch_max", "max_body_bytes", "fetch_media_concurrency"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {getattr(self, name)!r}")
        if not _is_int(self.rest_block_after) or self.rest_block_after < 0:
            raise ValueError(f"rest_block_after must be an integer >= 0, not {self.rest_block_after!r}")
        for name in ("rest_block_window_s", "rest_block_s"):
            setattr(self, name, _number(name, getattr(self, name), MAX_DELAY_S))
        _choice("ref_id_participants", self.ref_id_participants, ("reject", "accept"))
        _choice("participant_updates", self.participant_updates, ("merge", "keep"))
        if self.users_path:
            from .users import load_users  # users imports this module

            self.users = load_users(self.users_path)
