"""What a person does to contacts in amoCRM between runs, and a create amoCRM stores after its 504 (issue 25), as
the emulator offers them over HTTP: ids never reused, a merge, a delete, a late commit."""

from __future__ import annotations

import time

import httpx
import pytest
from test_emulator_faults import connect, contact, create_chat, rest, script_left, set_faults

from amojo.emulator.config import Faults
from amojo.emulator.server import start


@pytest.fixture
def running(emulator_config):
    emulator_config.rest_rate = None
    with start(emulator_config) as running:
        yield running


def _create(running, *contacts: dict) -> list[int]:
    answer = rest(running, "POST", "/api/v4/contacts", json=list(contacts))
    assert answer.status_code == 200, answer.text
    return [c["id"] for c in answer.json()["_embedded"]["contacts"]]


def _links(running) -> dict[str, int]:
    return {link["chat_id"]: link["contact_id"] for link in running.emulator.store.links()}


def test_a_deleted_contacts_id_is_never_given_again(running):
    first, second = _create(running, contact("One"), contact("Two"))
    assert httpx.post(f"{running.url}/_emulator/contacts/delete", json={"id": second}).json() == {"deleted": second}
    (third,) = _create(running, contact("Three"))
    assert third > second  # amoCRM never reuses an id; the emulator did (max + 1), which hid stale links
    assert {c["id"] for c in running.emulator.snapshot()["contacts"]} == {first, third}


def test_a_merge_moves_the_chats_and_the_values_and_the_other_id_is_gone(running):
    connect(running)
    chat = create_chat(running, "conv-m").json()["id"]
    survivor, merged = _create(running, contact("Anna", PHONE="+79150000001"),
                               contact("Anna twin", key="amojoetl00ff", EMAIL="anna@example.com"))
    assert rest(running, "POST", "/api/v4/contacts/chats", json=[{"chat_id": chat, "contact_id": merged}]) \
        .status_code == 200
    answer = httpx.post(f"{running.url}/_emulator/contacts/merge", json={"survivor": survivor, "merged": merged})
    assert answer.status_code == 200, answer.text
    assert _links(running) == {chat: survivor}
    assert [c["id"] for c in running.emulator.snapshot()["contacts"]] == [survivor]
    for query in ("amojoetl00ff", "anna@example.com", "9150000001"):  # the survivor holds the other's values
        found = rest(running, "GET", "/api/v4/contacts", params={"query": query}).json()["_embedded"]["contacts"]
        assert [c["id"] for c in found] == [survivor], query
    refused = rest(running, "POST", "/api/v4/contacts/chats", json=[{"chat_id": chat, "contact_id": merged}])
    assert refused.status_code == 400 and str(merged) in refused.json()["detail"]


def test_a_deleted_contacts_chats_are_left_unlinked(running):
    connect(running)
    chat = create_chat(running, "conv-d").json()["id"]
    (gone,) = _create(running, contact("Gone"))
    rest(running, "POST", "/api/v4/contacts/chats", json=[{"chat_id": chat, "contact_id": gone}])
    running.emulator.delete_contact(gone)
    assert rest(running, "GET", "/api/v4/contacts/chats", params={"chat_id[]": chat}).status_code == 204


@pytest.mark.parametrize("body", [{}, {"survivor": 1}, {"survivor": "1", "merged": 2}, {"survivor": 1, "merged": 1},
                                  {"survivor": 1, "merged": 2, "keep": True}])
def test_a_bad_merge_is_a_400_saying_what_is_wrong(running, body):
    _create(running, contact("One"), contact("Two"))
    answer = httpx.post(f"{running.url}/_emulator/contacts/merge", json=body)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid merge" and answer.json()["detail"]
    assert len(running.emulator.snapshot()["contacts"]) == 2


def test_deleting_a_contact_that_is_not_there_is_a_400(running):
    answer = httpx.post(f"{running.url}/_emulator/contacts/delete", json={"id": 404})
    assert answer.status_code == 400 and "404" in answer.json()["detail"]


def test_a_late_commit_answers_504_and_stores_the_contact_later(running):
    assert set_faults(running, {"script": [{"endpoint": "contacts", "method": "POST", "late_ms": 300}]}) \
        .status_code == 200
    answer = rest(running, "POST", "/api/v4/contacts", json=[contact("Late", key="amojoetl0a1b")])
    assert answer.status_code == 504 and script_left(running) == []
    assert running.emulator.snapshot()["contacts"] == []
    deadline = time.monotonic() + 10
    while not running.emulator.snapshot()["contacts"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c["name"] for c in running.emulator.snapshot()["contacts"]] == ["Late"]


def test_late_commits_at_a_rate_on_the_endpoints_named(running):
    set_faults(running, {"late_commit_rate": 1.0, "late_commit_ms": 0})
    assert rest(running, "POST", "/api/v4/contacts", json=[contact("Late")]).status_code == 504
    assert rest(running, "GET", "/api/v4/contacts").status_code in (200, 204)  # a read is never late
    assert rest(running, "GET", "/api/v4/users").status_code == 200


@pytest.mark.parametrize("payload", [
    {"late_commit_rate": 2},
    {"late_commit_ms": -1},
    {"late_commit_endpoints": ["nowhere"]},
    {"script": [{"endpoint": "contacts", "late_ms": "soon"}]},
    {"script": [{"endpoint": "contacts", "late_ms": 10, "status": 504}]},
    {"script": [{"endpoint": "contacts", "late_ms": 10, "retry_after": "5"}]},
])
def test_bad_late_commit_settings_are_refused(payload):
    with pytest.raises(ValueError):
        Faults.from_dict(payload)
