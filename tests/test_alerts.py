"""Alerts: an incomplete import, run against a real Prefect server, fires the installed automation, which notifies
through the user's block (here a Custom Webhook block pointing at a local listener)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from amojo.emulator.config import Faults
from etl.alerts import FAILED_OR_INCOMPLETE, NIGHT_MISSED, install_alerts
from etl.errors import ConfigurationError

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict]]]:
    """A local webhook: its URL, and the JSON bodies posted to it."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


async def test_an_incomplete_import_notifies_through_the_installed_automation(emulator, pipeline_env, listener):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    from flows.import_chats import import_chats

    url, received = listener
    await CustomWebhookNotificationBlock(name="night-watch", url=url,
                                         json_data={"subject": "{{subject}}", "body": "{{body}}"}
                                         ).save("night-watch", overwrite=True)
    with pytest.raises(ConfigurationError, match="no block of that name"):
        await install_alerts("no-such-block")
    assert await install_alerts("custom-webhook/night-watch") == [FAILED_OR_INCOMPLETE, NIGHT_MISSED]
    assert await install_alerts("night-watch") == [FAILED_OR_INCOMPLETE, NIGHT_MISSED]  # again: replaced, not added
    async with get_client() as client:
        assert len(await client.read_automations_by_name(FAILED_OR_INCOMPLETE)) == 1

    emulator.emulator.set_faults(Faults(history_lag_ms=600_000))  # amoCRM shows nothing for ten minutes
    state = await import_chats(start=date(2026, 10, 10), end=date(2026, 10, 11), return_state=True)
    assert state.name == "Incomplete"

    for _ in range(120):
        if received:
            break
        await asyncio.sleep(0.5)
    assert received, "the automation sent no notification"
    assert "Incomplete" in received[0]["subject"] and state.message in received[0]["body"]
    assert "reconcile --repair" in received[0]["body"]
