"""A file server for the media tests: GET and HEAD of /files/<name> answer with the file, any other path 404, and
/no-head/<name> refuses HEAD (405) as some servers do, and /status/<code>/<name> answers that status (a CDN's 503).
It counts the requests it gets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class MediaServer:
    url: str
    files: dict[str, bytes]
    requests: Counter = field(default_factory=Counter)  # (method, path) -> count


@contextmanager
def media_server(files: dict[str, bytes]) -> Iterator[MediaServer]:
    """Serve `files` on a free loopback port until the block ends."""
    server = MediaServer("", files)

    async def serve_file(request: Request) -> Response:
        server.requests[request.method, request.url.path] += 1
        if "code" in request.path_params:
            return Response(status_code=request.path_params["code"])
        body = files.get(request.path_params["name"])
        if body is None:
            return Response(status_code=404)
        if request.url.path.startswith("/no-head/") and request.method == "HEAD":
            return Response(status_code=405)
        if request.headers.get("range") == "bytes=0-0":
            return Response(body[:1], status_code=206, headers={"Content-Range": f"bytes 0-0/{len(body)}"})
        return Response(body, headers={"Content-Length": str(len(body))})

    app = Starlette(routes=[Route("/files/{name}", serve_file, methods=["GET", "HEAD"]),
                            Route("/no-head/{name}", serve_file, methods=["GET", "HEAD"]),
                            Route("/status/{code:int}/{name}", serve_file, methods=["GET", "HEAD"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the media server did not start"
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
