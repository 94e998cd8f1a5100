"""Attachments and replies (issue 26): each attachment its own amoCRM message right after its message's text,
replies quoted by our msgid when the quoted message is in the same chat and sent, and both read back by reconcile.
Each test runs the flow's steps against the emulator, without Prefect."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from load_harness import DAY, execute, landed, run_interval, settings_for, write_source
from test_emulator_api import Amojo
from test_transform import SENDERS, _frames

from etl.api import open_api
from etl.intervals import Interval
from etl.ledger import Ledger, MessageStatus
from etl.ledger.messages import MessageState
from etl.sample import SampleSize, generate, write_sample
from etl.source import open_source
from etl.source.schema import ATTACHMENT_COLUMNS
from etl.summary import RunSummary
from tasks.load import LoadReport
from tasks.load.replies import Quote, quote_of
from tasks.reconcile import reconcile
from tasks.report import RunTotals
from tasks.transform import transform

PREFIX = "ae-"
NOON = datetime.combine(DAY, datetime.min.time()) + timedelta(hours=12)


@pytest.fixture
def source(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    write_source(url, conversations=2, messages=2)
    return url


@pytest.fixture
def ledger_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _message(url: str, message_id: str, conversation: str, text: str | None, at: datetime,
             reply_to: str | None = None) -> None:
    execute(url, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text, reply_to_id) "
                 "VALUES (:i, :c, :t, 'in', 'text', :x, :r)",
            i=message_id, c=conversation, t=at.strftime("%Y-%m-%d %H:%M:%S"), x=text, r=reply_to)


def _attachment(url: str, message_id: str, attachment_id: str, kind: str = "picture", name: str | None = None,
                media_url: str | None = "default", size: int | None = 1000) -> None:
    if media_url == "default":
        media_url = f"https://files.example.com/{message_id}/{attachment_id}.jpg"
    execute(url, "INSERT INTO attachments (message_id, id, type, media_url, file_name, file_size) "
                 "VALUES (:m, :i, :k, :u, :n, :s)",
            m=message_id, i=attachment_id, k=kind, u=media_url, n=name, s=size)


def _rejects(ledger_url: str) -> list[dict]:
    ledger = Ledger(ledger_url)
    try:
        return ledger.rejects.rows()
    finally:
        ledger.close()


def _chat_of(emulator, conversation: str) -> list[dict]:
    """The messages the emulator holds in one conversation's chat, in the order history shows them (oldest first)."""
    snapshot = emulator.emulator.snapshot()
    chat = next(c for c in snapshot["chats"] if c["conversation_id"] == PREFIX + conversation)
    return sorted(snapshot["messages"][chat["id"]], key=lambda m: m["msec_timestamp"])


async def test_a_message_with_text_and_two_attachments_arrives_as_three_messages_in_order_caption_once(
        emulator, source, ledger_url):
    _message(source, "album", "cv0", "look at these", NOON)
    _attachment(source, "album", "10", name="second.jpg")  # attachment id order, not the order rows were written
    _attachment(source, "album", "9", name="first.jpg")
    _attachment(source, "album", "2", kind="file", name="terms.pdf")
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    shown = [(m["msgid"], m["message"]["type"], m["message"].get("text"), m["message"].get("file_name"))
             for m in _chat_of(emulator, "cv0") if m["msgid"].startswith(PREFIX + "album")]
    assert shown == [(PREFIX + "album", "text", "look at these", None),
                     (PREFIX + "album#2", "file", None, "terms.pdf"),
                     (PREFIX + "album#9", "picture", None, "first.jpg"),
                     (PREFIX + "album#10", "picture", None, "second.jpg")]
    # Once each, also on a second run: every part is a message of its own in the ledger.
    again = await run_interval(settings_for(emulator, source, ledger_url))
    assert again.load.messages_sent == 0 and {len(c) for c in landed(emulator).values()} == {1}


async def test_a_message_with_only_attachments_sends_no_empty_text(emulator, source, ledger_url):
    _message(source, "photo", "cv0", None, NOON)
    _attachment(source, "photo", "1", name="cat.jpg")
    _attachment(source, "photo", "2", kind="voice", name=None, size=None)
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    parts = [(m["msgid"], m["message"]["type"]) for m in _chat_of(emulator, "cv0") if "photo" in m["msgid"]]
    assert parts == [(PREFIX + "photo#1", "picture"), (PREFIX + "photo#2", "voice")]
    assert not [r for r in _rejects(ledger_url) if "photo" in r["source_key"]]


