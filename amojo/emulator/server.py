"""Running the emulator: in a background thread on a free loopback port (tests, demo) or in the foreground."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from .app import Emulator
from .config import EmulatorConfig


@dataclass
class RunningEmulator:
    """A started emulator: its URL, its `Emulator` (state, faults, clock) and how to stop it."""

    url: str
    emulator: Emulator
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.emulator.store.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server(emulator: Emulator) -> uvicorn.Server:
    config = uvicorn.Config(
        emulator.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
    )
    return uvicorn.Server(config)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket whose connections answer without Nagle's delay.

    proto IPPROTO_TCP: asyncio turns Nagle off on accepted connections only for a socket that says it is TCP
    (uvicorn's own and a plain socket() say proto 0); with Nagle on, every answer written in two parts waits out
    the client's delayed ACK, ~40 ms a request on a keep-alive connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def start(config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    """Start an emulator in a daemon thread and return once it accepts connections."""
    emulator = Emulator(config)
    sock = _listening_socket(host, port)
    port = sock.getsockname()[1]
    server = _server(emulator)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True,
                              name=f"amojo-emulator-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        time.sleep(0.01)
    return RunningEmulator(f"http://{host}:{port}", emulator, server, thread)


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until interrupted."""
    emulator = Emulator(config)
    sock = _listening_socket(host, port)
    server = uvicorn.Server(
        uvicorn.Config(emulator.app, host=host, port=port, log_level="info", access_log=False, lifespan="off")
    )
    server.run(sockets=[sock])
