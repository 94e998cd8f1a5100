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


def _envelope(response, status: int = 400) -> dict:
    """The amojo error envelope (§5.1, Q7), asserted, then its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == 0 and body["error_code"] in (status, 453) and body["error_type"]
    assert isinstance(body["error_description"], str) and body["error_description"]
    return body


def _event(amojo: Amojo, event_type: str, payload: dict):
    return amojo.call("POST", amojo.scope, {"event_type": event_type, "payload": payload})


def _payload(msgid: str, **fields) -> dict:
    base = {"timestamp": 1_700_000_000, "msec_timestamp": 1_700_000_000_000, "msgid": msgid, "silent": True,
            "message": {"type": "text", "text": f"text of {msgid}"}, "sender": {"id": "client-1", "name": "Client"}}
    return {**base, **fields}


MANAGER = "a1d2c3b4-0001-4a5b-8c6d-7e8f9a0b1c01"  # Анна Смирнова's amojo_id in the demo users


# -- 1. conversation_ref_id: the amojo chat id routes the message (§3.4, §4.4)
def test_conversation_ref_id_with_a_new_conversation_id_goes_to_that_chat_and_binds_it(amojo, emulator):
    chat_id = amojo.chat("conv-1")
    answer = _event(amojo, "new_message", _payload("m1", conversation_id="their-new-id", conversation_ref_id=chat_id))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new_message"]["conversation_id"] == chat_id
    assert [c["id"] for c in emulator.emulator.store.chats()] == [chat_id]  # no new chat
    # From now on the new id names the same chat, alone too.
    again = _event(amojo, "new_message", _payload("m2", conversation_id="their-new-id"))
    assert again.json()["new_message"]["conversation_id"] == chat_id
    assert [m["message"]["client_id"] for m in amojo.history(chat_id).json()["messages"]] == ["m2", "m1"]


def test_conversation_ref_id_alone_goes_to_that_chat(amojo, emulator):
    chat_id = amojo.chat("conv-1")
    answer = _event(amojo, "new_message", _payload("m1", conversation_ref_id=chat_id))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new_message"]["conversation_id"] == chat_id
    assert len(emulator.emulator.store.chats()) == 1


def test_conversation_ref_id_of_no_chat_or_against_another_chat_is_a_400(amojo, emulator):
    first = amojo.chat("conv-1")
    amojo.chat("conv-2", client="client-2")
    _envelope(_event(amojo, "new_message", _payload("m1", conversation_ref_id="no-such-chat")))
    clash = _event(amojo, "new_message", _payload("m2", conversation_id="conv-2", conversation_ref_id=first))
    assert "conversation_id" in _envelope(clash)["error_description"]
    _envelope(_event(amojo, "new_message", _payload("m3")))  # neither conversation_id nor conversation_ref_id
    assert emulator.emulator.store.messages() == [] and len(emulator.emulator.store.chats()) == 2


# -- 2. connect answers is_time_window_disabled (§3.1 response table)
def test_connect_answer_carries_is_time_window_disabled(emulator):
    client = Amojo(emulator)
    assert client.connect().json()["is_time_window_disabled"] is False  # §3.1: default false
    body = {"account_id": client.config.account_id, "hook_api_version": "v2", "is_time_window_disabled": True}
    answer = client.call("POST", f"{client.config.channel_id}/connect", body)
    assert answer.json()["is_time_window_disabled"] is True
    _envelope(client.call("POST", f"{client.config.channel_id}/connect", {**body, "is_time_window_disabled": "yes"}))


# -- 3, 4. participants given by ref_id alone; errors name the participant and the field
def test_ref_id_only_participants_are_refused_by_default_naming_what_lacks(amojo):
    chat_id = amojo.chat("conv-1")
    manager_by_ref = _payload("m1", conversation_ref_id=chat_id, sender={"ref_id": MANAGER},
                              receiver={"id": "client-1", "name": "Client"})
    assert _envelope(_event(amojo, "new_message", manager_by_ref))["error_description"] == "sender.id is required"
    client_ref = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "conv-1",
                                                              "user": {"id": "client-1", "name": "C"}}).json()
    client_by_ref = _payload("m2", conversation_id="conv-1", sender={"id": "mgr", "name": "Anna", "ref_id": MANAGER},
                             receiver={"ref_id": client_ref["user"]["id"]})
    assert _envelope(_event(amojo, "new_message", client_by_ref))["error_description"] == "receiver.id is required"


@pytest.mark.parametrize("payload, where", [
    ({"sender": {"name": "x"}}, "sender.id is required"),
    ({"sender": {"id": "client-1"}}, "sender.name is required"),
    ({"sender": {"id": "m", "name": "M", "ref_id": MANAGER}, "receiver": {"name": "x"}}, "receiver.id is required"),
    ({"sender": {"id": "m", "name": "M", "ref_id": MANAGER}, "receiver": {"id": "client-1"}},
     "receiver.name is required"),
    ({"sender": {"id": "client-1", "name": "C", "profile": {"phone": 7}}}, "sender.profile.phone"),
    ({"sender": {"id": 5, "name": "C"}}, "sender.id must be a string"),
])
def test_participant_errors_name_the_participant_and_the_field(amojo, payload, where):
    amojo.chat("conv-1")
    answer = _event(amojo, "new_message", _payload("m1", conversation_id="conv-1", **payload))
    assert where in _envelope(answer)["error_description"]


def test_create_chat_error_names_the_user_field(amojo):
    answer = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c", "user": {"name": "n"}})
    assert _envelope(answer)["error_description"] == "user.id is required"


@pytest.fixture
def by_ref():
    with start(EmulatorConfig(ref_id_participants="accept")) as running:
        client = Amojo(running)
        assert client.connect().status_code == 200
        yield client, running


def test_ref_id_only_participants_accepted_when_switched(by_ref):
    amojo, running = by_ref
    created = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "conv-1", "user": {
        "id": "client-1", "name": "Client", "profile": {"phone": "+7 915 111-22-33"}}}).json()
    chat_id, client_amojo_id = created["id"], created["user"]["id"]
    outgoing = _event(amojo, "new_message", _payload("m1", conversation_ref_id=chat_id, sender={"ref_id": MANAGER},
                                                     receiver={"ref_id": client_amojo_id}))
    assert outgoing.status_code == 200, outgoing.text
    assert outgoing.json()["new_message"]["sender_id"] == MANAGER
    assert outgoing.json()["new_message"]["receiver_id"] == client_amojo_id
    incoming = _event(amojo, "new_message", _payload("m2", conversation_ref_id=chat_id,
                                                     sender={"ref_id": client_amojo_id}))
    assert incoming.status_code == 200, incoming.text
    newest, oldest = amojo.history(chat_id).json()["messages"]
    assert oldest["sender"] == {"id": MANAGER, "name": "Анна Смирнова"}  # amoCRM's own user, by its amojo_id
    assert oldest["receiver"] == newest["sender"] == created["user"]
    assert newest["sender"]["client_id"] == "client-1" and newest["sender"]["phone"] == "79151112233"
    # A ref_id that names nobody is still refused, naming the participant.
    unknown = _event(amojo, "new_message", _payload("m3", conversation_ref_id=chat_id, sender={"ref_id": MANAGER},
                                                    receiver={"ref_id": "nobody"}))
    assert "receiver" in _envelope(unknown)["error_description"]
    stranger = _event(amojo, "new_message", _payload("m4", conversation_ref_id=chat_id, sender={"ref_id": "not-a-user"},
                                                     receiver={"ref_id": client_amojo_id}))
    _envelope(stranger)


# -- 5. react, edit of an unknown message, reply_to
def test_react_and_unreact_a_message(amojo, emulator):
    amojo.chat("conv-1")
    sent = _event(amojo, "new_message", _payload("m1", conversation_id="conv-1")).json()["new_message"]
    react = {"conversation_id": "conv-1", "msgid": "m1", "user": {"id": "client-1"}, "type": "react", "emoji": "😍"}
    answer = amojo.call("POST", f"{amojo.scope}/react", react)
    assert answer.status_code == 200 and answer.content == b""
    assert [r["emoji"] for r in emulator.emulator.store.reactions()] == ["😍"]
    by_ids = {"conversation_ref_id": sent["conversation_id"], "id": sent["msgid"], "user": {"id": "client-1"},
              "type": "unreact"}
    assert amojo.call("POST", f"{amojo.scope}/react", by_ids).status_code == 200
    assert emulator.emulator.store.reactions() == []
    _envelope(amojo.call("POST", f"{amojo.scope}/react", {**react, "msgid": "nope"}), 404)
    _envelope(amojo.call("POST", f"{amojo.scope}/react", {**react, "emoji": None}))  # emoji required for react
    _envelope(amojo.call("POST", f"{amojo.scope}/react", {**react, "type": "love"}))


def test_edit_of_an_unknown_message_is_a_400(amojo):
    amojo.chat("conv-1")
    edit = {"msgid": "nope", "conversation_id": "conv-1", "message": {"type": "text", "text": "x"}}
    assert _envelope(_event(amojo, "edit_message", edit))["error_type"] == "MESSAGE_NOT_FOUND"
    assert _envelope(_event(amojo, "edit_message", {**edit, "msgid": None, "id": "nope"}))["error_type"] \
        == "MESSAGE_NOT_FOUND"


def test_reply_to_must_quote_a_message_of_the_same_chat(amojo, emulator):
    amojo.chat("conv-1")
    amojo.chat("conv-2", client="client-2")
    _event(amojo, "new_message", _payload("m1", conversation_id="conv-1"))
    _event(amojo, "new_message", _payload("other", conversation_id="conv-2", sender={"id": "client-2", "name": "B"}))
    quote = _event(amojo, "new_message", _payload("m2", conversation_id="conv-1",
                                                  reply_to={"message": {"msgid": "m1"}}))
    assert quote.status_code == 200, quote.text
    for reply_to in ({"message": {"msgid": "nope"}}, {"message": {"id": "nope"}}, {"message": {"msgid": "other"}},
                     {"message": {"type": "text"}}, {"message": "m1"}):
        refused = _event(amojo, "new_message", _payload("m3", conversation_id="conv-1", reply_to=reply_to))
        assert "reply_to" in _envelope(refused)["error_description"]
    full = {"message": {"type": "text", "text": "quoted", "timestamp": 1, "msec_timestamp": 1000,
                        "sender": {"name": "Someone"}}}
    assert _event(amojo, "new_message", _payload("m4", conversation_id="conv-1", reply_to=full)).status_code == 200
    assert {m["msgid"] for m in emulator.emulator.store.messages()} == {"m1", "other", "m2", "m4"}


# -- 6. history shows one record per participant, not each message's payload
def test_history_shows_each_participant_the_same_in_every_message(amojo):
    chat_id = amojo.chat("conv-1")
    rich = {"id": "client-1", "name": "Client", "avatar": "https://x/a.png", "profile": {"phone": "+79151112233"}}
    _event(amojo, "new_message", _payload("m1", conversation_id="conv-1", sender=rich))
    _event(amojo, "new_message", _payload("m2", conversation_id="conv-1", sender={"id": "client-1", "name": "Client"}))
    _event(amojo, "new_message", _payload("m3", conversation_id="conv-1",
                                          sender={"id": "mgr", "name": "whatever", "ref_id": MANAGER},
                                          receiver={"id": "client-1", "name": "Client"}))
    items = amojo.history(chat_id).json()["messages"]
    clients = [items[0]["receiver"], items[1]["sender"], items[2]["sender"]]
    assert all(c == clients[0] for c in clients)
    assert clients[0]["avatar"] == "https://x/a.png" and clients[0]["phone"] == "79151112233"


@pytest.mark.parametrize("updates, expected", [("merge", "New Name"), ("keep", "Client")])
def test_participant_updates_merge_or_keep(updates, expected):
    with start(EmulatorConfig(participant_updates=updates)) as running:
        amojo = Amojo(running)
        amojo.connect()
        chat_id = amojo.chat("conv-1", client="client-1")
        for msgid, name in (("m1", "Old Name"), ("m2", "New Name")):
            _event(amojo, "new_message", _payload(msgid, conversation_id="conv-1",
                                                  sender={"id": "client-1", "name": name}))
        names = {m["sender"]["name"] for m in amojo.history(chat_id).json()["messages"]}
        assert names == {expected}  # the chat was created for "Client": "keep" keeps that first name


def test_history_of_messages_stored_before_participant_records_still_reads(amojo, emulator):
    """A state file from before issue 15 holds messages without the participants' amojo ids, and no records."""
    chat_id = amojo.chat("conv-1")
    store = emulator.emulator.store
    old = {"timestamp": 1, "msgid": "old-1", "message": {"type": "text", "text": "old"},
           "sender": {"id": "mgr", "name": "Anna", "ref_id": MANAGER},
           "receiver": {"id": "client-9", "name": "Nine", "profile": {"phone": "+7 916"}}}
    store.add_message(emulator.emulator.scope_id, chat_id, old, unlinked=True)
    (item,) = amojo.history(chat_id).json()["messages"]
    assert item["sender"] == {"id": MANAGER, "name": "Anna"}
    assert item["receiver"]["client_id"] == "client-9" and item["receiver"]["phone"] == "7916"
    edit = {"msgid": "old-1", "message": {"type": "text", "text": "new"}}
    assert _event(amojo, "edit_message", edit).json()["new_message"]["sender_id"] == MANAGER


