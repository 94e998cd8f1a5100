"""Hostile requests at every emulator endpoint (issue 15): each is a 4xx in the API's documented envelope, the
emulator stays up, its state stays readable, and no exception reached the last-resort boundary.

The table names, per endpoint, a valid request and the type of each field; every wrong type, missing required
field, malformed body, oversized body, bad header, bad query, unknown path and wrong method is derived from it.
Hypothesis then puts arbitrary JSON anywhere in those bodies: whatever it is, never a 5xx.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawclient import now_date, sign

from amojo.emulator.config import ENDPOINTS, EmulatorConfig
from amojo.emulator.server import RunningEmulator, start

CONFIG = EmulatorConfig(rest_rate=None, max_body_bytes=64 * 1024)
SCOPE = f"{CONFIG.channel_id}_{CONFIG.account_id}"
MANAGER = CONFIG.users[0].amojo_id
NEW = "robust-never-stored"  # the msgid of every new_message below: a mutation must fail, not be a repeat

# Wrong values for each kind of field; "!" marks a required one (then also missing and null).
WRONG: dict[str, list[Any]] = {
    "str": [0, 1.5, True, [], {}, ["x"]],
    "str!": [None, "", 0, 1.5, True, [], {}],
    "name!": [None, 0, True, [], {}],  # required, but may be empty
    "int": ["1", 1.5, True, [], {}, -1, 10**30],
    "int type": ["1", 1.5, True, [], {}],  # any integer is taken
    "status!": [None, "1", 1.5, True, [], {}, 0, 3, 10**30],
    "list": ["x", 1, {}, True],
    "int!": [None, "1", 1.5, True, [], {}, -1, 10**30],
    "bool": ["true", 1, [], {}],
    "obj": ["x", 1, [], True],
    "obj!": [None, "x", 1, [], True],
    "list!": [None, "x", 1, {}, True],
    "num": ["1", True, [], {}, -1, 10**12],
    "lat!": [None, "55.7", True, [], {}, 91, -91, 10**30],
    "lon!": [None, "37.6", True, [], {}, 181, -181, 10**30],
}


@dataclass(frozen=True)
class Case:
    """A valid request to one endpoint, and the kind of each field its hostile variants break."""

    endpoint: str  # route name (config.ENDPOINTS), or admin_<name>
    method: str
    path: str
    body: Any = None
    fields: dict[str, str] = field(default_factory=dict)  # dotted path (list items by index) -> kind
    query: str = ""
    wrong: dict[str, list[Any]] = field(default_factory=dict)  # extra wrong values by path

    @property
    def api(self) -> str:
        if self.path.startswith("/v2/"):
            return "amojo"
        return "admin" if self.path.startswith("/_emulator") else "rest"


def _cases(chat_id: str, amojo_msg: str, contact_id: int) -> list[Case]:
    base = "/v2/origin/custom"
    text = {"type": "text", "text": "hello"}
    incoming = {"timestamp": 1_700_000_000, "msec_timestamp": 1_700_000_000_000, "msgid": NEW,
                "conversation_id": "conv-1", "silent": True, "sender": {"id": "client-1", "name": "Client",
                "avatar": "https://x/a.png", "profile": {"phone": "+79151112233", "email": "c@example.com"}},
                "message": text, "source": {"external_id": "src-1"}, "reply_to": {"message": {"msgid": "seed-1"}}}
    outgoing = {**incoming, "sender": {"id": "mgr", "name": "Anna", "ref_id": MANAGER},
                "receiver": {"id": "client-1", "name": "Client"}}
    del outgoing["reply_to"]
    msg = {"event_type": "str!", "payload": "obj!", "payload.msgid": "str!", "payload.conversation_id": "str!",
           "payload.conversation_ref_id": "str", "payload.timestamp": "int!", "payload.msec_timestamp": "int",
           "payload.silent": "bool", "payload.message": "obj!", "payload.message.type": "str!",
           "payload.message.text": "str!", "payload.source": "obj", "payload.source.external_id": "str"}
    person = {"payload.sender": "obj!", "payload.sender.id": "str!", "payload.sender.name": "name!",
              "payload.sender.avatar": "str", "payload.sender.profile": "obj", "payload.sender.profile.phone": "str",
              "payload.sender.profile.email": "str", "payload.reply_to": "obj", "payload.reply_to.message": "obj!",
              "payload.reply_to.message.msgid": "str!"}
    located = {**incoming, "message": {"type": "location", "location": {"lat": 55.7, "lon": 37.6}}}
    del located["reply_to"]
    filed = {**located, "message": {"type": "file", "media": "https://x/f.pdf", "file_name": "f.pdf",
                                    "file_size": 10}}
    contact = {**located, "message": {"type": "contact", "contact": {"name": "Bob", "phone": "+7915"}}}
    return [
        Case("connect", "POST", f"{base}/{CONFIG.channel_id}/connect",
             {"account_id": CONFIG.account_id, "hook_api_version": "v2", "title": "T",
              "is_time_window_disabled": False},
             {"account_id": "str!", "hook_api_version": "str", "title": "str", "is_time_window_disabled": "bool"},
             wrong={"hook_api_version": ["v3", None], "account_id": ["other-account"]}),
        Case("disconnect", "DELETE", f"{base}/{CONFIG.channel_id}/disconnect", {"account_id": CONFIG.account_id},
             {"account_id": "str!"}, wrong={"account_id": ["other-account"]}),
        Case("create_chat", "POST", f"{base}/{SCOPE}/chats",
             {"conversation_id": "robust-chat", "source": {"external_id": "src"},
              "user": {"id": "robust-user", "name": "n", "avatar": "https://x/a.png",
                       "profile": {"phone": "+7915", "email": "e@x"}}},
             {"conversation_id": "str!", "user": "obj!", "user.id": "str!", "user.name": "name!",
              "user.avatar": "str", "user.ref_id": "str", "user.profile": "obj", "user.profile.phone": "str",
              "user.profile.email": "str", "source": "obj", "source.external_id": "str"},
             wrong={"source.external_id": ["x" * 41, "é"]}),
        Case("history", "GET", f"{base}/{SCOPE}/chats/{chat_id}/history"),
        Case("typing", "POST", f"{base}/{SCOPE}/typing",
             {"conversation_id": "conv-1", "sender": {"id": "client-1"}, "duration_ms": 100},
             {"conversation_id": "str!", "sender": "obj!", "sender.id": "str!", "duration_ms": "int"}),
        Case("delivery_status", "POST", f"{base}/{SCOPE}/{amojo_msg}/delivery_status",
             {"msgid": amojo_msg, "delivery_status": -1, "error_code": 905, "error": "x"},
             {"delivery_status": "status!", "error_code": "int type", "error": "str"},
             wrong={"error_code": [None], "error": [None]}),
        Case("message", "POST", f"{base}/{SCOPE}", {"event_type": "new_message", "payload": incoming},
             {**msg, **person}, wrong={"event_type": ["nope"], "payload.timestamp": [10**17],
                                        "payload.message.type": ["nope"], "payload.message.text": ["x" * 70_000],
                                        "payload.reply_to.message.msgid": ["unknown-msgid"],
                                        "payload.conversation_ref_id": ["no-such-chat"]}),
        Case("message", "POST", f"{base}/{SCOPE}", {"event_type": "new_message", "payload": outgoing},
             {"payload.sender.ref_id": "str!", "payload.receiver": "obj", "payload.receiver.id": "str!",
              "payload.receiver.name": "name!", "payload.receiver.ref_id": "str"},
             wrong={"payload.sender.ref_id": ["unknown-ref-id"]}),
        Case("message", "POST", f"{base}/{SCOPE}", {"event_type": "new_message", "payload": located},
             {"payload.message.location": "obj!", "payload.message.location.lat": "lat!",
              "payload.message.location.lon": "lon!"}),
        Case("message", "POST", f"{base}/{SCOPE}", {"event_type": "new_message", "payload": filed},
             {"payload.message.media": "str!", "payload.message.file_name": "str!",
              "payload.message.file_size": "int!"}, wrong={"payload.message.media": ["ftp://x/f.pdf"]}),
        Case("message", "POST", f"{base}/{SCOPE}", {"event_type": "new_message", "payload": contact},
             {"payload.message.contact": "obj!", "payload.message.contact.name": "str!",
              "payload.message.contact.phone": "str!"}),
        Case("message", "POST", f"{base}/{SCOPE}",
             {"event_type": "edit_message", "payload": {"msgid": "seed-1", "message": {"type": "text", "text": "e"}}},
             {"payload.msgid": "str!", "payload.id": "str", "payload.message": "obj!",
              "payload.message.type": "str!", "payload.message.text": "str!"},
             wrong={"payload.msgid": ["unknown-msgid"]}),
        Case("react", "POST", f"{base}/{SCOPE}/react",
             {"conversation_id": "conv-1", "msgid": "seed-1", "user": {"id": "client-1"}, "type": "react",
              "emoji": "👍"},
             {"conversation_id": "str!", "msgid": "str!", "user": "obj!", "user.id": "str!", "type": "str!",
              "emoji": "str!"}, wrong={"type": ["love"], "msgid": ["unknown-msgid"], "conversation_id": ["conv-2"]}),
        Case("account", "GET", "/api/v4/account", query="with=amojo_id"),
        Case("users", "GET", "/api/v4/users", query="with=amojo_id"),
        Case("contacts", "GET", "/api/v4/contacts", query="query=Bob"),
        Case("contacts", "POST", "/api/v4/contacts",
             [{"name": "Bob", "first_name": "B", "request_id": "r1", "responsible_user_id": 1001,
               "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+79151112233"}]}]}],
             {"0": "obj!", "0.name": "str", "0.first_name": "str", "0.request_id": "str",
              "0.responsible_user_id": "int type", "0.custom_fields_values": "list", "0.custom_fields_values.0": "obj",
              "0.custom_fields_values.0.field_code": "str", "0.custom_fields_values.0.values": "list!",
              "0.custom_fields_values.0.values.0": "obj"},
             wrong={"0.custom_fields_values.0.values.0.value": [{"x": 1}, [1]], "0.custom_fields_values.0": [None],
                    "0.custom_fields_values.0.values.0": [None]}),
        Case("contacts_chats", "GET", "/api/v4/contacts/chats", query=f"chat_id[]={chat_id}"),
        Case("contacts_chats", "POST", "/api/v4/contacts/chats", [{"contact_id": contact_id, "chat_id": chat_id}],
             {"0": "obj!", "0.contact_id": "int!", "0.chat_id": "str!"},
             wrong={"0.contact_id": [999_999_999], "0.chat_id": ["no-such-chat"]}),
        Case("oauth", "POST", "/oauth2/access_token",
             {"client_id": CONFIG.oauth_client_id, "client_secret": CONFIG.oauth_client_secret,
              "grant_type": "refresh_token", "refresh_token": CONFIG.oauth_refresh_token},
             {"client_id": "str!", "client_secret": "str!", "grant_type": "str!", "refresh_token": "str!"},
             wrong={"grant_type": ["authorization_code"], "refresh_token": ["spent-or-unknown"]}),
        Case("admin_faults", "POST", "/_emulator/faults", {"latency_ms": 0, "seed": 1, "lost_answer_mode": "mixed",
                                                          "error_rates": {}, "script": []},
             {"latency_ms": "num", "seed": "int type", "lost_answer_mode": "str", "error_rates": "obj",
              "script": "list"}, wrong={"error_rates": [{"99": 0.5}, {"503": 2}], "script": [[{"endpoint": "x"}], None],
                                        "seed": [None, 10**30], "lost_answer_mode": ["", None, "nope"]}),
        Case("admin_clock", "POST", "/_emulator/clock", {"now": "2026-10-01T00:00:00+00:00"},
             {"now": "str"}, wrong={"now": ["yesterday", "2026-10-01T00:00", "9999-12-31T00:00:00+00:00", ""]}),
        Case("admin_state", "GET", "/_emulator/state"),
        Case("admin_requests", "GET", "/_emulator/requests"),
        Case("admin_reset", "POST", "/_emulator/reset"),
        Case("admin_faults", "GET", "/_emulator/faults"),
    ]


# -- sending
def _request(client: httpx.Client, case: Case, body: bytes | None, *, path: str | None = None,
             query: str | None = None, method: str | None = None, headers: dict | None = None) -> httpx.Response:
    """`case` with this raw body (None: none at all), signed for amojo over exactly these bytes."""
    method, path = method or case.method, path or case.path
    query = case.query if query is None else query
    sent: dict[str, Any] = {}
    if case.api == "amojo":
        sent = sign(CONFIG.channel_secret, method, path, body or b"", now_date())
    elif case.api == "rest" and case.endpoint != "oauth":
        sent = {"Authorization": f"Bearer {CONFIG.token}"}
    sent.update(headers or {})
    return client.request(method, f"{path}{'?' + query if query else ''}", content=body, headers=sent)


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _set(body: Any, dotted: str | tuple, value: Any, *, delete: bool = False) -> Any:
    """A copy of `body` with the field at `dotted` (or a tuple of keys) set to `value` (or removed)."""
    out = copy.deepcopy(body)
    *parents, last = dotted.split(".") if isinstance(dotted, str) else dotted
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key: Any = int(last) if isinstance(node, list) else last
    if delete:
        del node[key]
    else:
        node[key] = value
    return out


def _hostile_bodies(case: Case) -> Iterator[tuple[str, bytes]]:
    """Malformed, oversized, wrongly typed and missing-field bodies for a case that takes one."""
    yield "empty", b""
    yield "not json", b"{not json"
    yield "not utf-8", b'{"a": "\xff\xfe"}'
    yield "deep", b"[" * 100_000 + b"]" * 100_000
    yield "nested 40", b'{"a":' * 40 + b"1" + b"}" * 40
    yield "NaN", b'{"a": NaN}'
    yield "infinite", b'{"a": 1e400}'
    yield "huge int", b'{"a": ' + b"9" * 30 + b"}"
    yield "endless digits", b'{"a": ' + b"9" * 5000 + b"}"
    yield "lone surrogate", b'{"a": "\\ud800"}'
    yield "oversized", b'{"a": "' + b"x" * (CONFIG.max_body_bytes + 1) + b'"}'
    for value in (None, "x", 1, True, [], {}) if isinstance(case.body, dict) else (None, "x", 1, True, {}, []):
        if value == {} and case.endpoint == "admin_faults":
            continue  # no faults at all: a valid request
        yield f"body={value!r}", _encode(value)
    for dotted, kind in case.fields.items():
        if kind.endswith("!"):
            yield f"{dotted} missing", _encode(_set(case.body, dotted, None, delete=True))
        for value in WRONG[kind] + case.wrong.get(dotted, []):
            yield f"{dotted}={value!r:.40}", _encode(_set(case.body, dotted, value))
    for dotted, values in case.wrong.items():
        if dotted not in case.fields:
            for value in values:
                yield f"{dotted}={value!r:.40}", _encode(_set(case.body, dotted, value))


def _hostile_requests(case: Case) -> Iterator[tuple[str, dict]]:
    """Every hostile variant of a case, as keyword arguments of `_request`."""
    body = None if case.body is None else _encode(case.body)
    if case.body is not None:
        for label, hostile in _hostile_bodies(case):
            yield label, {"body": hostile}
    allowed = ENDPOINTS.get(case.endpoint, (case.method,))
    wrong_method = next(m for m in ("PATCH", "PUT", "DELETE", "POST", "GET") if m not in allowed)
    yield "wrong method", {"body": body, "method": wrong_method}
    if case.api == "amojo":
        bad_headers = {"no signature": {"X-Signature": ""}, "non-ascii signature": {"X-Signature": "подпись".encode()},
                       "non-ascii date": {"Date": "Пн, 01 янв 2026".encode()},
                       "date far away": {"Date": "Fri, 31 Dec 9999 23:59:59 -2359"},
                       "date garbage": {"Date": "1" * 300}, "non-ascii md5": {"Content-MD5": "мд5".encode()},
                       "odd content type": {"Content-Type": "text/plain; charset=\xff".encode("latin-1")}}
        for label, headers in bad_headers.items():
            yield label, {"body": body, "headers": headers}
        yield "unknown scope", {"body": body, "path": case.path.replace(SCOPE, "x%00%ff%F0").replace(
            CONFIG.channel_id, "нет")}
    if case.api == "rest" and case.endpoint != "oauth":
        for label, value in {"no token": "", "unknown token": "Bearer nope", "non-ascii token": "Bearer ключ".encode(),
                             "basic": "Basic abc"}.items():
            yield label, {"body": body, "headers": {"Authorization": value}}
    queries = {"history": ["limit=abc", "limit=²", "offset=-1", "limit=0", "limit=" + "9" * 5000, "offset=1.5"],
               "users": ["page=²", "limit=0", "limit=251", "page=abc", "limit=-1"],
               "contacts": ["page=²", "limit=abc", "page=0"],
               "contacts_chats": ["contact_id[]=²", "contact_id[]=x", ""]}
    if case.method == "GET":
        for query in queries.get(case.endpoint, []):
            yield f"query {query[:30]}", {"body": None, "query": query}
    if case.endpoint == "delivery_status":
        yield "unknown message", {"body": body, "path": case.path.rsplit("/", 2)[0] + "/nope/delivery_status"}


def _assert_enveloped_4xx(case: Case, answer: httpx.Response, label: str) -> None:
    """A 4xx whose body is the API's documented error envelope."""
    where = f"{case.method} {case.path} [{label}]: {answer.status_code} {answer.text[:300]}"
    assert 400 <= answer.status_code < 500, where
    body = answer.json()
    if case.api == "amojo" or answer.request.url.path.startswith("/v2/"):
        assert body["status"] == 0 and is_int(body["error_code"]) and body["error_type"], where
        assert isinstance(body["error_description"], str) and body["error_description"], where
    elif case.api == "rest":
        assert answer.headers["content-type"].startswith("application/problem+json"), where
        assert body["status"] == answer.status_code and body["title"] and body["detail"], where
    else:
        assert body["error"] and body["detail"], where


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the emulator under attack, seeded with one chat, message, contact
@dataclass
class Target:
    running: RunningEmulator
    client: httpx.Client
    cases: list[Case]
    chat_id: str


