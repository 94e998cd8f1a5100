"""amoCRM's view of the emulated account (issue 27, point 2), read as HTML over HTTP: who wrote each message, what
a reply quotes, what an attachment is, the unsorted leads and notifications, and that hostile texts stay text.
The same pages in a real browser: tests/test_emulator_browser.py."""

from __future__ import annotations

import html

import httpx
import pytest
from test_emulator_api import MANAGER, Amojo, rest

from amojo.emulator.config import Faults
from amojo.emulator.views import VIEW_PATH

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


@pytest.fixture
def amojo(emulator) -> Amojo:
    client = Amojo(emulator)
    assert client.connect().status_code == 200
    return client


def _page(emulator, path: str = "") -> str:
    answer = httpx.get(f"{emulator.url}{VIEW_PATH}{path}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return answer.text


def _chat_page(emulator, conversation: str = "conv-1") -> str:
    chat = emulator.emulator.store.chat_by_conversation(emulator.emulator.scope_id, conversation)
    return _page(emulator, f"/chats/{chat['id']}")


def test_a_chat_shows_its_messages_in_time_order_with_who_wrote_them(emulator, amojo) -> None:
    amojo.chat()
    assert amojo.message("third", ts=1_700_000_300, outgoing=True).status_code == 200  # Анна Смирнова
    assert amojo.message("first", ts=1_700_000_100).status_code == 200  # the client, sent later, written earlier
    bot = {"id": "bot", "name": "Our bot", "ref_id": emulator.emulator.config.bot_id}
    assert amojo.message("second", ts=1_700_000_200, outgoing=True, sender=bot).status_code == 200
    page = _chat_page(emulator)
    assert page.index("text of first") < page.index("text of second") < page.index("text of third")
    bubbles = page.split('class="message ')[1:]
    assert ['data-sender-kind="client"' in bubbles[0], 'data-sender-kind="bot"' in bubbles[1],
            'data-sender-kind="manager"' in bubbles[2]] == [True] * 3
    assert "Анна Смирнова" in bubbles[2] and "2023-11-14 22:15:00 UTC" in bubbles[0]
    assert 'class="badge silent"' in bubbles[0]


def test_hostile_texts_and_names_are_shown_as_text(emulator, amojo) -> None:
    amojo.call("POST", f"{amojo.scope}/chats", {"conversation_id": "conv-1", "user": {"id": "client-1",
                                                                                        "name": HOSTILE}})
    picture = {"type": "picture", "media": 'https://example.com/a.png"><script>alert(2)</script>',
               "file_name": HOSTILE, "file_size": 10}
    assert amojo.message("m1", message={"type": "text", "text": HOSTILE}).status_code == 200
    assert amojo.message("m2", message=picture).status_code == 200
    pages = [_chat_page(emulator), _page(emulator)]
    for page in pages:
        assert "<script" not in page and "<img src=x" not in page
        assert HOSTILE in html.unescape(page)
    assert "<script>alert(2)" not in pages[0] and picture["media"] in html.unescape(pages[0])


def test_a_reply_quotes_its_original_by_msgid_or_by_id(emulator, amojo) -> None:
    amojo.chat()
    amojo.message("original", message={"type": "text", "text": "Когда приедет курьер?"})
    original_id = emulator.emulator.store.message_by_msgid(amojo.scope, "original")["id"]
    by_msgid = amojo.message("r1", ts=1_700_000_100, outgoing=True,
                             message={"type": "text", "text": "Завтра с 10 до 14."},
                             reply_to={"message": {"msgid": "original"}})
    by_id = amojo.message("r2", ts=1_700_000_200, reply_to={"message": {"id": original_id}})
    assert [a.status_code for a in (by_msgid, by_id)] == [200] * 2, by_msgid.text + by_id.text
    page = _chat_page(emulator)
    quotes = page.split('<blockquote class="quote">')[1:]
    assert len(quotes) == 2
    for quote in quotes:
        assert f'href="#m-{original_id}"' in quote and "Когда приедет курьер?" in quote and "Client" in quote
    assert page.index(f'id="m-{original_id}"') < page.index("Завтра с 10 до 14.")


def test_attachments_show_as_thumbnails_files_locations_and_contacts(emulator, amojo) -> None:
    amojo.chat()
    bodies = [
        {"type": "picture", "media": "https://example.com/photo.jpg", "file_name": "photo.jpg", "file_size": 245_120},
        {"type": "file", "media": "https://example.com/invoice.pdf", "file_name": "invoice.pdf", "file_size": 88_304},
        {"type": "location", "location": {"lat": 55.7512, "lon": 37.6184}},
        {"type": "contact", "contact": {"name": "Служба доставки", "phone": "+74951234567"}},
    ]
    for n, body in enumerate(bodies):
        assert amojo.message(f"m{n}", ts=1_700_000_000 + n, message=body).status_code == 200
    page = _chat_page(emulator)
    assert '<img class="thumbnail" src="https://example.com/photo.jpg" alt="photo.jpg">' in page
    assert '<a href="https://example.com/invoice.pdf">invoice.pdf</a>' in page and "86.2 KB" in page
    assert "55.75120, 37.61840" in page
    assert "shared contact: Служба доставки · +74951234567" in page


def test_unsorted_leads_and_notifications_are_listed_and_an_empty_list_says_none(emulator, amojo) -> None:
    amojo.chat()
    assert amojo.message("quiet").status_code == 200
    page = _page(emulator, "/unsorted")
    assert 'id="no-leads"' in page and 'id="no-notifications"' in page
    assert amojo.message("loud", silent=False, message={"type": "text", "text": "a loud one"}).status_code == 200
    page = _page(emulator, "/unsorted")
    assert 'id="leads"' in page and 'id="notifications"' in page and "a loud one" in page
    assert "amoCRM made 1 unsorted leads and 1 notifications" in _page(emulator)


def test_the_contact_card_lists_its_chats(emulator, amojo) -> None:
    chat_id = amojo.chat()
    amojo.message("m1")
    created = rest(emulator, "POST", "/api/v4/contacts", json=[{"name": "Мария Иванова", "custom_fields_values": [
        {"field_code": "PHONE", "values": [{"value": "+79120000001"}]},
        {"field_name": "City", "values": [{"value": "Казань"}]}]}])
    contact_id = created.json()["_embedded"]["contacts"][0]["id"]
    assert rest(emulator, "POST", "/api/v4/contacts/chats",
                json=[{"contact_id": contact_id, "chat_id": chat_id}]).status_code == 200
    card = _page(emulator, f"/contacts/{contact_id}")
    assert "Мария Иванова" in card and "+79120000001" in card and "Казань" in card
    assert f'href="{VIEW_PATH}/chats/{chat_id}"' in card
    assert f'href="{VIEW_PATH}/contacts/{contact_id}"' in _page(emulator) and "not linked" not in _page(emulator)


def test_the_pages_pass_no_gate_or_fault_and_are_not_in_the_request_log(emulator, amojo) -> None:
    emulator.emulator.set_faults(Faults(error_rates={503: 1.0}))
    before = emulator.emulator.request_counts()
    for path in ("", "/unsorted", "/account", "?page=2", "?page=junk"):
        _page(emulator, path)
    assert emulator.emulator.request_counts() == before
    assert "error_rates" in _page(emulator, "/account")
    assert httpx.get(f"{emulator.url}/").headers["location"] == VIEW_PATH
    assert httpx.get(f"{emulator.url}{VIEW_PATH}/chats/none").status_code == 404
    policy = httpx.get(f"{emulator.url}{VIEW_PATH}").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no script may run


def test_the_account_block_shows_among_the_faults_when_it_is_on() -> None:
    from amojo.emulator.config import EmulatorConfig
    from amojo.emulator.server import start

    with start(EmulatorConfig(rest_block_after=3)) as running:
        assert "rest_block_after" in _page(running, "/account")
        assert 'data-counter="faults"><b>3</b>' in _page(running)


def test_the_managers_are_the_configured_users(emulator) -> None:
    page = _page(emulator, "/account")
    assert "Анна Смирнова" in page and MANAGER in page and "dmitry@example.com" in page


def test_the_emulator_command_prints_the_views_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from amojo.emulator import server
    from etl import cli

    monkeypatch.setattr(server, "serve", lambda config, **kwargs: None)
    monkeypatch.delenv("AMOJO_ETL_EMULATOR_USERS", raising=False)
    result = CliRunner().invoke(cli.app, ["emulator", "--port", "8123"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert f"# the chats as amoCRM shows them: http://127.0.0.1:8123{VIEW_PATH}\n" in result.output
    assert "4 users (the demo's; --users FILE for your own): Анна Смирнова <anna@example.com>" in result.output


def test_media_amocrm_could_not_fetch_are_marked_on_the_message_and_listed() -> None:
    """With --fetch-media, a rehearsal shows which attachments amoCRM will not be able to download."""
    import socket
    import time

    from amojo.emulator.config import EmulatorConfig
    from amojo.emulator.server import start

    with socket.socket() as closed:  # a port nothing listens on: the download is refused at once
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/lost.pdf"
    with start(EmulatorConfig(fetch_media=True, fetch_media_timeout_s=5)) as running:
        amojo = Amojo(running)
        amojo.connect()
        amojo.chat()
        sent = amojo.message("m1", message={"type": "file", "media": dead, "file_name": "lost.pdf", "file_size": 9})
        assert sent.status_code == 200, sent.text
        deadline = time.monotonic() + 10  # the download runs in the background: wait for its outcome
        while running.emulator.media.snapshot()["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        chat, account = _chat_page(running), _page(running, "/account")
    assert "amoCRM could not fetch it:" in chat
    assert 'id="media-failures"' in account and dead in account and 'data-counter="media failed"><b>1</b>' in account
