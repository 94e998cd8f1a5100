"""History read back while other runs write into the same chat: what lands between two page reads moves the pages
(they are counted from the newest), and the read must still show each message the chat holds, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from amojo.chats import ChatsClient

MESSAGES = 120  # three pages
T0 = 1_790_000_000_000  # msec of the chat's first message; one a minute after it


class ChatsWrittenMeanwhile(ChatsClient):
    """A Chats client whose history pages are read while another run writes into the chat: `meanwhile` runs once,
    after the first page (a real request to the emulator, as another run would make)."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def history_page(self, chat_id: str, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        page = await super().history_page(chat_id, offset, limit)
        if self.meanwhile is not None:
            write, self.meanwhile = self.meanwhile, None
            await write()
        return page


def _message(index: int, msec: int) -> dict[str, Any]:
    return {"timestamp": msec // 1000, "msec_timestamp": msec, "msgid": f"ae-m{index}", "conversation_id": "ae-cv",
            "silent": True, "sender": {"id": "ae-client", "name": "Olga"},
            "message": {"type": "text", "text": f"message {index}"}}


@pytest.fixture
async def chat(emulator):
    """A chat of MESSAGES messages, a minute apart, and a client reading it."""
    config = emulator.emulator.config
    async with ChatsWrittenMeanwhile(emulator.url, config.channel_id, config.channel_secret) as chats:
        await chats.connect(config.account_id)
        chat_id = await chats.create_chat({"conversation_id": "ae-cv", "user": {"id": "ae-client", "name": "Olga"}})
        for i in range(MESSAGES):
            await chats.new_message(_message(i, T0 + i * 60_000))
        yield chats, chat_id


def _held(emulator) -> set[str]:
    return {m["msgid"] for m in emulator.emulator.store.messages()}


async def test_a_message_imported_with_an_older_time_among_the_pages_read_is_seen(emulator, chat):
    """A late row imported by another run lands among the newest messages, in a page this read has passed: the
    next page begins with one already read. Before the pages overlapped, the late row was never seen."""
    chats, chat_id = chat
    chats.meanwhile = lambda: chats.new_message(_message(900, T0 + 100 * 60_000 + 30_000))
    read = Counter([item["message"]["client_id"] async for item in chats.history(chat_id)])
    assert set(read.values()) == {1}
    assert set(read) == _held(emulator) and "ae-m900" in read


async def test_a_message_lost_among_the_pages_read_hides_no_other(emulator, chat):
    """amoCRM loses a message of a page already read: the rest move up by one, and the first message of the next
    page would slip between the two reads. Before the pages overlapped, it was reported missing."""
    chats, chat_id = chat

    async def lose() -> None:
        emulator.emulator.store.drop_message("ae-m110")

    chats.meanwhile = lose
    read = Counter([item["message"]["client_id"] async for item in chats.history(chat_id)])
    assert set(read.values()) == {1}
    assert _held(emulator) <= set(read)  # the lost one was read before it was lost


async def test_a_new_message_pushing_the_pages_back_is_read_once(emulator, chat):
    """A new message arrives while the history is read: every page after moves back by one, and its first message
    is one already read. Each is read once, the new one too: before, it was missed (the repeat was skipped by its
    amojo id, but nothing told the read that a page it had passed had changed)."""
    chats, chat_id = chat
    chats.meanwhile = lambda: chats.new_message(_message(901, T0 + 500 * 60_000))
    read = Counter([item["message"]["client_id"] async for item in chats.history(chat_id)])
    assert set(read.values()) == {1} and set(read) == _held(emulator)


class ChatsFromAList(ChatsClient):
    """A Chats client over a history held in a list, whose items carry no amojo id (as another integration's may)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__("http://127.0.0.1:9", "channel", "secret")
        self.items = items
        self.meanwhile: Callable[[], None] | None = None

    async def history_page(self, chat_id: str, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        page = sorted(self.items, key=lambda item: -item["msec_timestamp"])[offset:offset + limit]
        if self.meanwhile is not None:
            write, self.meanwhile = self.meanwhile, None
            write()
        return page


def _without_id(index: int, msec: int) -> dict[str, Any]:
    return {"msec_timestamp": msec, "sender": {"id": "ae-client"},
            "message": {"client_id": f"ae-m{index}", "type": "text", "text": f"message {index}"}}


async def test_messages_without_an_amojo_id_are_read_once_across_the_overlap_and_a_restart():
    """The pages overlap by one, and a read that moved starts again: an item without an amojo id is still told
    apart by what it is, and read once. Before, the overlap and each restart yielded it again (a false duplicate)."""
    chats = ChatsFromAList([_without_id(i, T0 + i * 60_000) for i in range(MESSAGES)])
    chats.meanwhile = lambda: chats.items.append(_without_id(900, T0 + 100 * 60_000 + 30_000))
    read = Counter([item["message"]["client_id"] async for item in chats.history("chat")])
    assert set(read.values()) == {1}
    assert set(read) == {item["message"]["client_id"] for item in chats.items}
