"""A run of one interval without Prefect, as `flows/import_chats.py` runs it, for tests that fault the load path.

The flow's own steps (extract -> transform -> own_ids -> load -> reconcile, with its claims and guards) called
directly, so that a test can run many of them in seconds; and a small source database a test can edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from amojo.emulator.server import RunningEmulator
from etl.api import open_api
from etl.claims import RunClaims
from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import Settings
from etl.source import create_schema, open_source
from tasks.load import LoadReport, load, own_ids, resolve_senders, withdraw_unseen
from tasks.reconcile import Verdict, reconcile
from tasks.transform import SeenIds, transform

UTC = ZoneInfo("UTC")
DAY = date(2026, 10, 5)


def settings_for(running: RunningEmulator, source_url: str, ledger_url: str, **overrides) -> Settings:
    config = running.emulator.config
    values = dict(source_url=source_url, state_url=ledger_url, amojo_url=running.url, amocrm_url=running.url,
                  channel_id=config.channel_id, channel_secret=config.channel_secret, amocrm_token=config.token,
                  bot_id=config.bot_id, rest_rate=1000, claim_timeout_s=3, timeout_s=2)
    return Settings(**{**values, **overrides})


def write_source(url: str, conversations: int = 6, messages: int = 8, day: date = DAY, tag: str = "") -> list[str]:
    """Conversations of `messages` each on `day`, one client each; the even clients have neither phone nor email
    (only our own key finds their contacts). Ids start with `tag`. Returns the message ids in time order."""
    engine = sa.create_engine(url)
    if not sa.inspect(engine).has_table("messages"):
        create_schema(engine)
    start = datetime.combine(day, datetime.min.time())
    ids: list[str] = []
    with engine.begin() as conn:
        for c in range(conversations):
            phone, email = (None, None) if c % 2 == 0 else (f"+7 912 000-00-{c:02d}", f"client{c}@example.com")
            conn.execute(sa.text("INSERT INTO clients (id, name, phone, email) VALUES (:i, :n, :p, :e)"),
                         {"i": f"{tag}cl{c}", "n": f"Client {tag}{c}", "p": phone, "e": email})
            conn.execute(sa.text("INSERT INTO conversations (id, client_id, created_at) VALUES (:i, :c, :t)"),
                         {"i": f"{tag}cv{c}", "c": f"{tag}cl{c}", "t": start.strftime("%Y-%m-%d %H:%M:%S")})
        for m in range(messages):
            for c in range(conversations):
                moment = start + timedelta(minutes=m * 10 + c, hours=1)
                ids.append(f"{tag}cv{c}-{m}")
                conn.execute(sa.text(
                    "INSERT INTO messages (id, conversation_id, created_at, direction, type, text) "
                    "VALUES (:i, :c, :t, 'in', 'text', :x)"),
                    {"i": f"{tag}cv{c}-{m}", "c": f"{tag}cv{c}", "t": moment.strftime("%Y-%m-%d %H:%M:%S"),
                     "x": f"message {m} of conversation {tag}{c}"})
    engine.dispose()
    return ids


def execute(url: str, statement: str, **values: object) -> None:
    """One statement against a source database, as a change made to it after the fact."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(statement), values)
    engine.dispose()


def edit_text(url: str, message_id: str, text: str) -> None:
    execute(url, "UPDATE messages SET text = :t, updated_at = created_at WHERE id = :i", t=text, i=message_id)


@dataclass
class RunResult:
    load: LoadReport
    verdict: Verdict


async def run_interval(settings: Settings, day: date = DAY, days: int = 1, held: dict[str, str] | None = None
                       ) -> RunResult:
    """One import of [day, day + days), as the import_chats flow does it. `held`: conversations an earlier day of
    the same run left unsent (conversation -> why), none of whose messages are sent here."""
    interval = Interval.days(day, day + timedelta(days=days), settings.zone)
    source = open_source(settings.source_url, settings.mapping, interval.start, interval.end, settings.source_zone,
                         settings.chunk_size)
    ledger = Ledger(settings.state_url)
    total = LoadReport()
    try:
        async with open_api(settings, ledger) as api, RunClaims(ledger, settings.claim_timeout_s,
                                                                request_s=settings.timeout_s) as claims:
            api.guard(claims.check)
            await claims.hold_interval(interval)
            ledger.rejects.clear(interval.label)  # as the flow does: what is still bad is rejected again
            senders = await resolve_senders(api.rest, settings.bot_id)
            seen = SeenIds(source.repeated_ids())
            registered = interval.start_ms
            stopped: dict[str, str] = dict(held or {})
            seen_pending: set[str] = set()
            while (frames := source.next_chunk()) is not None:
                batch = own_ids(transform(frames, senders, settings.id_prefix, settings.source_timezone, seen=seen),
                                ledger)
                if frames.rows_read < settings.chunk_size:
                    registered = interval.end_ms
                elif len(batch.messages):
                    registered = max(registered, int(batch.messages["msec"].max()))
                report = await load(batch, api, ledger, claims, registered, interval.label, settings.concurrency,
                                    stopped=stopped)
                stopped.update(report.stopped)
                total.add(report)
                seen_pending |= ledger.messages.pending(batch.messages["msgid"])
            claims.advance(interval.end_ms)
            withdraw_unseen(ledger, claims.holder, interval.start_ms, interval.end_ms, seen_pending)
            verdict = await reconcile(api, ledger, interval.start_ms, interval.end_ms, reread_delay=0.1)
    finally:
        source.close()
        ledger.close()
    return RunResult(total, verdict)


def landed(running: RunningEmulator) -> dict[str, list[dict]]:
    """msgid -> the messages the emulator holds with it."""
    held: dict[str, list[dict]] = {}
    for messages in running.emulator.snapshot()["messages"].values():
        for message in messages:
            held.setdefault(message["msgid"], []).append(message)
    return held
