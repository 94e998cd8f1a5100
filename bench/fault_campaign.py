"""The randomized fault campaign of issue 12, as many schedules as asked: see tests/fault_campaign.py for what one
schedule does and checks. Each schedule gets a fresh source, a fresh PostgreSQL schema as its ledger and a fresh
emulator. Printed per schedule: its seed, the faults drawn, what was injected, each round's runs and what they
came to, and the violations; at the end how many schedules passed, the faults injected by kind and endpoint, and
the violations by kind.

The ledger server is AMOJO_ETL_TEST_POSTGRES_URL (default: this machine's, as in tests/conftest.py).

    ./uvw run python bench/fault_campaign.py --seeds 50 [--start 0] [--intensity standard|harsh] [--cross-day] [--quiet]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import POSTGRES_URL  # noqa: E402
from fault_campaign import INTENSITIES, ScheduleResult, fresh_postgres, run_schedule  # noqa: E402


class _NoDroppedConnections(logging.Filter):
    """The emulator's dropped connections are faults it injects on purpose: no traceback for each."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, ConnectionResetError) and "emulated dropped connection" in str(error))


def violation_kind(violation: str) -> str:
    """'lost: ae-cv1-3 is not in amoCRM' -> 'lost'; 'round 1: a run did not end: …' -> 'a run did not end'."""
    text = violation.split(": ", 1)[1] if violation.startswith(("round ", "settle ")) else violation
    return text.split(":", 1)[0]


def report(results: list[ScheduleResult]) -> None:
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} schedules passed")
    failed = [r.seed for r in results if not r.passed]
    if failed:
        print(f"failed seeds: {' '.join(map(str, failed))}")

    injected: Counter = Counter()
    for result in results:
        injected.update(result.injected)
    print("\nfaults injected (all schedules)")
    print(f"  {'kind':<12} {'endpoint':<16} {'detail':<7} {'count':>6}")
    for (kind, endpoint, detail), count in sorted(injected.items()):
        label = {"lost": "lost answer", "late": "late commit"}.get(kind, "status")
        print(f"  {label:<12} {endpoint:<16} {detail:<7} {count:>6}")
    lost = sum(c for (k, _, _), c in injected.items() if k == "lost")
    statuses = sum(c for (k, _, _), c in injected.items() if k == "status")
    print(f"  total: {lost} lost answers, {statuses} injected statuses, "
          f"{sum(r.kills for r in results)} runs killed, {sum(r.edits for r in results)} source edits, "
          f"{sum(r.refused for r in results)} messages recorded rejected at some point, "
          f"{sum(r.refused_late for r in results)} of them landed out of order (allowed)")
    outcomes: Counter = Counter()
    for result in results:
        outcomes.update(result.outcomes)
    late = sum(c for (k, _, _), c in injected.items() if k == "late")
    print(f"\nreal-world faults (all schedules): {late} contact creates committed late")
    for what, count in sorted(outcomes.items()):
        print(f"  {what:<60} {count:>5}")
    settle = Counter(r.settle_rounds for r in results)
    print("  settle rounds needed: " + ", ".join(f"{n}: {c} schedules" for n, c in sorted(settle.items())))

    kinds: Counter = Counter()
    seeds: dict[str, list[int]] = {}
    for result in results:
        for violation in result.violations:
            kind = violation_kind(violation)
            kinds[kind] += 1
            seeds.setdefault(kind, [])
            if result.seed not in seeds[kind]:
                seeds[kind].append(result.seed)
    if kinds:
        print("\nviolations by kind")
        for kind, count in kinds.most_common():
            print(f"  {kind:<28} {count:>4}  seeds {' '.join(map(str, seeds[kind]))}")


async def main(seeds: int, first: int, quiet: bool, intensity: str, cross_day: bool) -> None:
    results: list[ScheduleResult] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(first, first + seeds):
            with fresh_postgres(POSTGRES_URL) as ledger_url:
                result = await run_schedule(seed, ledger_url, Path(workdir), intensity, cross_day)
            results.append(result)
            if quiet:
                print(f"seed {seed}: {'PASS' if result.passed else 'FAIL'} in {result.seconds:.1f}s; "
                      f"{result.injected_summary()}; {len(result.violations)} violations", flush=True)
                for violation in result.violations:
                    print(f"  VIOLATION {violation}", flush=True)
            else:
                print(result.describe(), flush=True)
    report(results)
    print(f"\n{time.monotonic() - began:.0f}s for {len(results)} schedules")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="how many schedules")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--intensity", choices=sorted(INTENSITIES), default="standard",
                        help="standard: the faults issue 12 asks for; harsh: more of them, and earlier kills")
    parser.add_argument("--cross-day", action="store_true",
                        help="conversations cv0..cv3 go on into day 2 (order then depends on the runs of both days)")
    parser.add_argument("--quiet", action="store_true", help="one line per schedule (and its violations)")
    args = parser.parse_args()
    logging.getLogger("uvicorn.error").addFilter(_NoDroppedConnections())
    asyncio.run(main(args.seeds, args.start, args.quiet, args.intensity, args.cross_day))
