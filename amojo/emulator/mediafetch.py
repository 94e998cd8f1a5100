"""Media fetched as amoCRM fetches it: the media URL of a message it accepts is downloaded in the background, a
few at a time, and those that fail are kept, so that a rehearsal shows the links that will not work. Off unless
`fetch_media` is set (a rehearsal without internet would otherwise record every link as failed)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .config import EmulatorConfig


class MediaFetcher:
    """The background downloads of one emulated account, and what came of them."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._limit: asyncio.Semaphore | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.fetched = 0
        self.failures: list[dict[str, str]] = []

    def fetch(self, msgid: str, chat_id: str, message: dict[str, Any]) -> None:
        """Download the message's media in the background, if it has any and fetching is on."""
        url = message.get("media")
        if not self.config.fetch_media or not isinstance(url, str) or not url:
            return
        if self._limit is None:  # made in the server's loop, at its first use
            self._limit = asyncio.Semaphore(self.config.fetch_media_concurrency)
        task = asyncio.get_running_loop().create_task(self._download(msgid, chat_id, url))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _download(self, msgid: str, chat_id: str, url: str) -> None:
        assert self._limit is not None
        async with self._limit:
            why = await _download(url, self.config.fetch_media_timeout_s)
        if why is None:
            self.fetched += 1
        else:
            self.failures.append({"msgid": msgid, "chat_id": chat_id, "url": url, "why": why})

    def reset(self) -> None:
        """Forget what was fetched (downloads under way still finish and count)."""
        self.fetched = 0
        self.failures.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": self.config.fetch_media, "fetched": self.fetched, "failed": len(self.failures),
                "pending": len(self._pending), "failures": list(self.failures)}


async def _download(url: str, timeout_s: float) -> str | None:
    """Why `url` could not be downloaded whole within `timeout_s`, or None when it was (the body is discarded)."""
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(follow_redirects=True) as http, \
                http.stream("GET", url) as answer:
            if not answer.is_success:
                return f"HTTP {answer.status_code}"
            async for _ in answer.aiter_raw():
                pass
    except TimeoutError:
        return f"not downloaded within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})"
    return None
