"""End-to-end sending against the emulator: messages/s of the loader beside a naive one-at-a-time loop.

The emulator runs as its own process with 50 ms of latency on every answer. Printed:
(i)  the loader's messages/s over the sending phase, with no rate limit, beside a naive loop that sends one
     message at a time with the same client, in the same process, and the ratio;
(ii) the same under a configured Chats API rate limit, as a fraction of that limit;
(iii) the loader over each HTTP connection pool, in the same process: aiohttp's (what the clients use) and
     httpcore's (httpx's own), with the CPU seconds each spends per 1,000 messages;
and where the loader's time goes (ledger writes against the rest), and requests per message.

    ./uvw run python bench/load_throughput.py [--conversations 64] [--messages 40] [--limit 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator_process import emulator_view, start_emulator  # noqa: E402

from amojo.chats import ChatsClient  # noqa: E402
from amojo.emulator import config as demo  # noqa: E402
from etl.api import open_api  # noqa: E402
from etl.claims import RunClaims  # noqa: E402
from etl.intervals import Interval  # noqa: E402
from etl.ledger import Ledger  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402
from etl.settings import Settings  # noqa: E402
from etl.source import CANONICAL, SourceStream  # noqa: E402
from tasks.load import load, own_ids, resolve_senders  # noqa: E402
from tasks.transform import SeenIds, transform  # noqa: E402

UTC = ZoneInfo("UTC")
MONTH = Interval.days(date(2026, 9, 1), date(2026, 12, 1), UTC)


class Timed:
    """Wall time spent inside a ledger's methods."""

    def __init__(self, ledger: Ledger) -> None:
        self.seconds = 0.0
        for name in ("record_messages", "add_pending", "message_states", "chat_states", "save_chats",
                     "save_contacts", "contact_ids", "save_rejects"):
            original = getattr(ledger, name)

            def timed(*args, _original=original, **kwargs):
                began = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - began

            setattr(ledger, name, timed)


async def pipeline(url: str, source: str, workdir: str, amojo_rate: float | None, concurrency: int) -> dict:
    cpu = time.process_time()
    settings = Settings(source_url=source, state_url=f"sqlite:///{workdir}/ledger-{time.time_ns()}.db",
                        amojo_url=url, amocrm_url=url, channel_id=demo.DEMO_CHANNEL_ID,
                        channel_secret=demo.DEMO_CHANNEL_SECRET, amocrm_token=demo.DEMO_TOKEN, bot_id=demo.DEMO_BOT_ID,
                        amojo_rate=amojo_rate, rest_rate=1000, concurrency=concurrency)
    ledger = Ledger(settings.state_url)
    timed = Timed(ledger)
    sent = 0
    async with open_api(settings, ledger) as api, RunClaims(ledger) as claims:
        await claims.hold_interval(MONTH)
        senders = await resolve_senders(api.rest, settings.bot_id)
        with SourceStream(source, CANONICAL, MONTH.start, MONTH.end, UTC) as stream:
            seen = SeenIds(stream.repeated_ids())
            began = time.perf_counter()
            while (frames := stream.next_chunk()) is not None:
                batch = own_ids(transform(frames, senders, "ae-", UTC, seen=seen), ledger)
                sent += (await load(batch, api, ledger, claims, MONTH.end_ms, MONTH.label, concurrency)).messages_sent
            seconds = time.perf_counter() - began
    ledger.close()
    return {"sent": sent, "seconds": seconds, "ledger_seconds": timed.seconds, "cpu_s": time.process_time() - cpu}


def over_httpcore() -> None:
    """Put httpx's own connection pool under both clients, instead of aiohttp's."""
    import httpx

    import amojo.chats
    import amojo.rest

    def pool(max_connections: int) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections,
                                                            max_keepalive_connections=max_connections))

    amojo.chats.connection_pool = amojo.rest.connection_pool = pool


async def naive(url: str, count: int) -> float:
    """One message at a time, each awaited before the next: what a plain loop over rows does."""
    async with ChatsClient(url, demo.DEMO_CHANNEL_ID, demo.DEMO_CHANNEL_SECRET) as client:
        await client.connect(demo.DEMO_ACCOUNT_ID)
        await client.create_chat({"conversation_id": "naive", "user": {"id": "naive-client", "name": "Client"}})
        began = time.perf_counter()
        for n in range(count):
            await client.new_message({"timestamp": 1_700_000_000 + n, "msgid": f"naive-{n}",
                                      "conversation_id": "naive", "silent": True,
                                      "sender": {"id": "naive-client", "name": "Client"},
                                      "message": {"type": "text", "text": f"message {n}"}})
        return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--messages", type=int, default=40, help="per conversation")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--limit", type=float, default=100, help="Chats API requests/s for part (ii)")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    total = args.conversations * args.messages
    print(f"loader against the emulator, {args.latency_ms:.0f} ms latency, {total} messages in "
          f"{args.conversations} conversations, concurrency {args.concurrency}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as workdir:
        source = f"sqlite:///{workdir}/source.db"
        write_sample(source, size=SampleSize(messages=total, conversations=args.conversations,
                                             clients=args.conversations))
        for label, rate in (("no rate limit", 0.0), (f"limit {args.limit:.0f}/s", args.limit)):
            process, url = start_emulator("--latency-ms", str(args.latency_ms), "--amojo-rate", str(rate),
                                          "--rest-rate", "0")
            try:
                result = asyncio.run(pipeline(url, source, workdir, rate or None, args.concurrency))
                landed, sending, counts = emulator_view(url)
                overall = result["sent"] / result["seconds"]
                requests = sum(counts.values())
                print(f"  {label}: {result['sent']} sent ({landed} in the emulator) in {result['seconds']:.1f} s: "
                      f"{overall:.1f} msg/s overall (extract, chats, contacts, links, messages), "
                      f"{sending:.1f} msg/s while sending messages")
                print(f"    ledger: {result['ledger_seconds']:.2f} s of the {result['seconds']:.1f} s "
                      f"({100 * result['ledger_seconds'] / result['seconds']:.1f}%); "
                      f"{requests / landed:.2f} requests per message ({dict(counts)})")
                if rate:
                    print(f"    sending at {sending / rate:.0%} of the configured {rate:.0f} requests/s")
                else:
                    baseline = asyncio.run(naive(url, 100))
                    print(f"  naive loop, same client: {baseline:.1f} msg/s; loader while sending / naive = "
                          f"{sending / baseline:.1f}x, overall / naive = {overall / baseline:.1f}x")
            finally:
                process.terminate()
                process.wait(10)
        print("  connection pools, no rate limit:")
        for label in ("aiohttp (used)", "httpcore (httpx's own)"):
            if label.startswith("httpcore"):
                over_httpcore()
            process, url = start_emulator("--latency-ms", str(args.latency_ms), "--rest-rate", "0")
            try:
                result = asyncio.run(pipeline(url, source, workdir, None, args.concurrency))
                _, sending, _ = emulator_view(url)
                print(f"    {label}: {sending:.1f} msg/s while sending, {1000 * result['cpu_s'] / result['sent']:.2f} "
                      f"CPU s per 1,000 messages (the loader's process, all of it)")
            finally:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
