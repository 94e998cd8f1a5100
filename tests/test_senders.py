"""Who a manager's message goes out as (issue 26): the manager's amoCRM user, else the channel bot under the
manager's own name."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd

from amojo.payloads import client_participant, message_payload
from etl.source import SourceFrames
from tasks.transform import Senders, transform

UTC = ZoneInfo("UTC")
SENDERS = Senders({"anna@example.com": "amojo-anna"}, bot_id="amojo-bot")
COLUMNS = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
           "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone"]


def _frames(rows: list[dict]) -> SourceFrames:
    base = {"conversation_id": "v1", "created_at": "2026-10-05 12:00:00", "direction": "out", "type": "text"}
    return SourceFrames(
        pd.DataFrame([{c: {**base, **r}.get(c) for c in COLUMNS} for r in rows], dtype=object),
        pd.DataFrame([("v1", "c1", "2026-10-01 00:00:00")], columns=["id", "client_id", "created_at"], dtype=object),
        pd.DataFrame([("c1", "Client", None, None, None, None)],
                     columns=["id", "name", "phone", "email", "avatar_url", "profile_url"], dtype=object),
        pd.DataFrame([("m1", "Анна Смирнова", "anna@example.com"), ("m2", "Pavel Sidorov", "pavel@example.com"),
                      ("m3", None, "nobody@example.com")], columns=["id", "name", "email"], dtype=object),
    )


def _senders(rows: list[dict]) -> dict[str, dict]:
    batch = transform(_frames(rows), SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))
    out = {}
    for message in batch.messages.itertuples(index=False):
        conversation = next(batch.conversations.loc[[message.conversation_id]].itertuples())
        out[message.source_id] = message_payload(message, client_participant(conversation))["sender"]
    return out


def test_a_manager_without_an_amocrm_user_goes_as_the_bot_under_their_own_name():
    senders = _senders([{"id": "1", "manager_id": "m1", "text": "from Anna"},
                        {"id": "2", "manager_id": "m2", "text": "from Pavel, who has no amoCRM user"},
                        {"id": "3", "manager_id": "m3", "text": "from a manager without a name"},
                        {"id": "4", "manager_id": None, "text": "from nobody in particular"}])
    assert senders["1"] == {"id": "ae-manager-m1", "name": "Анна Смирнова", "ref_id": "amojo-anna"}
    assert senders["2"] == {"id": "ae-manager-m2", "name": "Pavel Sidorov", "ref_id": "amojo-bot"}
    assert senders["3"] == {"id": "ae-manager-m3", "name": SENDERS.bot_name, "ref_id": "amojo-bot"}
    assert senders["4"] == {"id": "ae-bot", "name": SENDERS.bot_name, "ref_id": "amojo-bot"}