# -- 7. bad input is a 4xx in the API's envelope, never a 500; nothing stored poisons a later answer
def _raw_signed(amojo: Amojo, method: str, path: str, body: bytes, **headers: str | bytes):
    """A request whose body is sent as given (not re-serialised), signed over exactly those bytes."""
    import httpx
    from rawclient import now_date, sign

    signed = sign(amojo.config.channel_secret, method, f"/v2/origin/custom/{path}", body, now_date())
    signed.update(headers)
    return httpx.request(method, f"{amojo.url}/v2/origin/custom/{path}", content=body, headers=signed)


def _assert_still_readable(running, chat_id: str, amojo: Amojo) -> None:
    import httpx

    state = httpx.get(f"{running.url}/_emulator/state")
    assert state.status_code == 200 and state.json()["unhandled"] == []
    assert amojo.history(chat_id).status_code in (200, 204)


def test_deeply_nested_json_is_a_400(amojo, emulator):
    chat_id = amojo.chat()
    for depth in (100, 100_000):
        body = b'{"event_type":"new_message","payload":' + b"[" * depth + b"]" * depth + b"}"
        _envelope(_raw_signed(amojo, "POST", amojo.scope, body))
    _assert_still_readable(emulator, chat_id, amojo)


@pytest.mark.parametrize("timestamps", [
    {"timestamp": 10**30}, {"timestamp": 10**17}, {"msec_timestamp": 10**30}, {"timestamp": -1},
])
def test_timestamps_out_of_range_are_a_400(amojo, emulator, timestamps):
    chat_id = amojo.chat()
    _envelope(_event(amojo, "new_message", _payload("m1", conversation_id="conv-1", **timestamps)))
    _assert_still_readable(emulator, chat_id, amojo)


