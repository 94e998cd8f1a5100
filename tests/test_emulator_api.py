"""The emulator answers as amojo-api.md documents, over real HTTP, for a client that signs independently."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from rawclient import send

from amojo.emulator.config import Faults
from amojo.emulator.server import start

MANAGER = "a1d2c3b4-0001-4a5b-8c6d-7e8f9a0b1c01"


class Amojo:
    """A small test-side wrapper around the independent signer."""

    def __init__(self, running) -> None:
        self.url = running.url
        self.config = running.emulator.config
        self.scope = running.emulator.scope_id

    def call(self, method: str, path: str, payload: object = None, query: str = "") -> httpx.Response:
        return send(self.url, self.config.channel_secret, method, f"/v2/origin/custom/{path}", payload, query=query)

    def connect(self) -> httpx.Response:
        return self.call("POST", f"{self.config.channel_id}/connect",
                         {"account_id": self.config.account_id, "title": "Tests", "hook_api_version": "v2"})

    def chat(self, conversation: str = "conv-1", client: str = "client-1") -> str:
        answer = self.call("POST", f"{self.scope}/chats",
                           {"conversation_id": conversation, "user": {"id": client, "name": "Client"}})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def message(self, msgid: str, conversation: str = "conv-1", *, client: str = "client-1", outgoing: bool = False,
                silent: bool = True, message: dict | None = None, ts: int = 1_700_000_000, **extra) -> httpx.Response:
        payload: dict = {"timestamp": ts, "msec_timestamp": ts * 1000, "msgid": msgid, "conversation_id": conversation,
                         "message": message or {"type": "text", "text": f"text of {msgid}"}, "silent": silent}
        if outgoing:
            payload["sender"] = {"id": "manager-1", "name": "Manager", "ref_id": MANAGER}
            payload["receiver"] = {"id": client, "name": "Client"}
        else:
            payload["sender"] = {"id": client, "name": "Client"}
        payload.update(extra)
        return self.call("POST", self.scope, {"event_type": "new_message", "payload": payload})

    def history(self, chat_id: str, query: str = "") -> httpx.Response:
        return self.call("GET", f"{self.scope}/chats/{chat_id}/history", query=query)


@pytest.fixture
def amojo(emulator) -> Amojo:
    client = Amojo(emulator)
    assert client.connect().status_code == 200
    return client


def rest(emulator, method: str, path: str, token: str | None = "default", **kwargs) -> httpx.Response:
    token = emulator.emulator.config.token if token == "default" else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{emulator.url}{path}", headers=headers, **kwargs)


# -- connect, chats
def test_connect_is_idempotent_and_returns_the_scope(emulator):
    client = Amojo(emulator)
    first, second = client.connect(), client.connect()
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["scope_id"] == f"{client.config.channel_id}_{client.config.account_id}"
    assert first.json()["hook_api_version"] == "v2"


def test_connect_to_an_unknown_channel_is_404(emulator):
    client = Amojo(emulator)
    response = client.call("POST", "00000000-0000-0000-0000-000000000000/connect",
                           {"account_id": client.config.account_id})
    assert response.status_code == 404


def test_disconnect_closes_the_scope(amojo):
    assert amojo.call("DELETE", f"{amojo.config.channel_id}/disconnect",
                      {"account_id": amojo.config.account_id}).status_code == 200
    assert amojo.call("POST", f"{amojo.scope}/chats",
                      {"conversation_id": "c", "user": {"id": "u", "name": "n"}}).status_code == 404


def test_create_chat_is_idempotent_on_conversation_id(amojo):
    first = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c1", "user": {
        "id": "u1", "name": "Имя", "profile": {"phone": "+79151112233", "email": "a@b.c"}}})
    again = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c1", "user": {"id": "u1", "name": "X"}})
    assert first.json()["id"] == again.json()["id"]
    user = first.json()["user"]
    assert user["client_id"] == "u1" and user["phone"] == "79151112233" and user["avatar"] == ""
    bare = amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "c2", "user": {"id": "u2", "name": "n"}})
    assert "phone" not in bare.json()["user"] and "email" not in bare.json()["user"]


@pytest.mark.parametrize("body", [
    {"user": {"id": "u", "name": "n"}},
    {"conversation_id": "c"},
    {"conversation_id": 5, "user": {"id": "u", "name": "n"}},
    {"conversation_id": "c", "user": {"id": "u"}},
    {"conversation_id": "c", "user": {"id": "u", "name": "n"}, "source": {"external_id": "x" * 41}},
])
def test_create_chat_validation(amojo, body):
    response = amojo.call("POST", f"{amojo.scope}/chats", body)
    assert response.status_code == 400
    assert response.json()["status"] == 0 and response.json()["error_code"] == 400


# -- messages
def test_outgoing_without_ref_id_is_453(amojo):
    amojo.chat()
    response = amojo.message("m1", outgoing=True, sender={"id": "manager-1", "name": "Manager"})
    assert response.status_code == 400
    assert response.json()["error_code"] == 453


def test_receiver_only_on_outgoing(amojo):
    amojo.chat()
    response = amojo.message("m1", receiver={"id": "someone", "name": "x"})  # the client as sender, with a receiver
    assert response.status_code == 400


@pytest.mark.parametrize("message", [
    {"type": "gif", "text": "x"},
    {"type": "text"},
    {"type": "text", "text": ""},
    {"type": "picture", "file_name": "a.jpg", "file_size": 1},
    {"type": "picture", "media": "ftp://x/a.jpg", "file_name": "a.jpg", "file_size": 1},
    {"type": "file", "media": "https://x/a.pdf"},
    {"type": "location", "location": {"lat": 1.0}},
    {"type": "contact", "contact": {"name": "n"}},
    {"type": "text", "text": 5},
])
def test_message_validation(amojo, message):
    amojo.chat()
    assert amojo.message("m1", message=message).status_code == 400


def test_strict_types(amojo):
    amojo.chat()
    assert amojo.message("m1", ts="1700000000").status_code == 400  # type: ignore[arg-type]
    assert amojo.message("m2", silent="yes").status_code == 400  # type: ignore[arg-type]


def test_every_type_with_its_fields_is_accepted(amojo):
    chat = amojo.chat()
    bodies = [
        {"type": "text", "text": "hi"},
        {"type": "picture", "media": "https://x/p.jpg", "file_name": "p.jpg", "file_size": 10},
        {"type": "video", "media": "https://x/v.mp4", "file_name": "v.mp4", "file_size": 10},
        {"type": "file", "media": "https://x/f.pdf", "file_name": "f.pdf", "file_size": 10},
        {"type": "voice", "media": "https://x/v.ogg"},
        {"type": "audio", "media": "https://x/a.mp3"},
        {"type": "sticker", "media": "https://x/s.webp"},
        {"type": "location", "location": {"lat": 55.7, "lon": 37.6}},
        {"type": "contact", "contact": {"name": "n", "phone": "+7"}},
    ]
    for i, body in enumerate(bodies):
        assert amojo.message(f"m{i}", message=body, ts=1_700_000_000 + i).status_code == 200, body
    items = amojo.history(chat).json()["messages"]
    assert [i["message"]["type"] for i in items] == [b["type"] for b in reversed(bodies)]
    picture = next(i for i in items if i["message"]["type"] == "picture")
    assert picture["message"]["media"].startswith("https://")  # re-hosted by amo
    assert picture["message"]["file_name"] == "p.jpg"


def test_send_answer_carries_amojo_ids(amojo):
    chat = amojo.chat()
    answer = amojo.message("m1").json()["new_message"]
    assert answer["ref_id"] == "m1"
    assert answer["conversation_id"] == chat  # Q11: the amojo chat uuid
    assert answer["msgid"] != "m1"


def test_duplicate_msgid_idempotent_by_default(amojo, emulator):
    amojo.chat()
    first = amojo.message("m1").json()
    again = amojo.message("m1").json()
    assert first == again
    assert len(emulator.emulator.store.messages()) == 1


def test_duplicate_msgid_rejected_when_switched(emulator_config):
    emulator_config.duplicate_msgid = "reject"
    with start(emulator_config) as running:
        client = Amojo(running)
        client.connect()
        client.chat()
        assert client.message("m1").status_code == 200
        second = client.message("m1")
        assert second.status_code == 400
        assert len(running.emulator.store.messages()) == 1


def test_edit_message_changes_content_without_side_effects(amojo, emulator):
    chat = amojo.chat()
    amojo.message("m1")
    edit = {"timestamp": 1, "msec_timestamp": 1000, "msgid": "m1", "conversation_id": "conv-1",
            "message": {"type": "text", "text": "edited"}}
    assert amojo.call("POST", amojo.scope, {"event_type": "edit_message", "payload": edit}).status_code == 200
    assert amojo.history(chat).json()["messages"][0]["message"]["text"] == "edited"
    assert emulator.emulator.store.leads() == [] and emulator.emulator.store.notifications() == []
    missing = dict(edit, msgid="nope")  # §3.4 lists 200/403/400 for this method: an unknown message is a 400 ⚠️
    assert amojo.call("POST", amojo.scope, {"event_type": "edit_message", "payload": missing}).status_code == 400


# -- history
def test_history_newest_first_paged_and_204(amojo):
    chat = amojo.chat()
    assert amojo.history(chat).status_code == 204  # a chat without messages
    assert amojo.history("6cbab3d5-c4c1-46ff-b710-ad59ad10805f").status_code == 204  # unknown chat
    for i in range(60):
        assert amojo.message(f"m{i:02d}", ts=1_700_000_000 + i).status_code == 200
    first = amojo.history(chat, "limit=50&offset=0").json()["messages"]
    rest_ = amojo.history(chat, "limit=50&offset=50").json()["messages"]
    assert len(first) == 50 and len(rest_) == 10
    assert [m["message"]["client_id"] for m in first[:2]] == ["m59", "m58"]
    assert rest_[-1]["message"]["client_id"] == "m00"
    assert len(amojo.history(chat, "limit=500").json()["messages"]) == 50  # clamped (Q4)
    beyond = amojo.history(chat, "offset=100")
    assert beyond.status_code == 200 and beyond.json() == {"messages": []}
    incoming = first[0]
    assert "receiver" not in incoming and incoming["sender"]["client_id"] == "client-1"


def test_history_limit_over_50_rejected_when_switched(emulator_config):
    emulator_config.history_limit = "reject"
    with start(emulator_config) as running:
        client = Amojo(running)
        client.connect()
        chat = client.chat()
        client.message("m1")
        assert client.history(chat, "limit=51").status_code == 400


def test_history_lag_hides_new_messages_for_a_while(emulator_config):
    emulator_config.faults = Faults(history_lag_ms=300)
    with start(emulator_config) as running:
        client = Amojo(running)
        client.connect()
        chat = client.chat()
        client.message("m1")
        assert client.history(chat).status_code == 204
        time.sleep(0.35)
        assert client.history(chat).json()["messages"][0]["message"]["client_id"] == "m1"


# -- side effects
def test_non_silent_message_into_unlinked_chat_makes_unsorted_lead(amojo, emulator):
    amojo.chat()
    amojo.message("m1", silent=False)
    amojo.message("m2", silent=False, ts=1_700_000_001)
    store = emulator.emulator.store
    assert len(store.leads()) == 1 and store.leads()[0]["status"] == "unsorted"
    assert len(store.notifications()) == 2


def test_silent_message_into_unlinked_chat_is_recorded_as_unlinked(amojo, emulator):
    chat = amojo.chat()
    amojo.message("m1")
    assert emulator.emulator.store.messages()[0]["unlinked"] is True
    assert emulator.emulator.store.leads() == []
    contact = rest(emulator, "POST", "/api/v4/contacts", json=[{"name": "Client"}]).json()
    contact_id = contact["_embedded"]["contacts"][0]["id"]
    assert rest(emulator, "POST", "/api/v4/contacts/chats",
                json=[{"contact_id": contact_id, "chat_id": chat}]).status_code == 200
    amojo.message("m2", ts=1_700_000_001)
    messages = emulator.emulator.store.chat_messages(chat)
    assert [m["unlinked"] for m in messages] == [True, False]  # the history stays with the chat once linked
    assert len(amojo.history(chat).json()["messages"]) == 2


def test_non_silent_into_linked_chat_only_notifies(amojo, emulator):
    chat = amojo.chat()
    created = rest(emulator, "POST", "/api/v4/contacts", json=[{"name": "C"}]).json()
    contact_id = created["_embedded"]["contacts"][0]["id"]
    rest(emulator, "POST", "/api/v4/contacts/chats", json=[{"contact_id": contact_id, "chat_id": chat}])
    amojo.message("m1", silent=False)
    assert emulator.emulator.store.leads() == []
    assert [n["kind"] for n in emulator.emulator.store.notifications()] == ["message"]


def test_delivery_status_and_typing(amojo):
    amojo.chat()
    amojo_id = amojo.message("m1").json()["new_message"]["msgid"]
    ok = amojo.call("POST", f"{amojo.scope}/{amojo_id}/delivery_status", {"msgid": amojo_id, "delivery_status": 2})
    assert ok.status_code == 200
    assert amojo.call("POST", f"{amojo.scope}/{amojo_id}/delivery_status",
                      {"status_code": -1}).status_code == 400  # -1 needs error_code and error
    assert amojo.call("POST", f"{amojo.scope}/nope/delivery_status", {"delivery_status": 1}).status_code == 404
    typing = amojo.call("POST", f"{amojo.scope}/typing", {"conversation_id": "conv-1", "sender": {"id": "client-1"}})
    assert typing.status_code == 204


# -- REST v4
def test_rest_needs_a_bearer_token(emulator):
    assert rest(emulator, "GET", "/api/v4/account", token=None).status_code == 401
    assert rest(emulator, "GET", "/api/v4/account", token="wrong").status_code == 401


def test_account_and_users_with_amojo_id(emulator):
    account = rest(emulator, "GET", "/api/v4/account", params={"with": "amojo_id"}).json()
    assert account["amojo_id"] == emulator.emulator.config.account_id
    assert "amojo_id" not in rest(emulator, "GET", "/api/v4/account").json()
    page1 = rest(emulator, "GET", "/api/v4/users", params={"with": "amojo_id", "limit": 3, "page": 1}).json()
    page2 = rest(emulator, "GET", "/api/v4/users", params={"with": "amojo_id", "limit": 3, "page": 2}).json()
    assert page1["_page_count"] == 2 and len(page1["_embedded"]["users"]) == 3
    assert page2["_embedded"]["users"][0]["amojo_id"] is None  # may be null
    assert rest(emulator, "GET", "/api/v4/users", params={"limit": 251}).status_code == 400


def test_contacts_create_and_search(emulator):
    created = rest(emulator, "POST", "/api/v4/contacts", json=[
        {"name": "Вася Пупкин", "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": "+7 (915) 111-22-33"}]},
            {"field_code": "EMAIL", "values": [{"value": "Vasya@Example.com"}]}]},
        {"first_name": "Jack", "last_name": "Tester", "request_id": "jack"},
    ]).json()["_embedded"]["contacts"]
    assert [c["request_id"] for c in created] == ["0", "jack"]

    def search(query: str) -> httpx.Response:
        return rest(emulator, "GET", "/api/v4/contacts", params={"query": query})

    vasya = created[0]["id"]
    assert [c["id"] for c in search("79151112233").json()["_embedded"]["contacts"]] == [vasya]
    assert [c["id"] for c in search("vasya@example.com").json()["_embedded"]["contacts"]] == [vasya]
    assert [c["id"] for c in search("Tester").json()["_embedded"]["contacts"]] == [created[1]["id"]]
    nothing = search("79990000000")
    assert nothing.status_code == 204 and nothing.content == b""
    assert rest(emulator, "POST", "/api/v4/contacts", json={"name": "not an array"}).status_code == 400


def test_chat_links(amojo, emulator):
    chat = amojo.chat()
    ids = [c["id"] for c in rest(emulator, "POST", "/api/v4/contacts",
                                 json=[{"name": "a"}, {"name": "b"}]).json()["_embedded"]["contacts"]]
    assert rest(emulator, "GET", "/api/v4/contacts/chats", params={"chat_id[]": chat}).status_code == 204
    first = rest(emulator, "POST", "/api/v4/contacts/chats", json=[{"contact_id": ids[0], "chat_id": chat}]).json()
    link = first["_embedded"]["chats"][0]
    assert link["chat_id"] == chat and link["contact_id"] == ids[0] and link["request_id"] == "0"
    read = rest(emulator, "GET", "/api/v4/contacts/chats", params={"chat_id[]": chat}).json()
    assert read["_embedded"]["chats"][0]["contact_id"] == ids[0]
    moved = rest(emulator, "POST", "/api/v4/contacts/chats", json=[{"contact_id": ids[1], "chat_id": chat}]).json()
    assert moved["_embedded"]["chats"][0]["id"] != link["id"]  # Q15: re-link moves, with a new id
    assert len(emulator.emulator.store.links()) == 1
    bad = rest(emulator, "POST", "/api/v4/contacts/chats", json=[{"contact_id": ids[0], "chat_id": "nope"}])
    assert bad.status_code == 400


def test_oauth_refresh_tokens_are_single_use(emulator):
    config = emulator.emulator.config
    body = {"client_id": config.oauth_client_id, "client_secret": config.oauth_client_secret,
            "grant_type": "refresh_token", "refresh_token": config.oauth_refresh_token,
            "redirect_uri": "https://example.com"}
    first = httpx.post(f"{emulator.url}/oauth2/access_token", json=body)
    assert first.status_code == 200
    pair = first.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 86400
    assert httpx.post(f"{emulator.url}/oauth2/access_token", json=body).status_code == 400  # spent
    assert rest(emulator, "GET", "/api/v4/account", token=pair["access_token"]).status_code == 200
    rotated = httpx.post(f"{emulator.url}/oauth2/access_token", json={**body, "refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200 and rotated.json()["refresh_token"] != pair["refresh_token"]


def test_rest_rate_limit_is_seven_per_second_per_token(emulator):
    # At once, from threads: one after the other, a slow (loaded) machine would let the bucket refill between them.
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: rest(emulator, "GET", "/api/v4/account"), range(12)))
    assert sum(a.status_code == 200 for a in answers) >= 7
    limited = [a for a in answers if a.status_code == 429]
    assert limited, "12 requests at once must go over 7 per second"
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].headers["content-type"].startswith("application/problem+json")
    time.sleep(1.0)
    assert rest(emulator, "GET", "/api/v4/account").status_code == 200  # the bucket refills
    other = httpx.post(f"{emulator.url}/oauth2/access_token", json={})  # not behind the token's budget
    assert other.status_code == 400


# -- faults, state
def test_faults_are_seeded_and_reproducible(emulator_config):
    def run() -> list[int]:
        emulator_config.faults = Faults(seed=42, error_rates={500: 0.2, 503: 0.2, 429: 0.1})
        with start(emulator_config) as running:
            return [rest(running, "GET", "/api/v4/users").status_code for _ in range(6)] + \
                   [Amojo(running).connect().status_code for _ in range(20)]

    emulator_config.rest_rate = None
    first, second = run(), run()
    assert first == second
    assert {500, 503} & set(first) and 200 in first


def test_lost_answer_stores_the_message(emulator_config):
    emulator_config.faults = Faults(lost_answer_rate=1.0, lost_answer_mode="drop")
    with start(emulator_config) as running:
        client = Amojo(running)
        client.connect()
        client.chat()
        with pytest.raises(httpx.TransportError):
            client.message("m1")
        assert [m["msgid"] for m in running.emulator.store.messages()] == ["m1"]
        running.emulator.set_faults(Faults(lost_answer_rate=1.0, lost_answer_mode="500"))
        assert client.message("m2").status_code == 500
        assert len(running.emulator.store.messages()) == 2


def test_hang_outlasts_a_client_timeout(emulator_config):
    emulator_config.faults = Faults(hang_rate=1.0, hang_seconds=2)
    with start(emulator_config) as running, pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{running.url}/api/v4/account", headers={"Authorization": f"Bearer {emulator_config.token}"},
                  timeout=0.3)


def test_admin_endpoint_changes_faults_at_run_time(emulator):
    answer = httpx.post(f"{emulator.url}/_emulator/faults", json={"error_rates": {"503": 1.0}})
    assert answer.json()["error_rates"] == {"503": 1.0}
    assert rest(emulator, "GET", "/api/v4/account").status_code == 503
    httpx.post(f"{emulator.url}/_emulator/faults", json={})
    assert rest(emulator, "GET", "/api/v4/account").status_code == 200
    state = httpx.get(f"{emulator.url}/_emulator/state").json()
    assert state["request_counts"]["rest account 503"] == 1


def test_state_file_survives_a_restart(emulator_config, tmp_path):
    emulator_config.state_path = str(tmp_path / "amo.db")
    with start(emulator_config) as running:
        client = Amojo(running)
        client.connect()
        chat = client.chat()
        client.message("m1")
    with start(emulator_config) as restarted:
        client = Amojo(restarted)
        assert client.history(chat).json()["messages"][0]["message"]["client_id"] == "m1"
        assert client.chat() == chat