def _seeded(config: EmulatorConfig) -> tuple[RunningEmulator, httpx.Client, list[Case], str]:
    running = start(config)
    client = httpx.Client(base_url=running.url, timeout=30)
    probe = Case("connect", "POST", f"/v2/origin/custom/{CONFIG.channel_id}/connect")
    assert _request(client, probe, _encode({"account_id": CONFIG.account_id, "hook_api_version": "v2"})).is_success
    chat = Case("create_chat", "POST", f"/v2/origin/custom/{SCOPE}/chats")
    chat_id = _request(client, chat, _encode({"conversation_id": "conv-1",
                                              "user": {"id": "client-1", "name": "Client"}})).json()["id"]
    seed = {"event_type": "new_message", "payload": {"timestamp": 1, "msgid": "seed-1", "conversation_id": "conv-1",
                                                     "sender": {"id": "client-1", "name": "Client"},
                                                     "message": {"type": "text", "text": "seed"}}}
    sent = _request(client, Case("message", "POST", f"/v2/origin/custom/{SCOPE}"), _encode(seed))
    made = client.post("/api/v4/contacts", json=[{"name": "Bob"}], headers={"Authorization": f"Bearer {CONFIG.token}"})
    contact_id = made.json()["_embedded"]["contacts"][0]["id"]
    return running, client, _cases(chat_id, sent.json()["new_message"]["msgid"], contact_id), chat_id


