"""Sending against the emulator: the product beside a naive loop and a ceiling probe, and contacts resolved in bulk.

The emulator runs as its own process, answering every request after 50 ms. Printed:
(i)   40 conversations x 250 messages, for the product as for the probe: the product's steady rate (messages/s
      between the 10th and the 90th percentile of arrivals, from the emulator's request log), a naive loop's (one
      message at a time), the ceiling probe's (`bench/ceiling_probe.py`: a minimal sender in its own process, one
      keep-alive connection per conversation), the ratios, seconds from the start of the flow's work (Prefect's own
      start excluded) to the first message, and the product's CPU seconds per 1,000 messages, everything of its
      process included. REST runs at its real limit, 7 requests/s, in the emulator and in the product.
(ii)  REST requests and seconds to resolve, create and link 1,000 and 10,000 new clients against an account that
      already holds 5,000 contacts, with the bulk index and with a search per client. REST is not limited here (a
      search per client at 7/s takes hours); "at 7/s" is the requests divided by 7, the least time the limit allows.
(iii) with --scale N [N ...]: peak RSS and CPU seconds per 1,000 messages of imports of N messages, each in a
      process of its own (250 messages a conversation).
(iv)  with --pools: the product over aiohttp's connection pool (used) and over httpcore's (httpx's own).

    ./uvw run python bench/load_throughput.py [--conversations 40] [--messages 250] [--clients 1000 10000]
                                              [--scale 10000 100000] [--pools] [--no-wire]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator_process import start_emulator  # noqa: E402

from amojo.chats import ChatsClient  # noqa: E402
from amojo.emulator import config as demo  # noqa: E402
from amojo.rest import RestClient  # noqa: E402
from etl.api import open_api  # noqa: E402
from etl.claims import RunClaims  # noqa: E402
from etl.intervals import Interval  # noqa: E402
from etl.ledger import Ledger  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402
from etl.settings import Settings  # noqa: E402
from etl.source import CANONICAL, SourceStream  # noqa: E402
from tasks import load as loading  # noqa: E402
from tasks.load.prepare import prepared  # noqa: E402
from tasks.transform import SeenIds, transform  # noqa: E402

UTC = ZoneInfo("UTC")
MONTH = Interval.days(date(2026, 9, 1), date(2026, 12, 1), UTC)
HERE = Path(__file__).resolve().parent


def settings(url: str, source: str, workdir: str, rest_rate: float, concurrency: int) -> Settings:
    return Settings(source_url=source, state_url=f"sqlite:///{workdir}/ledger-{time.time_ns()}.db", amojo_url=url,
                    amocrm_url=url, channel_id=demo.DEMO_CHANNEL_ID, channel_secret=demo.DEMO_CHANNEL_SECRET,
                    amocrm_token=demo.DEMO_TOKEN, bot_id=demo.DEMO_BOT_ID, rest_rate=rest_rate,
                    concurrency=concurrency)


async def product(url: str, source: str, workdir: str, rest_rate: float, concurrency: int) -> dict:
    """The flow's work without Prefect: senders, extract, transform, own ids, load. Wall clock at its start."""
    cpu, started = time.process_time(), time.time()
    config = settings(url, source, workdir, rest_rate, concurrency)
    ledger = Ledger(config.state_url)
    sent = 0
    async with open_api(config, ledger) as api, RunClaims(ledger) as claims:
        await claims.hold_interval(MONTH)
        senders = await loading.resolve_senders(api.rest, config.bot_id)
        with SourceStream(source, CANONICAL, MONTH.start, MONTH.end, UTC, config.chunk_size) as stream:
            seen = SeenIds(stream.repeated_ids())
            while (frames := stream.next_chunk()) is not None:
                batch = loading.own_ids(transform(frames, senders, "ae-", UTC, seen=seen), ledger)
                report = await loading.load(batch, api, ledger, claims, MONTH.end_ms, MONTH.label, concurrency)
                sent += report.messages_sent
    ledger.close()
    return {"sent": sent, "started": started, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own peak resident memory (the kernel's VmHWM).

    Not `ru_maxrss`: Linux carries it across fork and exec, so a child started by a parent holding 1 GB reports
    1 GB whatever it uses itself (it made the 1M import read 1,046 MB when the import held about 360 MB).
    """
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) / 1024


def arrivals(url: str) -> list[float]:
    """When each new_message was answered 200, from the emulator's request log."""
    log = httpx.get(f"{url}/_emulator/requests", params={"endpoint": "message"}, timeout=120).json()
    return sorted(entry[0] for entry in log if entry[3] == 200)


def steady_rate(times: list[float]) -> float:
    """Messages/s between the 10th and the 90th percentile of arrivals: neither the start nor the tail."""
    if len(times) < 10:
        return 0.0
    low, high = int(0.1 * len(times)), int(0.9 * len(times))
    return (high - low) / (times[high] - times[low])


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


def emulator(latency_ms: float, *flags: str) -> tuple[subprocess.Popen, str]:
    return start_emulator("--latency-ms", str(latency_ms), *flags)


def wire(args: argparse.Namespace, workdir: str) -> None:
    total = args.conversations * args.messages
    print(f"(i) {total} messages in {args.conversations} conversations, {args.latency_ms:.0f} ms latency, "
          f"concurrency {args.concurrency}, REST at 7/s, {os.cpu_count()} cores")
    source = f"sqlite:///{workdir}/wire.db"
    # The probe's shape: with sizes that vary, lanes fall idle as the short conversations end (a conversation's
    # messages go one after another), and the rate between p10 and p90 says so, whatever the sender.
    write_sample(source, size=SampleSize(messages=total, conversations=args.conversations,
                                         clients=args.conversations, even=True))
    process, url = emulator(args.latency_ms, "--rest-rate", "7")
    try:
        result = asyncio.run(product(url, source, workdir, 7.0, args.concurrency))
        times = arrivals(url)
        baseline = asyncio.run(naive(url, 100))
    finally:
        process.terminate()
        process.wait(10)
    rate = steady_rate(times)
    process, url = emulator(args.latency_ms)
    try:
        probe = json.loads(subprocess.run([sys.executable, str(HERE / "ceiling_probe.py"), url, "--conversations",
                                           str(args.conversations), "--messages", str(args.messages)],
                                          check=True, capture_output=True, text=True).stdout)
        ceiling = steady_rate(arrivals(url))
    finally:
        process.terminate()
        process.wait(10)
    print(f"  product: {result['sent']} sent, {len(times)} arrived; steady {rate:.1f} msg/s (p10-p90); "
          f"first message {times[0] - result['started']:.2f} s after the start, the last "
          f"{times[-1] - result['started']:.1f} s; {1000 * result['cpu_s'] / max(1, result['sent']):.2f} CPU s per "
          f"1,000 messages")
    print(f"  naive loop: {baseline:.1f} msg/s; ceiling probe: {ceiling:.1f} msg/s (p10-p90), "
          f"{1000 * probe['cpu_s'] / probe['sent']:.2f} CPU s per 1,000")
    print(f"  product / naive = {rate / baseline:.1f}x (target >= 20x); product / ceiling = {rate / ceiling:.2f} "
          f"(target >= 0.8)")


async def resolve(url: str, source: str, workdir: str, use_index: bool) -> dict:
    """Chats, contacts and links of every conversation of the source, as the load prepares them; no messages."""
    config = settings(url, source, workdir, 1000.0, 32)
    ledger = Ledger(config.state_url)
    if not use_index:
        async def no_index(cls, api, pages_at_most):
            return None
        loading.ContactIndex.read = classmethod(no_index)
    report = loading.LoadReport()
    async with open_api(config, ledger) as api, RunClaims(ledger) as claims:
        context = loading.LoadContext(api, ledger, claims, report, 32)
        await claims.hold_interval(MONTH)
        senders = await loading.resolve_senders(api.rest, config.bot_id)
        with SourceStream(source, CANONICAL, MONTH.start, MONTH.end, UTC, 10**7) as stream:
            batch = loading.own_ids(transform(stream.next_chunk(), senders, "ae-", UTC, seen=SeenIds(set())), ledger)
        before = rest_requests(url)
        began = time.perf_counter()
        async for _ in prepared(context, batch.conversations):
            pass
        seconds = time.perf_counter() - began
    ledger.close()
    return {"requests": rest_requests(url) - before, "seconds": seconds, "created": report.contacts_created,
            "linked": report.links_created}


def rest_requests(url: str) -> int:
    counts = httpx.get(f"{url}/_emulator/state", timeout=120).json()["request_counts"]
    # Keyed "api endpoint status".
    return sum(n for key, n in counts.items() if key.split()[1] in ("contacts", "contacts_chats"))


def bulk(args: argparse.Namespace, workdir: str) -> None:
    print(f"(ii) new clients resolved, created and linked; the account holds {args.account_contacts} contacts; "
          f"{args.latency_ms:.0f} ms latency")
    for clients in args.clients:
        source = f"sqlite:///{workdir}/clients-{clients}.db"
        write_sample(source, size=SampleSize(messages=clients, conversations=clients, clients=clients))
        for use_index in (True, False):
            process, url = emulator(args.latency_ms, "--rest-rate", "0")
            try:
                asyncio.run(fill_account(url, args.account_contacts))
                # A process of its own, so that switching the index off stays there.
                figures = json.loads(subprocess.run(
                    [sys.executable, __file__, "--resolve-only", url, source, workdir, str(int(use_index))],
                    check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            finally:
                process.terminate()
                process.wait(10)
            print(f"  {clients:>6} clients, {'bulk index' if use_index else 'a search each'}: "
                  f"{figures['requests']} REST requests ({figures['requests'] / 7:.0f} s at 7/s), "
                  f"{figures['seconds']:.1f} s unlimited; {figures['created']} created, {figures['linked']} linked")


async def fill_account(url: str, count: int) -> None:
    async with RestClient(url, demo.DEMO_TOKEN, rate=1000) as rest:
        await rest.create_contacts([{"name": f"Existing {n}", "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": f"+7 495 {n:07d}"}]}]} for n in range(count)])