def test_a_non_ascii_signature_is_a_403_not_a_crash(amojo, emulator):
    answer = _raw_signed(amojo, "POST", amojo.scope, b"{}", **{"X-Signature": "подпись".encode()})
    assert _envelope(answer, 403)["error_type"] == "ORIGIN_INVALID_SIGNATURE"
    weird_date = _raw_signed(amojo, "POST", amojo.scope, b"{}", Date="Mon, 01 Jan 99999 00:00:00 +0000")
    _envelope(weird_date, 403)


@pytest.mark.parametrize("contact", [
    {"name": "x", "custom_fields_values": "abc"},
    {"name": "x", "custom_fields_values": ["abc"]},
    {"name": "x", "custom_fields_values": [{"field_code": "PHONE", "values": "79151112233"}]},
    {"name": "x", "custom_fields_values": [{"field_code": "PHONE", "values": ["79151112233"]}]},
    {"name": ["not", "a", "string"]},
])
def test_malformed_contact_fields_are_a_validation_error(emulator, contact):
    answer = rest(emulator, "POST", "/api/v4/contacts", json=[{"name": "fine"}, contact])
    assert answer.status_code == 400
    problem = _problem(answer)
    assert problem["detail"] == "Request validation failed"  # amoCRM's envelope, §5.3
    (refused,) = problem["validation-errors"]
    assert refused["request_id"] == "1" and refused["errors"][0]["path"] is not None
    assert emulator.emulator.store.contacts() == []  # nothing of the batch is created