def _target() -> Iterator[Target]:
    running, client, cases, chat_id = _seeded(CONFIG)
    try:
        yield Target(running, client, cases, chat_id)
    finally:
        client.close()
        running.stop()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    yield from _target()


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[Target]:
    """Its own emulator: a fuzzed request that happens to be valid changes state the table relies on."""
    yield from _target()


def _assert_up_and_readable(target: Target) -> None:
    state = target.client.get("/_emulator/state")
    assert state.status_code == 200, state.text
    assert state.json()["unhandled"] == []  # every refusal came from a check, none from the boundary
    history = _request(target.client, Case("history", "GET", f"/v2/origin/custom/{SCOPE}/chats/{target.chat_id}"
                                                              "/history"), None)
    assert history.status_code == 200 and history.json()["messages"]
    assert target.running._thread.is_alive()


def test_every_base_request_is_accepted():
    """The table itself: each case's request is valid, so each hostile variant differs from a valid one only in
    what it breaks."""
    running, client, cases, _ = _seeded(EmulatorConfig(rest_rate=None))
    last = ("disconnect", "admin_reset")  # the rest of the table needs the scope and the seeded state
    with running:
        for case in sorted(cases, key=lambda c: c.endpoint in last):
            if case.endpoint == "admin_clock":
                case = Case(case.endpoint, case.method, case.path, {"now": now_iso()})
            answer = _request(client, case, None if case.body is None else _encode(case.body))
            assert answer.is_success, f"{case.method} {case.path}: {answer.status_code} {answer.text[:300]}"
        client.close()


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


