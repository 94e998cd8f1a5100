"""A third-party Chats API client drives the emulator (issue 15): so that our own client is not the only one it
serves. `amojowrapper` 0.1.1 from PyPI (a dev-only dependency), unmodified; only its base URL, which it derives as
`https://amojo.<the referer's domain>`, is pointed at the emulator.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amojo.emulator.config import EmulatorConfig
from amojo.emulator.server import RunningEmulator, start

amojowrapper = pytest.importorskip("amojowrapper")
from amojowrapper.actions import ChannelAction, ChatAction, HistoryAction, MessageAction, ReactAction  # noqa: E402
from amojowrapper.client import AmojoClient  # noqa: E402

MANAGER = EmulatorConfig().users[0]


def _client(running: RunningEmulator) -> AmojoClient:
    config = running.emulator.config
    client = AmojoClient(channel_secret=config.channel_secret, channel_id=config.channel_id,
                         referer="emulator.amocrm.ru", amojo_account_token=config.account_id)
    client.amojo_base_url = running.url
    return client


@pytest.fixture
def wrapper() -> Iterator[tuple[AmojoClient, RunningEmulator]]:
    # amojowrapper sends a manager as sender {ref_id, name} and a client as receiver {ref_id}: the switch
    # ref_id_participants="accept" (⚠️) is what lets its outgoing messages in.
    with start(EmulatorConfig(ref_id_participants="accept")) as running:
        yield _client(running), running


def test_amojowrapper_connects_chats_both_ways_edits_reads_history_and_disconnects(wrapper):
    client, running = wrapper
    connected = ChannelAction(client).connect(hook_api_version="v2", title="amojowrapper")
    assert connected.scope_id == running.emulator.scope_id and connected.is_time_window_disabled is False

    chat = ChatAction(client).create(conversation_id="tp-conv", user_id="tp-client", user_name="Клиент",
                                     user_profile_phone="+79151112233")
    messages = MessageAction(client)
    incoming = messages.send(conversation_id="tp-conv", sender_id="tp-client", sender_name="Клиент",
                             message_type="text", message_text="Здравствуйте", msgid="tp-1", silent=True)
    assert incoming.new_message.conversation_id == chat.id and incoming.new_message.ref_id == "tp-1"
    outgoing = messages.send(conversation_ref_id=chat.id, sender_ref_id=MANAGER.amojo_id,
                             receiver_ref_id=chat.user.id, message_type="text", message_text="Добрый день",
                             msgid="tp-2", silent=True, reply_to_msgid="tp-1")
    assert outgoing.new_message.conversation_id == chat.id and outgoing.new_message.sender_id == MANAGER.amojo_id
    edited = messages.edit(conversation_id="tp-conv", msgid="tp-1", message_type="text", message_text="Здравствуйте!")
    assert edited.new_message.msgid == incoming.new_message.msgid
    reacted = ReactAction(client).set(conversation_ref_id=chat.id, id=outgoing.new_message.msgid,
                                      user_id="tp-client", type="react", emoji="👍")
    assert reacted.status_code == 200

    history = HistoryAction(client).get(conversation_ref_id=chat.id)
    newest, oldest = history.messages
    assert (newest.message.text, oldest.message.text) == ("Добрый день", "Здравствуйте!")
    assert newest.sender.id == MANAGER.amojo_id and newest.sender.name == MANAGER.name
    assert newest.receiver == oldest.sender  # one record per participant
    assert oldest.sender.client_id == "tp-client" and oldest.sender.phone == "79151112233"
    state = running.emulator.snapshot()
    assert len(state["chats"]) == 1 and state["leads"] == [] and len(state["reactions"]) == 1

    assert ChannelAction(client).disconnect() is True
    with pytest.raises(RuntimeError, match="404"):
        messages.send(conversation_id="tp-conv", sender_id="tp-client", message_type="text", message_text="x")


def test_amojowrapper_outgoing_is_refused_by_the_strict_default_naming_the_field():
    with start(EmulatorConfig()) as running:
        client = _client(running)
        ChannelAction(client).connect(title="amojowrapper")
        chat = ChatAction(client).create(conversation_id="tp-conv", user_id="tp-client", user_name="Клиент")
        with pytest.raises(RuntimeError, match="sender.id is required"):
            MessageAction(client).send(conversation_ref_id=chat.id, sender_ref_id=MANAGER.amojo_id,
                                       receiver_ref_id=chat.user.id, message_type="text", message_text="x")