@pytest.mark.parametrize("query", ["contact_id[]=²", "contact_id[]=abc", "contact_id[]=" + "9" * 5000])
def test_a_contact_id_filter_that_is_not_an_integer_is_a_400(emulator, query):
    _problem(rest(emulator, "GET", f"/api/v4/contacts/chats?{query}"))


@pytest.mark.parametrize("faults", [
    b"{not json", b"[]", b'{"nope": 1}', b'{"script": [{"endpoint": ["message"], "status": 500}]}',
    b'{"lost_answer_endpoints": [["message"]]}', '{"error_rates": {"²": 0.1}}'.encode(), b'{"hang_seconds": 1e300}',
    b'{"retry_after_s": 1e300}', b'{"latency_ms": NaN}', b'{"seed": "x"}', b"[" * 50_000,
])
def test_malformed_faults_are_a_400_and_change_nothing(emulator, faults):
    import httpx

    before = httpx.get(f"{emulator.url}/_emulator/faults").json()
    answer = httpx.post(f"{emulator.url}/_emulator/faults", content=faults)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid faults" and answer.json()["detail"]
    assert httpx.get(f"{emulator.url}/_emulator/faults").json() == before


@pytest.mark.parametrize("clock", [
    b"{not json", b"[]", b'{"then": null}', b'{"now": 5}', b'{"now": "yesterday"}', b'{"now": "2026-10-01T00:00"}',
    b'{"now": "9999-12-31T23:59:59+00:00"}', b'{"now": "0001-01-01T00:00:00+00:00"}',
])
def test_malformed_clock_settings_are_a_400(emulator, clock):
    import httpx

    answer = httpx.post(f"{emulator.url}/_emulator/clock", content=clock)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid clock" and answer.json()["detail"]
    assert httpx.post(f"{emulator.url}/_emulator/clock", json={"now": "2026-10-01T00:00:00+00:00"}).status_code == 200
    assert httpx.post(f"{emulator.url}/_emulator/clock", json={"now": None}).status_code == 200