@pytest.mark.parametrize("endpoint", sorted({*ENDPOINTS, "admin_faults", "admin_clock", "admin_state",
                                             "admin_requests", "admin_reset"}))
def test_hostile_requests_are_an_enveloped_4xx(target, endpoint):
    cases = [c for c in target.cases if c.endpoint == endpoint]
    assert cases, f"no case for {endpoint}: every endpoint is attacked"
    for case in cases:
        for label, request in _hostile_requests(case):
            _assert_enveloped_4xx(case, _request(target.client, case, **request), label)
    _assert_up_and_readable(target)


# -- Hypothesis: any JSON anywhere in a request body is never a 5xx
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FUZZED = ("create_chat", "typing", "delivery_status", "message", "react", "contacts", "contacts_chats", "oauth")


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value, as a tuple of keys (any string may be a key, dots and all)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    out = []
    for key, child in items:
        path = (*prefix, key)
        out += [path, *_paths(child, path)]
    return out


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_anywhere_is_never_a_5xx(fuzz_target, data):
    target = fuzz_target
    case = data.draw(st.sampled_from([c for c in target.cases if c.endpoint in FUZZED and c.body is not None]))
    body = case.body
    paths = _paths(body)
    if data.draw(st.booleans()) or not paths:
        body = data.draw(JSON)
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            if not paths:
                break  # a mutation left a scalar where the structure was
            body = _set(body, data.draw(st.sampled_from(paths)), data.draw(JSON))
            paths = _paths(body)
    answer = _request(target.client, case, _encode(body))
    assert answer.status_code < 500, f"{case.path} {str(body)[:300]}: {answer.status_code} {answer.text[:300]}"
    if answer.status_code >= 400:
        _assert_enveloped_4xx(case, answer, "fuzzed")
    assert target.client.get("/_emulator/state").json()["unhandled"] == []
