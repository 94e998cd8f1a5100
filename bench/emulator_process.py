"""The emulator as a process of its own, as benchmarks need it: the figures are not shared with its GIL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx


def start_emulator(*flags: str) -> tuple[subprocess.Popen, str]:
    """`amojo-etl emulator` on a free loopback port with these flags; returns the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = Path(sys.executable).parent / "amojo-etl"
    process = subprocess.Popen([str(cli), "emulator", "--port", str(port), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/_emulator/faults", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the emulator did not start")


def emulator_view(url: str) -> tuple[int, float, Counter]:
    """Messages held, new_message answers per second between the first and the last, requests by endpoint."""
    state = httpx.get(f"{url}/_emulator/state", timeout=60).json()
    held = sum(len(messages) for messages in state["messages"].values())
    log = httpx.get(f"{url}/_emulator/requests", params={"endpoint": "message"}, timeout=60).json()
    times = [entry[0] for entry in log if entry[3] == 200]
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return held, rate, Counter(state["request_counts"])
