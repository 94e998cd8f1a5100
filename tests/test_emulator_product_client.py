"""Our own clients (amojo/chats.py, amojo/rest.py) keep working against every switch combination the emulator
offers for behaviour amojo-api.md leaves open (issue 15): what they send is the strict shape, so no switch may
break them, and where a switch changes an answer (a repeated msgid, an over-long history page) they see the
documented alternative."""

from __future__ import annotations

import itertools

import pytest

from amojo.chats import ChatsClient
from amojo.emulator.config import EmulatorConfig
from amojo.emulator.server import start
from amojo.errors import InvalidRequest
from amojo.rest import ChatLink, RestClient

NAMED = list(itertools.product(("reject", "accept"), ("idempotent", "reject"), ("clamp", "reject")))
# The three switches the issue names, in every combination; participant_updates and rest_batch_max ride along,
# each value in half of them.
COMBINATIONS = [
    EmulatorConfig(ref_id_participants=refs, duplicate_msgid=duplicates, history_limit=history,
                   participant_updates=("merge", "keep")[i % 2], rest_batch_max=(250, 60)[i // 4 % 2],
                   rest_rate=None)
    for i, (refs, duplicates, history) in enumerate(NAMED)
]
MESSAGES = 60  # more than one history page


def _label(config: EmulatorConfig) -> str:
    return (f"refs={config.ref_id_participants}-dup={config.duplicate_msgid}-history={config.history_limit}-"
            f"updates={config.participant_updates}-batch={config.rest_batch_max}")


def _payload(index: int, conversation: str, client: dict, manager: str, bot: str) -> dict:
    """What the transform sends (§3.4): the client's messages without receiver, the managers' to the client."""
    payload = {"timestamp": 1_790_000_000 + index, "msec_timestamp": (1_790_000_000 + index) * 1000,
               "msgid": f"ae-{conversation}-{index}", "conversation_id": conversation, "silent": True,
               "message": {"type": "text", "text": f"message {index}"}}
    if index % 3 == 0:
        payload["sender"] = client
    else:
        ref_id = manager if index % 3 == 1 else bot
        payload["sender"] = {"id": f"ae-manager-{index % 3}", "name": "Manager", "ref_id": ref_id}
        payload["receiver"] = client
    return payload


@pytest.mark.parametrize("config", COMBINATIONS, ids=_label)
async def test_our_clients_work_against_every_switch_combination(config):
    with start(config) as running:
        async with ChatsClient(running.url, config.channel_id, config.channel_secret) as chats, \
                RestClient(running.url, config.token, rate=1000) as rest:
            account = await rest.account_amojo_id()
            users = await rest.users()
            manager = next(u.amojo_id for u in users if u.amojo_id)
            await chats.connect(account)
            client = {"id": "ae-client-1", "name": "Ольга", "profile": {"phone": "+79160001122"}}
            chat_id = await chats.create_chat({"conversation_id": "ae-conv-1", "user": client})

            contact_ids = await rest.create_contacts([{"name": f"Client {i}"} for i in range(120)])
            assert len(set(contact_ids)) == 120  # larger than rest_batch_max: sent again in smaller batches
            await rest.link_chats([ChatLink(chat_id, contact_ids[0])])
            assert [link.contact_id for link in await rest.chat_links([chat_id])] == [contact_ids[0]]

            sent = [await chats.new_message(_payload(i, "ae-conv-1", client, manager, config.bot_id))
                    for i in range(MESSAGES)]
            assert {s.chat_id for s in sent} == {chat_id} and len({s.amojo_id for s in sent}) == MESSAGES
            repeat = _payload(0, "ae-conv-1", client, manager, config.bot_id)
            if config.duplicate_msgid == "idempotent":
                assert (await chats.new_message(repeat)).amojo_id == sent[0].amojo_id
            else:
                with pytest.raises(InvalidRequest):
                    await chats.new_message(repeat)
            edit = {**repeat, "message": {"type": "text", "text": "edited"}}
            assert (await chats.edit_message(edit)).amojo_id == sent[0].amojo_id

            history = [item async for item in chats.history(chat_id)]
            assert [item["message"]["client_id"] for item in history] == \
                [f"ae-ae-conv-1-{i}" for i in reversed(range(MESSAGES))]  # newest first, each once
            assert history[-1]["message"]["text"] == "edited"
            clients = [item["sender"] for item in history if "receiver" not in item] + \
                [item["receiver"] for item in history if "receiver" in item]
            assert all(c == clients[0] for c in clients) and clients[0]["client_id"] == "ae-client-1"
            if config.history_limit == "clamp":
                assert len(await chats.history_page(chat_id, limit=100)) == 50
            else:
                with pytest.raises(InvalidRequest):
                    await chats.history_page(chat_id, limit=100)
        state = running.emulator.snapshot()
        assert state["leads"] == [] and state["notifications"] == [] and state["unhandled"] == []