@pytest.mark.parametrize("location", [
    b'{"lat": NaN, "lon": 1}', b'{"lat": 1, "lon": Infinity}', b'{"lat": 1e400, "lon": 1}', b'{"lat": 91, "lon": 1}',
    b'{"lat": "55.7", "lon": 37.6}',
])
def test_a_location_that_is_not_a_place_is_a_400_and_leaves_state_readable(amojo, emulator, location):
    chat_id = amojo.chat()
    body = (b'{"event_type":"new_message","payload":{"timestamp":1,"msec_timestamp":1000,"msgid":"loc",'
            b'"conversation_id":"conv-1","sender":{"id":"client-1","name":"C"},'
            b'"message":{"type":"location","location":' + location + b"}}}")
    _envelope(_raw_signed(amojo, "POST", amojo.scope, body))
    _assert_still_readable(emulator, chat_id, amojo)
    assert emulator.emulator.store.messages() == []


def test_a_lone_surrogate_is_a_400_and_leaves_state_readable(amojo, emulator):
    chat_id = amojo.chat()
    body = (b'{"event_type":"new_message","payload":{"timestamp":1,"msgid":"s","conversation_id":"conv-1",'
            b'"sender":{"id":"client-1","name":"\\ud800"},"message":{"type":"text","text":"x"}}}')
    _envelope(_raw_signed(amojo, "POST", amojo.scope, body))
    _assert_still_readable(emulator, chat_id, amojo)


def test_a_body_over_max_body_bytes_is_a_413():
    with start(EmulatorConfig(max_body_bytes=1000)) as running:
        amojo = Amojo(running)
        amojo.connect()
        chat_id = amojo.chat()
        _envelope(amojo.message("big", message={"type": "text", "text": "x" * 2000}), 413)
        assert amojo.message("small").status_code == 200
        _problem(rest(running, "POST", "/api/v4/contacts", json=[{"name": "x" * 2000}]))
        _assert_still_readable(running, chat_id, amojo)


@pytest.mark.parametrize("method, path, envelope", [
    ("POST", "/v2/origin/custom/nope/nope/nope/nope", "amojo"), ("GET", "/v2/origin/custom/x/connect", "amojo"),
    ("GET", "/api/v4/nope", "rest"), ("DELETE", "/api/v4/contacts", "rest"), ("GET", "/_emulator/nope", "admin"),
    ("POST", "/v2/origin/custom/x/react/extra", "amojo"),
])
def test_unknown_routes_and_methods_answer_in_the_api_envelope(emulator, method, path, envelope):
    import httpx

    answer = httpx.request(method, f"{emulator.url}{path}")
    assert answer.status_code in (404, 405)
    if envelope == "amojo":
        _envelope(answer, answer.status_code)
    elif envelope == "rest":
        _problem(answer)
    else:
        assert answer.json()["error"] and answer.json()["detail"]


def test_connections_answer_without_nagles_delay(emulator):
    """Each answer goes out in two writes; with Nagle on, a keep-alive client waits its delayed ACK (~40 ms) for
    the second. The accepted connection must have TCP_NODELAY."""
    import socket

    import httpx

    with httpx.Client(base_url=emulator.url) as client:
        assert client.get("/_emulator/faults").status_code == 200  # the connection stays open (keep-alive)
        (connection,) = emulator._server.server_state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
