"""What an audit of unchanged days costs: seconds, and requests by endpoint, for 1k, 10k and 100k messages.

The sample source (October 2026) is imported into an emulator process answering after 50 ms (without Prefect,
as bench/load_throughput.py does), then `audit` runs over the month as a flow. Printed per size: the audit's
seconds, its Chats API and REST requests by endpoint (history reads, no writes), and chats read.

    ./uvw run python bench/audit_cost.py [--sizes 1000 10000 100000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emulator_process import start_emulator  # noqa: E402
from load_throughput import product, settings  # noqa: E402

from amojo.emulator import config as demo  # noqa: E402
from etl.sample import SampleSize, write_sample  # noqa: E402

MONTH = (date(2026, 10, 1), date(2026, 11, 1))


def requests_by_endpoint(url: str) -> Counter:
    counts = httpx.get(f"{url}/_emulator/state", timeout=120).json()["request_counts"]
    return Counter({" ".join(key.split()[:2]): n for key, n in counts.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.audit import audit

    print(f"audit of the unchanged month {MONTH[0]}..{MONTH[1]}, {args.latency_ms:.0f} ms latency, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            source = f"sqlite:///{workdir}/source-{size}.db"
            write_sample(source, size=SampleSize(messages=size))
            process, url = start_emulator("--latency-ms", str(args.latency_ms), "--rest-rate", "0")
            try:
                imported = asyncio.run(product(url, source, workdir, 1000.0, 40))
                config = settings(url, source, workdir, 1000.0, 40)
                ledger_url = sorted(Path(workdir).glob("ledger-*.db"), key=os.path.getmtime)[-1]
                os.environ.update({"AMOJO_ETL_SOURCE_URL": source, "AMOJO_ETL_STATE_URL": f"sqlite:///{ledger_url}",
                                   "AMOJO_ETL_AMOJO_URL": url, "AMOJO_ETL_AMOCRM_URL": url,
                                   "AMOJO_ETL_CHANNEL_ID": demo.DEMO_CHANNEL_ID,
                                   "AMOJO_ETL_CHANNEL_SECRET": demo.DEMO_CHANNEL_SECRET,
                                   "AMOJO_ETL_AMOCRM_TOKEN": demo.DEMO_TOKEN, "AMOJO_ETL_BOT_ID": demo.DEMO_BOT_ID,
                                   "AMOJO_ETL_REST_RATE": str(config.rest_rate)})
                before = requests_by_endpoint(url)
                began = time.perf_counter()
                summary = asyncio.run(audit(start=MONTH[0], end=MONTH[1], return_state=True)).result(
                    raise_on_failure=False)
                seconds = time.perf_counter() - began
                spent = requests_by_endpoint(url) - before
            finally:
                process.terminate()
                process.wait(10)
            writes = spent.get("amojo message", 0) + spent.get("rest contacts_chats", 0)
            print(f"  {size:>7} messages ({imported['sent']} sent): audit {seconds:.1f} s, verdict "
                  f"{summary.verdict}; {spent.get('amojo history', 0)} history reads, {writes} writes; "
                  f"all requests {dict(sorted(spent.items()))}")


if __name__ == "__main__":
    main()
