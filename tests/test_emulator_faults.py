"""The emulator's faults for issue 12, over real HTTP: lost answers on any endpoint, Retry-After in both forms,
a one-shot script of statuses and lost answers, and contact search by any filled field."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest
from rawclient import send

from amojo.emulator.config import Faults
from amojo.emulator.server import start

IMF_FIXDATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"\d{4} \d\d:\d\d:\d\d GMT$")
# Mostly digits, as a hex key can be: it must not be taken for a phone number.
IM_KEY = "amojoetl" + "30917254" * 4


def rest(running, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {running.emulator.config.token}"}
    return httpx.request(method, f"{running.url}{path}", headers=headers, **kwargs)


def amojo(running, method: str, path: str, payload: object = None) -> httpx.Response:
    config = running.emulator.config
    return send(running.url, config.channel_secret, method, f"/v2/origin/custom/{path}", payload)


def connect(running) -> httpx.Response:
    config = running.emulator.config
    return amojo(running, "POST", f"{config.channel_id}/connect",
                 {"account_id": config.account_id, "title": "Tests", "hook_api_version": "v2"})


def create_chat(running, conversation: str = "conv-1") -> httpx.Response:
    return amojo(running, "POST", f"{running.emulator.scope_id}/chats",
                 {"conversation_id": conversation, "user": {"id": f"client-{conversation}", "name": "Client"}})


def set_faults(running, payload: dict) -> httpx.Response:
    return httpx.post(f"{running.url}/_emulator/faults", json=payload)


def script_left(running) -> list[dict]:
    return httpx.get(f"{running.url}/_emulator/faults").json()["script"]


def contact(name: str, key: str | None = None, **fields: str) -> dict:
    values = [{"field_code": code, "values": [{"value": value}]} for code, value in fields.items()]
    if key:
        values.append({"field_code": "IM", "values": [{"value": key, "enum_code": "OTHER"}]})
    return {"name": name, "custom_fields_values": values}


@pytest.fixture
def running(emulator_config):
    emulator_config.rest_rate = None  # these tests are about injected faults, not the rate limiter
    with start(emulator_config) as running:
        yield running


# -- 1. lost answers on any endpoint
def test_lost_answer_on_rest_contacts_stores_the_contact(running):
    assert set_faults(running, {"lost_answer_rate": 1.0, "lost_answer_mode": "500",
                                "lost_answer_endpoints": ["contacts"]}).status_code == 200
    lost = rest(running, "POST", "/api/v4/contacts", json=[contact("Lost One")])
    assert lost.status_code == 500
    assert lost.headers["content-type"].startswith("application/problem+json") and lost.json()["status"] == 500
    assert [c["name"] for c in running.emulator.store.contacts()] == ["Lost One"]  # the effect is stored

    running.emulator.set_faults(Faults(lost_answer_rate=1.0, lost_answer_mode="drop",
                                       lost_answer_endpoints=("contacts",)))
    with pytest.raises(httpx.TransportError):
        rest(running, "POST", "/api/v4/contacts", json=[contact("Lost Two")])
    assert [c["name"] for c in running.emulator.store.contacts()] == ["Lost One", "Lost Two"]
    # Only 2xx answers are lost: a refused request has no effect to hide.
    assert rest(running, "POST", "/api/v4/contacts", json={"not": "an array"}).status_code == 400
    # Endpoints not named keep their answers.
    assert rest(running, "GET", "/api/v4/account").status_code == 200
    assert running.emulator.request_counts()["rest contacts 0"] == 1


def test_lost_answer_on_a_chats_api_endpoint(running):
    assert connect(running).status_code == 200
    running.emulator.set_faults(Faults(lost_answer_rate=1.0, lost_answer_mode="500",
                                       lost_answer_endpoints=("create_chat",)))
    lost = create_chat(running)
    assert lost.status_code == 500 and lost.json()["status"] == 0 and lost.json()["error_code"] == 500
    assert [c["conversation_id"] for c in running.emulator.store.chats()] == ["conv-1"]
    assert connect(running).status_code == 200  # connect is not named: answered


# -- 2. Retry-After in both forms
def test_injected_429_and_503_carry_retry_after_in_the_form_asked_for(running, monkeypatch):
    running.emulator.set_faults(Faults(error_rates={429: 1.0}, retry_after="seconds", retry_after_s=2.2))
    assert rest(running, "GET", "/api/v4/account").headers["Retry-After"] == "3"

    running.emulator.set_faults(Faults(error_rates={503: 1.0}, retry_after="seconds", retry_after_s=7))
    answer = rest(running, "GET", "/api/v4/account")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"

    # The emulator's clock, stopped at a moment: Retry-After is that moment + retry_after_s, rounded up.
    moment = datetime(2030, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
    monkeypatch.setattr(running.emulator, "now", lambda: moment)
    running.emulator.set_faults(Faults(error_rates={429: 1.0}, retry_after="http-date", retry_after_s=90.5))
    answer = rest(running, "GET", "/api/v4/account")
    assert answer.status_code == 429
    date = answer.headers["Retry-After"]
    assert IMF_FIXDATE.match(date) and date == "Wed, 02 Jan 2030 03:05:36 GMT", date
    assert parsedate_to_datetime(date) - moment == timedelta(seconds=90.75)
    running.emulator.set_faults(Faults(error_rates={503: 1.0}, retry_after="http-date", retry_after_s=54.75))
    answer = rest(running, "GET", "/api/v4/account")
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "Wed, 02 Jan 2030 03:05:00 GMT")

    running.emulator.set_faults(Faults(error_rates={429: 1.0}, retry_after="none"))
    assert "Retry-After" not in rest(running, "GET", "/api/v4/account").headers


def test_the_rate_limiters_own_429_keeps_seconds(emulator_config):
    emulator_config.rest_rate = 1.0
    emulator_config.faults = Faults(retry_after="http-date", retry_after_s=30)
    with start(emulator_config) as running:
        answers = [rest(running, "GET", "/api/v4/account") for _ in range(3)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and all(a.headers["Retry-After"].isdigit() for a in limited)


def test_repeated_rest_overruns_block_the_account_with_an_html_403(emulator_config):
    """amojo-api.md §5.2: over the REST limit is a 429; repeatedly over it, the account is blocked and amoCRM's
    nginx answers every REST request 403 with an HTML page, whatever the token, until the block lifts."""
    emulator_config.rest_rate = 1.0
    emulator_config.rest_block_after, emulator_config.rest_block_window_s = 2, 60.0
    emulator_config.rest_block_s = 600.0
    with start(emulator_config) as running:
        statuses = [rest(running, "GET", "/api/v4/account").status_code for _ in range(2)]
        assert statuses == [200, 429]  # a burst of one a second: the second is the first overrun
        blocked = rest(running, "GET", "/api/v4/account")  # the second overrun blocks the account
        assert blocked.status_code == 403 and blocked.headers["Content-Type"].startswith("text/html")
        assert "<html>" in blocked.text and "403 Forbidden" in blocked.text
        other = httpx.get(f"{running.url}/api/v4/users", headers={"Authorization": "Bearer another-token"})
        assert (other.status_code, other.headers["Content-Type"][:9]) == (403, "text/html")
        assert connect(running).status_code == 200  # the Chats API is not REST's limit
        running.emulator.set_clock(datetime.now(UTC) + timedelta(seconds=601))  # the block is over
        assert rest(running, "GET", "/api/v4/account").status_code in (200, 429)


def test_without_rest_block_after_overruns_stay_429s(emulator_config):
    emulator_config.rest_rate = 1.0
    with start(emulator_config) as running:
        statuses = {rest(running, "GET", "/api/v4/account").status_code for _ in range(6)}
    assert statuses == {200, 429}


# -- 3. the script: any status, one-shot, per endpoint
def test_scripted_408_on_contacts_has_no_effect(running):
    answer = set_faults(running, {"script": [{"endpoint": "contacts", "method": "POST", "status": 408}]})
    assert answer.json()["script"] == [{"endpoint": "contacts", "method": "POST", "status": 408, "times": 1}]
    assert rest(running, "GET", "/api/v4/contacts").status_code == 204  # a GET does not match a POST entry
    assert len(script_left(running)) == 1

    refused = rest(running, "POST", "/api/v4/contacts", json=[contact("Not Stored")])
    assert refused.status_code == 408
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 408 and refused.json()["detail"] == "injected"
    assert running.emulator.store.contacts() == []  # answered before any effect
    assert script_left(running) == []

    again = rest(running, "POST", "/api/v4/contacts", json=[contact("Stored")])
    assert again.status_code == 200
    assert [c["name"] for c in running.emulator.store.contacts()] == ["Stored"]


def test_scripted_429_with_retry_after_in_seconds_and_as_a_date(running):
    http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert connect(running).status_code == 200
    running.emulator.set_faults(Faults(script=[
        {"endpoint": "account", "status": 429, "retry_after": "120"},
        {"endpoint": "account", "status": 429, "retry_after": http_date},
        {"endpoint": "create_chat", "status": 429, "retry_after": 120},
        {"endpoint": "users", "status": 503},  # no retry_after: the Faults' form (seconds, 1)
    ]))
    first, second = rest(running, "GET", "/api/v4/account"), rest(running, "GET", "/api/v4/account")
    assert (first.status_code, first.headers["Retry-After"]) == (429, "120")
    assert (second.status_code, second.headers["Retry-After"]) == (429, http_date)
    assert second.json()["status"] == 429 and second.json()["title"] == "Too Many Requests"

    chat = create_chat(running)
    assert (chat.status_code, chat.headers["Retry-After"]) == (429, "120")
    assert chat.json() == {"status": 0, "error_code": 429, "error_type": "FAULT", "error_description": "injected 429"}
    assert running.emulator.store.chats() == []

    users = rest(running, "GET", "/api/v4/users")
    assert (users.status_code, users.headers["Retry-After"]) == (503, "1")
    assert rest(running, "GET", "/api/v4/account").status_code == 200  # one-shot: used up


def test_script_is_consumed_in_order_with_times(running):
    set_faults(running, {"error_rates": {"500": 1.0}, "script": [
        {"endpoint": "users", "status": 503, "times": 2},
        {"endpoint": "account", "status": 502},
        {"endpoint": "users", "lose": "500"},
        {"endpoint": "users", "status": 418},
    ]})
    assert rest(running, "GET", "/api/v4/account").status_code == 502  # entries for other endpoints do not block
    assert rest(running, "GET", "/api/v4/users").status_code == 503
    assert [(e["endpoint"], e["times"]) for e in script_left(running)] == [("users", 1), ("users", 1), ("users", 1)]
    assert rest(running, "GET", "/api/v4/users").status_code == 503
    lost = rest(running, "GET", "/api/v4/users")  # the handler ran, then its answer was lost
    assert lost.status_code == 500 and lost.json()["detail"] == "internal error"
    assert rest(running, "GET", "/api/v4/users").status_code == 418
    assert script_left(running) == []
    # With the script used up, the random faults apply again (error_rates 500: 1.0).
    assert rest(running, "GET", "/api/v4/users").json()["error_type"] == "INTERNAL"
    counts = running.emulator.request_counts()
    assert counts["rest users 503"] == 2 and counts["rest users 418"] == 1 and counts["rest users 500"] == 2


def test_scripted_lost_answer_stores_the_contact_and_its_key_finds_it(running):
    running.emulator.set_faults(Faults(script=[{"endpoint": "contacts", "method": "POST", "lose": "drop"}]))
    with pytest.raises(httpx.TransportError):
        rest(running, "POST", "/api/v4/contacts", json=[contact("Вася", IM_KEY, PHONE="+7 915 111-22-33")])
    other = rest(running, "POST", "/api/v4/contacts", json=[contact("Петя", "amojoetl" + "ab" * 16)])
    assert other.status_code == 200
    stored = running.emulator.store.contacts()[0]

    # 4. search by any filled field
    for query in (IM_KEY, IM_KEY.upper(), IM_KEY[3:20]):
        found = rest(running, "GET", "/api/v4/contacts", params={"query": query})
        assert found.status_code == 200, query
        contacts = found.json()["_embedded"]["contacts"]
        assert [c["id"] for c in contacts] == [stored["id"]], query
        assert {"field_code": "IM", "values": [{"value": IM_KEY, "enum_code": "OTHER"}]} in \
            contacts[0]["custom_fields_values"]
    assert rest(running, "GET", "/api/v4/contacts", params={"query": "amojoetl" + "cd" * 16}).status_code == 204
    assert len(rest(running, "GET", "/api/v4/contacts", params={"query": "amojoetl"}).json()["_embedded"]
               ["contacts"]) == 2
    phone = rest(running, "GET", "/api/v4/contacts", params={"query": "9151112233"}).json()
    assert [c["id"] for c in phone["_embedded"]["contacts"]] == [stored["id"]]  # phones are still searched as phones


def test_search_finds_any_custom_field_value(running):
    created = rest(running, "POST", "/api/v4/contacts", json=[
        {"name": "Анна", "custom_fields_values": [{"field_id": 271316, "values": [{"value": "Директор"}]}]},
        contact("Boris"),
    ]).json()["_embedded"]["contacts"]
    found = rest(running, "GET", "/api/v4/contacts", params={"query": "директор"}).json()["_embedded"]["contacts"]
    assert [c["id"] for c in found] == [created[0]["id"]]


def test_an_older_state_file_is_migrated_and_searchable(emulator_config, tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, phones TEXT, emails TEXT, body_json TEXT,"
                " created_at REAL)")
    old.execute("INSERT INTO contacts VALUES (3100001, 'Old', '[]', '[]', ?, 0)",
                (json.dumps(contact("Old", IM_KEY)),))
    old.commit()
    old.close()
    emulator_config.state_path = str(path)
    with start(emulator_config) as running:
        found = rest(running, "GET", "/api/v4/contacts", params={"query": IM_KEY}).json()["_embedded"]["contacts"]
        assert [c["id"] for c in found] == [3100001]
        created = rest(running, "POST", "/api/v4/contacts", json=[contact("New", "amojoetlnew")]).json()
        assert created["_embedded"]["contacts"][0]["id"] == 3100002


# -- 5. bad faults are refused
@pytest.mark.parametrize("payload", [
    {"no_such_fault": 1},
    {"seed": "42"},
    {"lost_answer_rate": 1.5},
    {"error_rates": {"abc": 0.5}},
    {"error_rates": {"503": "often"}},
    {"lost_answer_mode": "sometimes"},
    {"lost_answer_endpoints": "contacts"},
    {"lost_answer_endpoints": ["contact"]},
    {"retry_after": "minutes"},
    {"retry_after_s": -1},
    {"script": {"endpoint": "contacts", "status": 408}},
    {"script": [{"endpoint": "nowhere", "status": 408}]},
    {"script": [{"endpoint": "contacts", "status": "408"}]},
    {"script": [{"endpoint": "contacts", "status": 408, "lose": "500"}]},
    {"script": [{"endpoint": "contacts"}]},
    {"script": [{"endpoint": "contacts", "lose": "maybe"}]},
    {"script": [{"endpoint": "contacts", "lose": "drop", "retry_after": "5"}]},
    {"script": [{"endpoint": "account", "method": "POST", "status": 500}]},
    {"script": [{"endpoint": "contacts", "status": 408, "times": 0}]},
    {"script": [{"endpoint": "contacts", "status": 408, "when": "now"}]},
    [1, 2],
])
def test_bad_faults_are_a_400_and_change_nothing(running, payload):
    assert set_faults(running, {"error_rates": {"503": 0.5}}).status_code == 200
    answer = set_faults(running, payload)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid faults" and answer.json()["detail"]
    assert httpx.get(f"{running.url}/_emulator/faults").json()["error_rates"] == {"503": 0.5}
    with pytest.raises(ValueError):
        Faults.from_dict(payload)  # type: ignore[arg-type]


def test_a_faults_body_that_is_not_json_is_a_400(running):
    answer = httpx.post(f"{running.url}/_emulator/faults", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid faults"


def test_from_dict_names_the_field():
    with pytest.raises(ValueError, match="unknown fault settings: lost_answer_endpoint"):
        Faults.from_dict({"lost_answer_endpoint": ["contacts"]})
    with pytest.raises(ValueError, match=r"script\[1\]\.times"):
        Faults.from_dict({"script": [{"endpoint": "users", "status": 500}, {"endpoint": "users", "status": 500,
                                                                              "times": 1.5}]})
