"""The URLs amoCRM downloads media from: `s3://bucket/key` presigned, and each URL asked once what it answers.

amoCRM fetches a message's media from its URL itself, possibly later than the import, so a URL must answer from
outside, for long enough. A probe is one HEAD request (a ranged GET for servers that refuse HEAD), bounded in time
and in how many run at once, and remembered per URL for the run: it gives the file's size where the source has
none, and tells a URL that does not answer.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .errors import ConfigurationError

S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f\x7f]+)$")
"""`s3://bucket/key`, the bucket as S3 names them, the key taken literally."""
MEDIA_URL = re.compile(r"^(?:https?://\S+|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/[^\x00-\x1f\x7f]+)$")
"""A media URL we can give amoCRM: http(s), or `s3://bucket/key` (presigned when sent)."""
MAX_PRESIGN_S = 604_800
"""The longest a SigV4 presigned URL is valid: seven days."""
NO_HEAD = (405, 501)
FOR_NOW = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers about the moment, not the file: the URL is asked again by a later run."""
"""Answers of a server that does not take HEAD: asked again with a ranged GET."""


@dataclass(frozen=True)
class Probe:
    """What a media URL answered: whether it serves the file, its size when it said, and why not when it does not."""

    ok: bool
    size: int | None = None
    why: str = ""
    lasting: bool = True
    """A failure that says something about the file (404, a URL no client can address), not about the moment (a
    timeout, a dropped connection, 408, 425, 429, 5xx): only a lasting one is the source's to fix."""


def shown_url(url: str) -> str:
    """The URL as it may be shown in logs, rejects and summaries: without its query (a presigned URL's signature,
    a token) or any user and password."""
    if S3_URL.match(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # an unparsable host or port: where its secrets end cannot be told, so none of it is shown
        return url.split(":", 1)[0] + "://… (not a valid URL)"
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


def url_file_name(url: str) -> str | None:
    """The file name a media URL gives: the last part of its path, percent-decoded, without its query (a presigned
    URL's `?X-Amz-…`) or fragment; of an `s3://` URL, the key's last part as it is. None when the path ends in /."""
    match = S3_URL.match(url)
    if match:
        tail = match["key"].rsplit("/", 1)[-1]
    else:
        try:
            path = urlsplit(url).path
        except ValueError:  # an unparsable host ([::1): amoCRM cannot fetch it either, and it has no name to give
            return None
        tail = unquote(path.rsplit("/", 1)[-1], errors="replace")
    tail = "".join(ch for ch in tail if ch.isprintable()).strip()
    return tail or None


class MediaLinks:
    """One run's media URLs: `s3://` ones presigned (credentials from the standard AWS environment and config
    files), every URL probed at most once, `concurrency` probes at a time, each within `timeout_s`."""

    def __init__(self, expiry_s: int = MAX_PRESIGN_S, timeout_s: float = 10.0, concurrency: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.expiry_s, self.timeout_s = expiry_s, timeout_s
        self._limit = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, transport=transport)
        self._probes: dict[str, asyncio.Future[Probe]] = {}
        self._presigned: dict[tuple[str, str], str] = {}
        self._s3: dict[str, Any] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> MediaLinks:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def fetch_url(self, url: str) -> str:
        """The URL amoCRM is given: an `s3://` one presigned for GET for `expiry_s` seconds, any other as it is."""
        return self._presign(url, "get_object") if S3_URL.match(url) else url

    async def probe(self, url: str) -> Probe:
        """What `url` answers; asked once per run (later calls, and calls while it is asked, share the answer)."""
        if url not in self._probes:
            self._probes[url] = asyncio.ensure_future(self._ask(url))
        return await asyncio.shield(self._probes[url])

    async def _ask(self, url: str) -> Probe:
        target = self._presign(url, "head_object") if S3_URL.match(url) else url
        try:
            urlsplit(target).port  # noqa: B018 - a port out of range is a URL no client can send to, for good
        except ValueError:
            return Probe(False, why="no answer (InvalidURL)")
        async with self._limit:
            try:
                answer = await self._http.head(target)
                if answer.status_code in NO_HEAD and not S3_URL.match(url):
                    async with self._http.stream("GET", target, headers={"Range": "bytes=0-0"}) as answer:
                        pass  # the status and headers are enough; the body is never read
            except httpx.TimeoutException:
                return Probe(False, why=f"no answer within {self.timeout_s:g} s", lasting=False)
            except httpx.TransportError as exc:  # a refused or dropped connection: may answer next time
                return Probe(False, why=f"no answer ({type(exc).__name__})", lasting=False)  # its text may hold the URL
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: a host or port no client can address
                return Probe(False, why=f"no answer ({type(exc).__name__})")
        if not answer.is_success:
            return Probe(False, why=f"HTTP {answer.status_code}", lasting=answer.status_code not in FOR_NOW)
        return Probe(True, _size(answer))

    def _presign(self, url: str, operation: str) -> str:
        if (url, operation) not in self._presigned:
            match = S3_URL.match(url)
            assert match is not None
            # The bucket's own regional host (a global one redirects outside us-east-1); a bucket with dots in
            # its name in the path, where TLS still matches the host.
            style = "path" if "." in match["bucket"] else "virtual"
            self._presigned[url, operation] = self._s3_client(style).generate_presigned_url(
                operation, Params={"Bucket": match["bucket"], "Key": match["key"]}, ExpiresIn=self.expiry_s)
        return self._presigned[url, operation]

    def _s3_client(self, style: str) -> Any:
        """An S3 client for presigning (no request is made): AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or
        AWS_PROFILE and ~/.aws; the bucket's region from AWS_DEFAULT_REGION, AWS_REGION or the profile; another
        S3 service (MinIO, ...) from AWS_ENDPOINT_URL_S3, addressed as botocore decides for it."""
        if style not in self._s3:
            import botocore.session
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError

            try:
                session = botocore.session.get_session()
                region = session.get_config_variable("region") or os.environ.get("AWS_REGION")
                custom = session.get_config_variable("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
                config = Config(signature_version="s3v4", s3=None if custom else {"addressing_style": style})
                client = session.create_client("s3", region_name=region, config=config)
                credentials = session.get_credentials()
            except BotoCoreError as exc:
                raise ConfigurationError(f"s3:// media URLs cannot be presigned: {exc}; check the AWS settings "
                                         "(AWS_PROFILE, ~/.aws/config)") from None
            if credentials is None:
                raise ConfigurationError(
                    "s3:// media URLs are presigned with AWS credentials, and none were found: set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (see README, Media)")
            self._s3[style] = client
        return self._s3[style]


def _size(answer: httpx.Response) -> int | None:
    """The file's size an answer gives: the total of a Content-Range (a ranged GET), else its Content-Length."""
    content_range = answer.headers.get("content-range", "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = answer.headers.get("content-length", "")
    whole = answer.request.method == "HEAD" or answer.status_code == 200  # a 200 to a ranged GET sends it all
    return int(length) if length.isdigit() and whole else None