async def test_a_bad_attachment_is_rejected_alone_with_its_reason(emulator, source, ledger_url):
    _message(source, "mixed", "cv0", "two files", NOON)
    _attachment(source, "mixed", "1", name="ok.jpg")
    _attachment(source, "mixed", "2", media_url="ftp://nowhere/file.bin")
    _attachment(source, "mixed", "3", kind="hologram")
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    parts = [m["msgid"] for m in _chat_of(emulator, "cv0") if "mixed" in m["msgid"]]
    assert parts == [PREFIX + "mixed", PREFIX + "mixed#1"]
    reasons = {r["source_key"].split("@")[0]: r["reason"] for r in _rejects(ledger_url)}
    assert reasons == {"attachment:mixed#2": "bad_media_url", "attachment:mixed#3": "unknown_type"}


async def test_a_changed_attachment_is_edited_alone(emulator, source, ledger_url):
    _message(source, "doc", "cv0", "the contract", NOON)
    _attachment(source, "doc", "1", kind="file", name="draft.pdf")
    await run_interval(settings_for(emulator, source, ledger_url))
    execute(source, "UPDATE attachments SET file_name = 'final.pdf' WHERE message_id = 'doc'")
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert (result.load.messages_sent, result.load.messages_edited) == (0, 1)
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert held[PREFIX + "doc#1"][0]["message"]["file_name"] == "final.pdf"
    assert held[PREFIX + "doc"][0]["edited_at"] is None


async def test_a_reply_is_quoted_when_the_original_is_sent_in_the_same_chat(emulator, source, ledger_url):
    _message(source, "question", "cv0", "when do you open?", NOON)
    _message(source, "answer", "cv0", "at nine", NOON + timedelta(minutes=5), reply_to="question")
    _message(source, "early", "cv0", "to an earlier day's message", NOON + timedelta(minutes=6), reply_to="cv0-0")
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert held[PREFIX + "answer"][0]["reply_to"] == held[PREFIX + "question"][0]["id"]
    assert held[PREFIX + "early"][0]["reply_to"] == held[PREFIX + "cv0-0"][0]["id"]
    assert result.load.replies_quoted == 2 and not result.load.quotes_dropped


async def test_a_reply_that_cannot_be_quoted_goes_without_the_quote_and_is_counted(emulator, source, ledger_url):
    _message(source, "elsewhere", "cv0", "to another chat", NOON, reply_to="cv1-0")
    _message(source, "nowhere", "cv0", "to a message the source has not", NOON + timedelta(minutes=1),
             reply_to="no-such-message")
    _message(source, "ahead", "cv0", "to a later message", NOON + timedelta(minutes=2), reply_to="later")
    _message(source, "later", "cv0", "the later one", NOON + timedelta(minutes=3))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert all(held[PREFIX + m][0]["reply_to"] is None for m in ("elsewhere", "nowhere", "ahead"))
    assert dict(result.load.quotes_dropped) == {"not_in_chat": 1, "unknown": 1, "not_sent_yet": 1}
    assert result.load.replies_quoted == 0


async def test_a_reply_to_an_attachment_only_message_quotes_its_first_attachment(emulator, source, ledger_url):
    _message(source, "photo", "cv0", None, NOON)
    _attachment(source, "photo", "7", name="cat.jpg")
    _attachment(source, "photo", "8", name="dog.jpg")
    _message(source, "nice", "cv0", "nice cat", NOON + timedelta(minutes=1), reply_to="photo")
    await run_interval(settings_for(emulator, source, ledger_url))
    held = landed(emulator)
    assert held[PREFIX + "nice"][0]["reply_to"] == held[PREFIX + "photo#7"][0]["id"]


async def test_reconcile_finds_an_attachment_with_a_wrong_file_name(emulator, source, ledger_url):
    _message(source, "doc", "cv0", "the contract", NOON)
    _attachment(source, "doc", "1", kind="file", name="contract.pdf")
    _attachment(source, "doc", "2", kind="picture", name="signature.jpg")
    settings = settings_for(emulator, source, ledger_url)
    assert (await run_interval(settings)).verdict.verdict == "complete"
    store = emulator.emulator.store
    store.edit_message(landed(emulator)[PREFIX + "doc#1"][0]["id"], {"file_name": "other.pdf"})
    store.edit_message(landed(emulator)[PREFIX + "doc#2"][0]["id"], {"type": "file"})
    start = int(datetime.combine(DAY, datetime.min.time()).timestamp() * 1000)  # the harness's source zone is UTC
    ledger = Ledger(ledger_url)
    try:
        async with open_api(settings, ledger) as api:
            verdict = await reconcile(api, ledger, start, start + 86_400_000, rereads=0)
    finally:
        ledger.close()
    assert sorted(verdict.mismatched) == [PREFIX + "doc#1", PREFIX + "doc#2"]
    assert verdict.verdict == "incomplete"