def scale(args: argparse.Namespace, workdir: str) -> None:
    print(f"(iii) imports of growing size, {args.latency_ms:.0f} ms latency, no REST limit, each in its own process")
    for total in args.scale:
        conversations = max(1, total // 250)
        source = f"sqlite:///{workdir}/scale-{total}.db"
        write_sample(source, size=SampleSize(messages=total, conversations=conversations, clients=conversations))
        process, url = emulator(args.latency_ms, "--rest-rate", "0")
        try:
            figures = json.loads(subprocess.run(
                [sys.executable, __file__, "--product-only", url, source, workdir, str(args.concurrency)],
                check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        finally:
            process.terminate()
            process.wait(10)
        print(f"  {total:>8} messages: peak RSS {figures['peak_rss_mb']:.0f} MB, "
              f"{1000 * figures['cpu_s'] / max(1, figures['sent']):.2f} CPU s per 1,000 messages")


def pools(args: argparse.Namespace, workdir: str) -> None:
    print("(iv) connection pools, no rate limit")
    total = args.conversations * args.messages
    source = f"sqlite:///{workdir}/pools.db"
    write_sample(source, size=SampleSize(messages=total, conversations=args.conversations,
                                         clients=args.conversations))
    for label in ("aiohttp (used)", "httpcore (httpx's own)"):
        if label.startswith("httpcore"):
            import amojo.chats
            import amojo.rest

            def pool(max_connections: int) -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections,
                                                                    max_keepalive_connections=max_connections))

            amojo.chats.connection_pool = amojo.rest.connection_pool = pool
        process, url = emulator(args.latency_ms, "--rest-rate", "0")
        try:
            result = asyncio.run(product(url, source, workdir, 1000.0, args.concurrency))
            rate = steady_rate(arrivals(url))
        finally:
            process.terminate()
            process.wait(10)
        print(f"  {label}: {rate:.1f} msg/s (p10-p90), {1000 * result['cpu_s'] / result['sent']:.2f} CPU s per 1,000")


def main() -> None:
    if sys.argv[1:2] == ["--resolve-only"]:
        url, source, workdir, use_index = sys.argv[2:6]
        print(json.dumps(asyncio.run(resolve(url, source, workdir, use_index == "1"))))
        return
    if sys.argv[1:2] == ["--product-only"]:
        url, source, workdir, concurrency = sys.argv[2:6]
        print(json.dumps(asyncio.run(product(url, source, workdir, 1000.0, int(concurrency)))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--messages", type=int, default=250, help="per conversation")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--clients", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--account-contacts", type=int, default=5000)
    parser.add_argument("--scale", type=int, nargs="*", default=[])
    parser.add_argument("--pools", action="store_true")
    parser.add_argument("--no-wire", action="store_true", help="leave out part (i)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        if not args.no_wire:
            wire(args, workdir)
        if args.clients:
            bulk(args, workdir)
        if args.scale:
            scale(args, workdir)
        if args.pools:
            pools(args, workdir)


if __name__ == "__main__":
    main()
