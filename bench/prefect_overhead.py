"""Prefect's share of an import: task runs per import at 1k, 100k and 1M messages, and the time Prefect adds.

Task runs are counted from Prefect's own records of each flow run (a temporary local server). Imports of 1k and
100k messages go to an emulator process with no REST rate limit; 1M is a dry run (every stage but the sending:
the same chunks, so the same extract and transform task runs; a real import adds one load per chunk and one
reconcile). The overhead is the 1k import through the flow minus the same stages called as plain functions.

    ./uvw run python bench/prefect_overhead.py [--sizes 1000 100000 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from emulator_process import start_emulator  # noqa: E402

from amojo.emulator import config as demo  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402


def environment(url: str, source: str, ledger: str) -> None:
    os.environ.update({
        "AMOJO_ETL_SOURCE_URL": source, "AMOJO_ETL_STATE_URL": ledger, "AMOJO_ETL_AMOJO_URL": url,
        "AMOJO_ETL_AMOCRM_URL": url, "AMOJO_ETL_CHANNEL_ID": demo.DEMO_CHANNEL_ID,
        "AMOJO_ETL_CHANNEL_SECRET": demo.DEMO_CHANNEL_SECRET, "AMOJO_ETL_AMOCRM_TOKEN": demo.DEMO_TOKEN,
        "AMOJO_ETL_BOT_ID": demo.DEMO_BOT_ID, "AMOJO_ETL_REST_RATE": "1000",
    })


async def counted(flow_state) -> Counter:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])), limit=200)
    return Counter(run.name.split("-")[0] for run in runs)


async def plain(settings_env_ledger: str) -> float:
    """The import's stages as plain functions: no flow, no task runs."""
    from etl.api import open_api
    from etl.claims import RunClaims
    from etl.intervals import Interval
    from etl.ledger import Ledger
    from etl.settings import load_settings
    from etl.source import open_source
    from tasks.load import load, own_ids, resolve_senders
    from tasks.reconcile import reconcile
    from tasks.transform import SeenIds, transform

    settings = load_settings(state_url=settings_env_ledger)
    interval = Interval.days(*MONTH, settings.zone)
    began = time.perf_counter()
    ledger = Ledger(settings.state_url)
    with open_source(settings.source_url, None, interval.start, interval.end, settings.source_zone) as source:
        seen = SeenIds(source.repeated_ids())
        async with open_api(settings, ledger) as api, RunClaims(ledger) as claims:
            await claims.hold_interval(interval)
            senders = await resolve_senders(api.rest, settings.bot_id)
            while (frames := source.next_chunk()) is not None:
                batch = own_ids(transform(frames, senders, settings.id_prefix, settings.source_zone, seen=seen), ledger)
                await load(batch, api,
                           ledger, claims, interval.end_ms, interval.label, settings.concurrency)
            await reconcile(api, ledger, interval.start_ms, interval.end_ms)
    ledger.close()
    return time.perf_counter() - began


MONTH = None


def main() -> None:
    global MONTH
    from datetime import date

    MONTH = (date(2026, 9, 1), date(2026, 12, 1))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--largest-real", type=int, default=100_000, help="above this, a dry run")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from flows.import_chats import import_chats

    print(f"task runs per import (chunks of 50,000), {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as workdir, prefect_test_harness(server_startup_timeout=60):
        for size in args.sizes:
            source = f"sqlite:///{workdir}/source-{size}.db"
            write_sample(source, size=SampleSize(messages=size))
            process, url = start_emulator("--rest-rate", "0")
            try:
                environment(url, source, f"sqlite:///{workdir}/ledger-{size}.db")
                dry = size > args.largest_real
                began = time.perf_counter()
                state = asyncio.run(import_chats(start=MONTH[0], end=MONTH[1], dry_run=dry, return_state=True))
                seconds = time.perf_counter() - began
                summary = state.result(raise_on_failure=False)  # an incomplete run ends Failed, with its summary
                runs = asyncio.run(counted(state))
                print(f"  {size:>9,} messages{' (dry run)' if dry else ''}: {sum(runs.values())} task runs "
                      f"{dict(runs)}, {summary.chunks} chunks, {seconds:.1f} s, verdict {summary.verdict}")
                if size == min(args.sizes) and not dry:
                    plain_seconds = asyncio.run(plain(f"sqlite:///{workdir}/ledger-plain-{size}.db"))
                    print(f"    the same import as plain functions: {plain_seconds:.1f} s; Prefect adds "
                          f"{seconds - plain_seconds:.1f} s to this run ({sum(runs.values())} task runs, one flow run, "
                          "4 artifacts)")
            finally:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