def test_the_emulator_keeps_an_accepted_quote_in_its_state_and_history_does_not_show_it(emulator):
    amojo = Amojo(emulator)
    assert amojo.connect().status_code == 200
    chat_id = amojo.chat("conv-1")
    amojo.chat("conv-2", client="client-2")
    assert amojo.message("m1").status_code == 200
    assert amojo.message("elsewhere", "conv-2", client="client-2").status_code == 200
    quoted = amojo.message("m2", ts=1_700_000_001, reply_to={"message": {"msgid": "m1"}})
    assert quoted.status_code == 200, quoted.text
    refused = amojo.message("m3", ts=1_700_000_002, reply_to={"message": {"msgid": "elsewhere"}})
    assert refused.status_code == 400 and "reply_to" in refused.json()["error_description"]
    held = {m["msgid"]: m for m in emulator.emulator.store.messages()}
    assert held["m2"]["reply_to"] == held["m1"]["id"] and held["m1"]["reply_to"] is None
    assert "m3" not in held
    # The documented history carries no reply_to: a quote is checked when accepted, not read back.
    assert all("reply_to" not in item and "reply_to" not in item["message"]
               for item in amojo.history(chat_id).json()["messages"])


def test_the_run_summary_counts_replies_quoted_and_quotes_dropped_by_reason():
    load = LoadReport(replies_quoted=3)
    load.quotes_dropped.update({"not_in_chat": 2, "unknown": 1})
    totals = RunTotals("2026-10-05", load=load)
    summary = totals.summary(None, 1.0)
    assert summary.replies_quoted == 3 and summary.quotes_dropped == {"not_in_chat": 2, "unknown": 1}
    assert RunSummary(**summary.as_dict()).quotes_dropped == {"not_in_chat": 2, "unknown": 1}


async def test_the_sample_has_attachments_and_replies_and_they_arrive(emulator, tmp_path, ledger_url):
    url = f"sqlite:///{tmp_path / 'sample.db'}"
    counts = write_sample(url, size=SampleSize(messages=400, conversations=20, clients=10))
    assert counts["attachments"] > 0
    result = await run_interval(settings_for(emulator, url, ledger_url), date(2026, 10, 1), days=45)
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert any("#" in msgid for msgid in held) and {len(copies) for copies in held.values()} == {1}
    assert result.load.replies_quoted > 0


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "mariadb"])
def test_each_chunk_comes_with_the_attachments_of_its_messages_and_their_replies(dialect, tmp_path, request):
    url = f"sqlite:///{tmp_path / 's.db'}" if dialect == "sqlite" else request.getfixturevalue(f"{dialect}_url")
    size = SampleSize(messages=400, conversations=20, clients=10)
    write_sample(url, size=size)
    generated = dict(pd.concat(rows for table, rows in generate(size=size) if table == "attachments")
                     .groupby("message_id").size())
    replies = {r.id: r.reply_to_id for table, rows in generate(size=size) if table == "messages"
               for r in rows.itertuples() if r.reply_to_id}
    interval = Interval.days(date(2026, 9, 1), date(2026, 12, 1), ZoneInfo("UTC"))
    found: dict[str, int] = {}
    read_replies: dict[str, str] = {}
    with open_source(url, None, interval.start, interval.end, ZoneInfo("UTC"), chunk_size=37) as stream:
        while (frames := stream.next_chunk()) is not None:
            assert set(frames.attachments["message_id"].astype(str)) <= set(frames.messages["id"].astype(str))
            found.update(frames.attachments.groupby("message_id").size().to_dict())
            read_replies.update({r.id: r.reply_to_id for r in frames.messages.itertuples() if r.reply_to_id})
    assert found == generated and read_replies == replies and replies


async def test_an_attachment_changed_on_a_later_day_is_edited_by_that_days_run(emulator, source, ledger_url):
    _message(source, "doc", "cv0", "the contract", NOON)
    _attachment(source, "doc", "1", kind="file", name="draft.pdf")
    await run_interval(settings_for(emulator, source, ledger_url))
    execute(source, "UPDATE attachments SET file_name = 'final.pdf' WHERE message_id = 'doc'")
    execute(source, "UPDATE messages SET updated_at = :t WHERE id = 'doc'",
            t=(NOON + timedelta(days=5)).strftime("%Y-%m-%d %H:%M:%S"))
    # Days later: the attachments query reads the message's attachments from before that day's wider span.
    result = await run_interval(settings_for(emulator, source, ledger_url), DAY + timedelta(days=5))
    assert (result.load.messages_sent, result.load.messages_edited) == (0, 1)
    assert landed(emulator)[PREFIX + "doc#1"][0]["message"]["file_name"] == "final.pdf"


