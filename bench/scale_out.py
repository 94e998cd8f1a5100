"""Scale-out: messages/s for 1, 2 and 4 worker processes backfilling one range together, on one PostgreSQL ledger,
one Prefect server and one shared Chats API budget, against the emulator with 50 ms latency; then the same under
a budget that caps them.

    ./uvw run python bench/scale_out.py [--workers 1 2 4] [--latency-ms 50] [--concurrency 2] [--cap 100]

Each worker is `amojo-etl backfill` over the same days (`--max-parallel` days at a time each); the days are
shared out through the ledger's claims. Figures come from the emulator's request log: new_message answers per
second between the first and the last, and the busiest 1-second window of Chats API requests. Needs this
machine's PostgreSQL (as the tests do).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from emulator_process import start_emulator  # noqa: E402
from fault_campaign import fresh_postgres  # noqa: E402
from prefect_server import POSTGRES_URL, prefect_server  # noqa: E402

from amojo.emulator import config as demo  # noqa: E402
from etl.budget import CHATS_BATCH  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402

START, END = "2026-10-05", "2026-10-13"


def busiest(times: np.ndarray, window: float) -> int:
    """The most requests in any `window` seconds."""
    times = np.sort(times)
    return int((np.searchsorted(times, times + window, side="left") - np.arange(len(times))).max())


def run(workers: int, rate: float, args: argparse.Namespace, source: str, prefect_env: dict[str, str],
        workdir: Path) -> dict[str, float]:
    """`workers` backfills at once under a shared budget of `rate` Chats API requests/s, against a fresh emulator."""
    api = prefect_env["PREFECT_API_URL"]
    budget = f"bench-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{api}/v2/concurrency_limits/", json={"name": budget, "limit": int(rate), "active": True,
                                                       "slot_decay_per_second": rate}).raise_for_status()
    emulator, url = start_emulator("--latency-ms", str(args.latency_ms), "--rest-rate", "0")
    try:
        with fresh_postgres(POSTGRES_URL) as ledger:
            return _run(workers, budget, args, source, ledger, prefect_env, url, workdir)
    finally:
        emulator.terminate()
        emulator.wait(10)


def _run(workers: int, budget: str, args: argparse.Namespace, source: str, ledger: str, prefect_env: dict[str, str],
         url: str, workdir: Path) -> dict[str, float]:
    env = {**prefect_env, "AMOJO_ETL_SOURCE_URL": source, "AMOJO_ETL_STATE_URL": ledger,
           "AMOJO_ETL_AMOJO_URL": url, "AMOJO_ETL_AMOCRM_URL": url, "AMOJO_ETL_CHANNEL_ID": demo.DEMO_CHANNEL_ID,
           "AMOJO_ETL_CHANNEL_SECRET": demo.DEMO_CHANNEL_SECRET, "AMOJO_ETL_AMOCRM_TOKEN": demo.DEMO_TOKEN,
           "AMOJO_ETL_BOT_ID": demo.DEMO_BOT_ID, "AMOJO_ETL_SHARED_RATE_LIMIT": budget,
           "AMOJO_ETL_CONCURRENCY": str(args.concurrency), "AMOJO_ETL_REST_RATE": "1000"}
    cli = str(Path(sys.executable).parent / "amojo-etl")
    began = time.monotonic()
    processes = [subprocess.Popen([cli, "backfill", "--start", START, "--end", END, "--max-parallel",
                                   str(args.max_parallel), "--json"], env=env,
                                  stdout=(workdir / f"w{workers}-{n}.log").open("w"), stderr=subprocess.STDOUT)
                 for n in range(workers)]
    codes = [process.wait(timeout=1800) for process in processes]
    wall = time.monotonic() - began
    if any(codes):
        failed = workdir / f"w{workers}-{codes.index(next(c for c in codes if c))}.log"
        raise SystemExit(f"a worker failed (exit codes {codes}); its log ends:\n{failed.read_text()[-3000:]}")
    log = httpx.get(f"{url}/_emulator/requests", timeout=60).json()
    sent = np.array([e[0] for e in log if e[2] == "message" and e[3] == 200])
    chats_api = np.array([e[0] for e in log if e[1] == "amojo"])
    return {"messages": len(sent), "rate": (len(sent) - 1) / (sent.max() - sent.min()), "wall": wall,
            "chats_api": (len(chats_api) - 1) / (chats_api.max() - chats_api.min()),
            "busiest_1s": busiest(chats_api, 1.0), "busiest_10s": busiest(chats_api, 10.0) / 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=2, help="conversations sent at once per run")
    parser.add_argument("--max-parallel", type=int, default=2, help="days at once per worker")
    parser.add_argument("--messages", type=int, default=6000, help="in the sample month")
    parser.add_argument("--generous", type=float, default=1000, help="shared budget, requests/s, that does not bind")
    parser.add_argument("--cap", type=float, default=100, help="shared budget, requests/s, that binds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        source = f"sqlite:///{workdir}/source.db"
        write_sample(source, size=SampleSize(messages=args.messages))
        print(f"backfill {START}..{END} by N workers ({args.max_parallel} days at once each, {args.concurrency} "
              f"conversations at once per day), emulator latency {args.latency_ms:.0f} ms, {os.cpu_count()} cores")
        with prefect_server(workdir / "prefect") as prefect_env:
            baseline = None
            plans = [(n, args.generous) for n in args.workers] + [(max(args.workers), args.cap)]
            for workers, rate in plans:
                figures = run(workers, rate, args, source, prefect_env, workdir)
                baseline = baseline or figures["rate"]
                print(f"  {workers} worker(s), budget {rate:.0f}/s: {figures['messages']} messages at "
                      f"{figures['rate']:.1f} msg/s ({figures['rate'] / baseline:.2f}x one worker), "
                      f"{figures['wall']:.1f} s wall; all Chats API requests {figures['chats_api']:.1f}/s, "
                      f"busiest 10 s {figures['busiest_10s']:.1f}/s, busiest second {figures['busiest_1s']} "
                      f"(a bucket of {rate:.0f} allows {rate:.0f} + {rate:.0f}/s, plus {CHATS_BATCH} paid ahead per "
                      f"worker)", flush=True)


if __name__ == "__main__":
    main()
