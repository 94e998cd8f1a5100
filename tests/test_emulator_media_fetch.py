"""The emulator's media fetch mode (issue 27): as amoCRM does, it downloads the media of the messages it accepts,
in the background, and shows the URLs that failed in its state; off by default."""

from __future__ import annotations

import time

import httpx
from media_server import media_server
from test_emulator_api import Amojo

from amojo.emulator.server import start


def _settled_state(url: str) -> dict:
    """The emulator's state once no media fetch is under way."""
    deadline = time.monotonic() + 30
    while True:
        state = httpx.get(f"{url}/_emulator/state").json()
        if not state["media_fetches"]["pending"] or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def _send_media(client: Amojo, base: str) -> None:
    client.connect()
    client.chat()
    for n, (kind, path) in enumerate([("picture", "/files/ok.jpg"), ("file", "/files/gone.pdf")]):
        body = {"type": kind, "media": f"{base}{path}", "file_name": path.rsplit("/", 1)[1], "file_size": 3}
        assert client.message(f"m{n}", message=body, ts=1_700_000_000 + n).status_code == 200


def test_fetch_mode_records_the_media_urls_that_fail(emulator_config):
    emulator_config.fetch_media = True
    with media_server({"ok.jpg": b"jpg"}) as files, start(emulator_config) as running:
        _send_media(Amojo(running), files.url)
        state = _settled_state(running.url)
        assert files.requests["GET", "/files/ok.jpg"] == 1 and files.requests["GET", "/files/gone.pdf"] == 1
    fetches = state["media_fetches"]
    assert (fetches["fetched"], fetches["failed"], fetches["pending"]) == (1, 1, 0)
    assert fetches["failures"] == [{"msgid": "m1", "chat_id": state["chats"][0]["id"],
                                    "url": f"{files.url}/files/gone.pdf", "why": "HTTP 404"}]


def test_media_is_not_fetched_unless_asked(emulator_config):
    with media_server({"ok.jpg": b"jpg"}) as files, start(emulator_config) as running:
        _send_media(Amojo(running), files.url)
        state = _settled_state(running.url)
    assert not files.requests
    assert state["media_fetches"] == {"enabled": False, "fetched": 0, "failed": 0, "pending": 0, "failures": []}