async def test_a_bad_text_leaves_its_attachments_to_go_and_a_bad_message_takes_them_along(emulator, source, ledger_url):
    execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                    "VALUES ('odd', 'cv0', :t, 'in', 'gif', 'a gif caption')", t=NOON.strftime("%Y-%m-%d %H:%M:%S"))
    _attachment(source, "odd", "1", name="still.jpg")
    _message(source, "lost", "nowhere", "in no conversation", NOON)
    _attachment(source, "lost", "1", name="lost.jpg")
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert PREFIX + "odd#1" in held and PREFIX + "odd" not in held
    assert not [msgid for msgid in held if "lost" in msgid]
    reasons = {r["source_key"].split("@")[0]: r["reason"] for r in _rejects(ledger_url)}
    assert reasons == {"message:odd": "unknown_type", "message:lost": "orphan_conversation",
                       "attachment:lost#1": "orphan_conversation"}


def test_a_quote_names_why_it_is_dropped_and_quotes_a_message_of_attachments_by_its_first():
    known = {"q-sent": MessageState("sent", 0, "c1", 1), "q-rejected": MessageState("rejected", 0, "c1", 1),
             "q-pending": MessageState("pending", 0, "c1", 1), "q-other": MessageState("confirmed", 0, "c2", 1),
             "photo#10": MessageState("sent", 0, "c1", 1), "photo#9": MessageState("sent", 0, "c1", 1)}

    class Messages:
        def states(self, msgids):
            return {m: known[m] for m in msgids if m in known}

        def parts_of(self, msgid):
            return {m: s for m, s in known.items() if m.startswith(f"{msgid}#")}

    ledger = SimpleNamespace(messages=Messages())

    def quote(reply_to: str | None, outcomes: list | None = None) -> Quote:
        return quote_of(ledger, SimpleNamespace(reply_to=reply_to, conversation_id="c1"), outcomes or [])

    assert quote(None) == Quote()
    assert quote("q-sent") == Quote("q-sent") and quote("photo") == Quote("photo#9")
    assert quote("q-pending", [{"msgid": "q-pending", "status": MessageStatus.SENT}]) == Quote("q-pending")
    assert [quote(m).dropped for m in ("q-rejected", "q-pending", "q-other", "nowhere")] == \
        ["rejected", "not_sent_yet", "not_in_chat", "unknown"]


def test_attachments_without_an_id_or_sharing_one_are_each_rejected_and_listed():
    """A mapping's attachments query may give NULL ids or the same id twice (no key holds them as the canonical
    table's does): the first of an id is sent, and every other one has a reject row of its own."""
    frames = _frames([{"id": "odd", "text": "odd attachments"}])
    rows = [("1", "kept.jpg"), ("1", "same-id.jpg"), (None, "a.jpg"), (None, "b.jpg")]
    attachments = pd.DataFrame([{"message_id": "odd", "id": i, "type": "picture", "file_name": n, "file_size": 1,
                                 "media_url": f"https://files.example.com/{n}"} for i, n in rows],
                               columns=list(ATTACHMENT_COLUMNS), dtype=object)
    frames = type(frames)(frames.messages, frames.conversations, frames.clients, frames.managers, 1, attachments)
    batch = transform(frames, SENDERS, PREFIX, ZoneInfo("UTC"), now=datetime(2026, 11, 25))
    assert list(zip(batch.messages["msgid"], batch.messages["file_name"], strict=True)) == [
        (PREFIX + "odd", None), (PREFIX + "odd#1", "kept.jpg")]
    assert sorted(batch.rejects["reason"]) == ["duplicate_id", "missing_id", "missing_id"]
    assert batch.rejects["source_key"].is_unique, list(batch.rejects["source_key"])


async def test_a_message_whose_id_is_another_messages_attachment_id_is_not_lost_or_taken_for_it(
        emulator, source, ledger_url):
    """Message `m`'s attachment `7` and a message whose own id is `m#7` would both be msgid `m#7`: the second is
    rejected with its reason, never sent in the other's place or silently dropped, and a second run changes nothing."""
    _message(source, "m", "cv0", "a picture", NOON)
    _attachment(source, "m", "7", name="seven.jpg")
    _message(source, "m#7", "cv0", "a message of its own", NOON + timedelta(minutes=1))
    result = await run_interval(settings_for(emulator, source, ledger_url))
    assert result.verdict.verdict == "complete", result.verdict
    held = landed(emulator)
    assert [m["message"]["type"] for m in held[PREFIX + "m#7"]] == ["picture"]
    reasons = {r["source_key"].split("@")[0]: r["reason"] for r in _rejects(ledger_url)}
    assert reasons.get("message:m#7") == "duplicate_id", reasons
    again = await run_interval(settings_for(emulator, source, ledger_url))
    assert (again.load.messages_sent, again.load.messages_edited) == (0, 0)

