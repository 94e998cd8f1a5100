"""How many signed new_message requests per second the emulator sustains on loopback.

Runs the emulator as its own process (as `amojo-etl emulator` does), once in memory and once with a SQLite state
file, and drives it with the project's own signed client at a fixed concurrency.

    ./uvw run python bench/emulator_throughput.py [--messages 6000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator_process import start_emulator  # noqa: E402

from amojo.chats import ChatsClient  # noqa: E402
from amojo.emulator.config import DEMO_ACCOUNT_ID, DEMO_CHANNEL_ID, DEMO_CHANNEL_SECRET  # noqa: E402


async def drive(url: str, messages: int, concurrency: int, chats: int = 100) -> float:
    async with ChatsClient(url, DEMO_CHANNEL_ID, DEMO_CHANNEL_SECRET, max_connections=concurrency) as client:
        await client.connect(DEMO_ACCOUNT_ID)
        for i in range(chats):
            await client.create_chat({"conversation_id": f"b-{i}", "user": {"id": f"u-{i}", "name": "Client"}})
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(messages):
            queue.put_nowait(n)

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                chat = n % chats
                await client.new_message({
                    "timestamp": 1_700_000_000 + n, "msec_timestamp": (1_700_000_000 + n) * 1000,
                    "msgid": f"b-{n}", "conversation_id": f"b-{chat}", "silent": True,
                    "sender": {"id": f"u-{chat}", "name": "Client"},
                    "message": {"type": "text", "text": f"Сообщение номер {n}"},
                })

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return messages / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"emulator: {args.messages} signed new_message requests, concurrency {args.concurrency}, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as workdir:
        for label, state in (("in memory", None), ("SQLite file", f"{workdir}/state.db")):
            process, url = start_emulator(*(["--state", state] if state else []))
            try:
                rate = asyncio.run(drive(url, args.messages, args.concurrency))
            finally:
                process.terminate()
                process.wait(10)
            print(f"  {label:12} {rate:8.0f} messages/s")


if __name__ == "__main__":
    main()
