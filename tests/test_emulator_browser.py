"""The emulator's view of a rehearsal import, in a real browser (issue 27, point 3): headless Chromium reads the
pages as a person would and checks what they see: a chat's messages in order under their managers' names, a reply
quoting its original, the attachments shown (a picture loaded as a thumbnail), a hostile text left as text, the
contact card with its chats, and no unsorted lead or notification.

Selenium drives Debian's chromium through its chromium-driver: the two packages come in matching versions, and
nothing is downloaded (the driver's path is given, so Selenium Manager never runs; Playwright would bring a Node
driver of its own and is built against its own browser builds, not Debian's). Skipped, with the
reason, where they are not installed; `AMOJO_ETL_REQUIRE_BROWSER=1` (set by .ci/run) makes that a failure.

`AMOJO_ETL_SCREENSHOTS=docs/img` writes the README's screenshots there (else into the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from load_harness import DAY, run_interval, settings_for

from amojo.emulator.server import RunningEmulator, start
from amojo.emulator.views import VIEW_PATH
from etl.source import create_schema

CHROMIUM = os.environ.get("AMOJO_ETL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("AMOJO_ETL_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
CLIENT = "Мария Иванова"
# (minute of DAY 10:00, direction, manager, type, text or file name, extra columns): one conversation as the source
# holds it; what the chat page must show for each is in test_a_chat_reads_as_amocrm_shows_it.
CONVERSATION = [
    (0, "in", None, "text", "Здравствуйте! Когда приедет курьер?", {}),
    (5, "out", "m-anna", "text", "Курьер будет у вас завтра с 10 до 14.", {}),
    (7, "in", None, "picture", None, {"file_name": "photo.png", "file_size": 2_048}),
    (9, "out", "m-boris", "file", None, {"file_name": "invoice.pdf", "file_size": 88_304}),
    (10, "out", "m-anna", "location", None, {"lat": 55.7512, "lon": 37.6184}),
    (12, "in", None, "contact", None, {"contact_name": "Служба доставки", "contact_phone": "+74951234567"}),
    (15, "out", None, "text", "Спасибо за обращение!", {}),
    (20, "in", None, "text", HOSTILE, {}),
    (30, "in", None, "text", "Отлично, жду!", {"reply_to_id": "cv-delivery-1"}),  # answers Анна's message
]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (./uvw sync installs the dev group)"
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (f"no headless browser: {', '.join(missing)} not found; install Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver), or set AMOJO_ETL_CHROMIUM and AMOJO_ETL_CHROMEDRIVER")
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = _browser_missing()
    if reason:
        if os.environ.get("AMOJO_ETL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"AMOJO_ETL_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900",
                     "--lang=en-US", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _png(width: int = 320, height: int = 200) -> bytes:
    """A small picture (a gradient) for the picture message, so that its thumbnail has something to load."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (40 + x * 180 // width, 110 + y // 2, 200))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def media_host() -> Iterator[str]:
    """Where the source's media live: a local web server, as a company's file storage would be."""
    picture = _png()

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's name is http.server's)
            found = self.path == "/photo.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png" if found else "text/plain")
            self.send_header("Content-Length", str(len(picture) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(picture)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _write_source(url: str, media: str) -> None:
    """The rehearsal's source: two managers amoCRM knows, one client, the conversation above and a short second
    one, so that the contact card has two chats."""
    engine = sa.create_engine(url)
    create_schema(engine)
    day = datetime.combine(DAY, datetime.min.time()).replace(hour=10)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO managers VALUES ('m-anna', 'Анна Смирнова', 'anna@example.com'), "
                             "('m-boris', 'Boris Petrov', 'boris@example.com')"))
        conn.execute(sa.text("INSERT INTO clients (id, name, phone, email) VALUES ('cl-maria', :n, "
                             "'+7 912 000-00-01', 'maria@example.org')"), {"n": CLIENT})
        for conversation, hour in (("cv-delivery", 10), ("cv-invoice", 16)):
            conn.execute(sa.text("INSERT INTO conversations VALUES (:c, 'cl-maria', :t)"),
                         {"c": conversation, "t": day.replace(hour=hour).strftime("%Y-%m-%d %H:%M:%S")})
        rows = [("cv-delivery", n, *row) for n, row in enumerate(CONVERSATION)]
        rows.append(("cv-invoice", 0, 6 * 60, "in", None, "text", "Пришлите счёт ещё раз, пожалуйста.", {}))
        for conversation, n, minute, direction, manager, kind, text, extra in rows:
            values = {"id": f"{conversation}-{n}", "conversation_id": conversation, "direction": direction,
                      "created_at": (day + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S"),
                      "manager_id": manager, "type": kind, "text": text, **extra}
            if kind in ("picture", "file"):
                values["media_url"] = f"{media}/{extra['file_name']}"
            columns = ", ".join(values)
            conn.execute(sa.text(f"INSERT INTO messages ({columns}) VALUES ({', '.join(':' + k for k in values)})"),
                         values)
    engine.dispose()


@pytest.fixture(scope="module")
def rehearsal(media_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """An emulator after a rehearsal import of the source above (the reply quoting Анна's answer included)."""
    work = tmp_path_factory.mktemp("rehearsal")
    source_url, ledger_url = f"sqlite:///{work}/source.db", f"sqlite:///{work}/ledger.db"
    _write_source(source_url, media_host)
    with start() as running:
        result = asyncio.run(run_interval(settings_for(running, source_url, ledger_url)))
        assert result.verdict.confirmed == result.load.messages_sent == len(CONVERSATION) + 1, result
        yield running


def _screenshot(driver, name: str, fallback: Path) -> Path:
    """The whole page as a PNG, into AMOJO_ETL_SCREENSHOTS when set (the README's), else `fallback`."""
    folder = Path(os.environ.get("AMOJO_ETL_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1000, 300)  # the page's own height, not the window's, sets the picture's
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
        "x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}})
    path = folder / name
    path.write_bytes(base64.b64decode(shot["data"]))
    driver.set_window_size(1000, 900)
    return path


def _open_chat(driver, rehearsal: RunningEmulator) -> None:
    """From the chat list to the rehearsed conversation, by clicking, as a person would."""
    from selenium.webdriver.common.by import By

    driver.get(f"{rehearsal.url}{VIEW_PATH}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#chats tr")[1:]
    (row,) = [r for r in rows if r.find_elements(By.TAG_NAME, "td")[2].text == str(len(CONVERSATION))]
    row.find_element(By.LINK_TEXT, CLIENT).click()


def test_a_chat_reads_as_amocrm_shows_it(browser, rehearsal: RunningEmulator, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver = browser
    _open_chat(driver, rehearsal)
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Chat with {CLIENT}"
    bubbles = driver.find_elements(By.CSS_SELECTOR, "#messages .message")

    def seen(bubble) -> tuple[str, str]:
        who = bubble.find_element(By.CLASS_NAME, "who").text
        shown = bubble.find_elements(By.CSS_SELECTOR, ".quote, .text, .attachment")
        return who, " | ".join(element.text for element in shown)

    assert [seen(b) for b in bubbles] == [
        (f"{CLIENT} client", "Здравствуйте! Когда приедет курьер?"),
        ("Анна Смирнова manager", "Курьер будет у вас завтра с 10 до 14."),
        (f"{CLIENT} client", "photo.png · 2.0 KB"),
        ("Boris Petrov manager", "invoice.pdf file · 86.2 KB"),
        ("Анна Смирнова manager", "location 55.75120, 37.61840"),
        (f"{CLIENT} client", "shared contact: Служба доставки · +74951234567"),
        ("amojo-etl bot bot", "Спасибо за обращение!"),  # no manager in the source: the channel bot
        (f"{CLIENT} client", HOSTILE),
        (f"{CLIENT} client", "Анна Смирнова\nКурьер будет у вас завтра с 10 до 14. | Отлично, жду!"),
    ]
    assert all("silent" in b.find_element(By.CLASS_NAME, "meta").text for b in bubbles)

    thumbnail = bubbles[2].find_element(By.CSS_SELECTOR, "img.thumbnail")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbnail) == 320
    assert thumbnail.is_displayed()
    # the hostile text is text: no element of it made it into the page, no script ran
    assert driver.find_elements(By.CSS_SELECTOR, "#messages script, #messages img[src='x']") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (reading it is the check)

    _screenshot(driver, "emulator-chat.png", tmp_path)
    bubbles[8].find_element(By.CSS_SELECTOR, "blockquote.quote a").click()  # the quote leads to its original
    assert driver.current_url.endswith(f"#{bubbles[1].get_attribute('id')}")


def test_the_contact_card_shows_the_clients_chats(browser, rehearsal: RunningEmulator, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _open_chat(driver, rehearsal)
    driver.find_element(By.CSS_SELECTOR, "#chat-contact a").click()
    assert driver.find_element(By.TAG_NAME, "h1").text == CLIENT
    card = driver.find_element(By.ID, "contact-card").text
    assert "maria@example.org" in card and "912" in card
    chats = driver.find_elements(By.CSS_SELECTOR, "#contact-chats tr")[1:]
    assert sorted(r.find_elements(By.TAG_NAME, "td")[1].text for r in chats) == ["1", str(len(CONVERSATION))]
    _screenshot(driver, "emulator-contact.png", tmp_path)
    chats[0].find_element(By.TAG_NAME, "a").click()
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Chat with {CLIENT}"


def test_a_silent_import_leaves_no_unsorted_lead_or_notification(browser, rehearsal: RunningEmulator) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{rehearsal.url}{VIEW_PATH}")
    driver.find_element(By.LINK_TEXT, "Unsorted and notifications").click()
    assert driver.find_element(By.ID, "no-leads").text == "None."
    assert driver.find_element(By.ID, "no-notifications").text == "None."
    driver.find_element(By.LINK_TEXT, "The account at a glance").click()
    counters = {c.get_attribute("data-counter"): c.find_element(By.TAG_NAME, "b").text
                for c in driver.find_elements(By.CSS_SELECTOR, "#counters .counter")}
    assert counters | {"messages": "", "links": ""} == {"chats": "2", "messages": "", "contacts": "1", "links": "",
                                                         "leads": "0", "notifications": "0", "unforeseen": "0",
                                                         "faults": "0"}
    assert counters["messages"] == str(len(CONVERSATION) + 1) and counters["links"] == "2"
