"""The emulator serves any amojo client as amoCRM would (issue 15): each point over real HTTP."""

from __future__ import annotations

import pytest
from test_emulator_api import Amojo, rest

from amojo.emulator.config import EmulatorConfig
from amojo.emulator.server import start


@pytest.fixture
def amojo(emulator) -> Amojo:
    client = Amojo(emulator)
    assert client.connect().status_code == 200
    return client


def _problem(response) -> dict:
    """The REST v4 problem+json envelope (§5.3), asserted, then its body."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["status"] == response.status_code and body["title"] and body["detail"]
    return body


# -- rest_batch_max: the most contacts or links per POST (Q13 ⚠️)
@pytest.mark.parametrize("batch_max", [250, 3])
def test_rest_batches_up_to_rest_batch_max_are_taken_and_larger_ones_refused(batch_max):
    with start(EmulatorConfig(rest_batch_max=batch_max, rest_rate=None)) as running:
        client = Amojo(running)
        assert client.connect().status_code == 200
        chat_id = client.chat()
        contacts = [{"name": f"c{i}"} for i in range(batch_max)]
        taken = rest(running, "POST", "/api/v4/contacts", json=contacts)
        assert taken.status_code == 200, taken.text
        too_many = rest(running, "POST", "/api/v4/contacts", json=contacts + [{"name": "one more"}])
        assert too_many.status_code == 400
        assert str(batch_max) in _problem(too_many)["detail"]
        contact_id = taken.json()["_embedded"]["contacts"][0]["id"]
        links = [{"contact_id": contact_id, "chat_id": chat_id}] * (batch_max + 1)
        refused = rest(running, "POST", "/api/v4/contacts/chats", json=links)
        assert refused.status_code == 400
        assert str(batch_max) in _problem(refused)["detail"]
        assert rest(running, "POST", "/api/v4/contacts/chats", json=links[:batch_max]).status_code == 200
        assert len(running.emulator.store.contacts()) == batch_max  # the refused batch made nothing


def test_rest_batch_max_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="rest_batch_max"):
        EmulatorConfig(rest_batch_max=0)
