"""Media amoCRM can fetch: for a chunk's media messages about to be sent or edited, the URL amoCRM is given (an
`s3://` one presigned), the file's size where the source has none, and, when asked, whether the URL answers.

amoCRM downloads a message's media from its URL itself, possibly later: a URL that does not answer fails silently
after a complete import. The check names such URLs, and a new message with one is rejected (`media_unreachable`)
or sent all the same, as AMOJO_ETL_MEDIA_UNREACHABLE says. It runs between the transform and the ledger's
registering of the chunk, so a rejected message is never registered, as any other reject; a message the ledger
already holds is sent whatever its URL answers. Content digests stay the source's: a presigned URL differs every
run, and a size looked up is not the source's word, so neither makes a message look edited.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from amojo.payloads import MEDIA_TYPES, NEEDS_FILE_META
from etl.ledger import Ledger
from etl.media import S3_URL, MediaLinks, Probe, shown_url
from etl.settings import Settings
from tasks import load as load_stage  # its `plan` function, which shares its name with a module of it
from tasks.transform import Batch, json_lines, source_keys

NAMED = 20
"""Unreachable URLs a run's summary names (each with its message); the rejects list every rejected one."""


@dataclass
class MediaReport:
    """What a run did with media URLs: presigned, sizes found, checked, and the URLs that did not answer."""

    presigned: int = 0
    sizes_found: int = 0
    checked: int = 0
    unreachable: int = 0
    unreachable_urls: list[dict[str, str]] = field(default_factory=list)

    def name(self, message_id: str, url: str, probe: Probe, outcome: str) -> None:
        """Count a message whose URL did not answer, and name the first `NAMED` of them."""
        self.unreachable += 1
        if len(self.unreachable_urls) < NAMED:
            self.unreachable_urls.append({"message_id": message_id, "url": shown_url(url), "why": probe.why,
                                          "outcome": outcome})


def media_links(settings: Settings) -> MediaLinks:
    """A run's media URLs, as the settings bound and presign them."""
    return MediaLinks(settings.media_url_expiry_s, settings.media_timeout_s, settings.media_concurrency)


async def fetchable_media(batch: Batch, ledger: Ledger, links: MediaLinks, report: MediaReport, *,
                          check: bool, reject: bool, presign: bool = True) -> Batch:
    """The batch with its media URLs as amoCRM is given them (`presign`: not in a dry run, which sends nothing and
    shows its payloads: a presigned URL lets whoever holds it read the file), and sizes the source lacked; with
    `check`, each URL asked whether it answers, and the new messages whose URL does not rejected when `reject`
    says so."""
    messages = batch.messages
    media = messages["type"].isin(MEDIA_TYPES) & messages["media_url"].notna()
    if not media.any():
        return batch
    to_send, to_edit, _ = load_stage.plan(Batch(batch.conversations, messages[media], batch.rejects.iloc[0:0]), ledger)
    rows = messages[media & messages["msgid"].isin(set(to_send["msgid"]) | set(to_edit["msgid"]))].copy()
    new = set(to_send.loc[to_send["status"].isna(), "msgid"])
    # Only a message whose body carries file_size needs one (amojo.payloads.message_body).
    unsized = rows["file_size"].isna() & (rows["type"].isin(NEEDS_FILE_META) | rows["file_name"].notna())
    asked = rows if check else rows[unsized]
    urls = list(dict.fromkeys(asked["media_url"]))
    probes = dict(zip(urls, await asyncio.gather(*(links.probe(url) for url in urls)), strict=True))

    sizes = rows.loc[unsized, "media_url"].map(lambda url: probes[url].size)
    rows.loc[sizes.index, "file_size"] = sizes.astype("Int64")
    report.sizes_found += int(sizes.notna().sum())
    failing = pd.Series(False, index=rows.index)
    if check:
        report.checked += len(rows)
        failing = rows["media_url"].map(lambda url: not probes[url].ok).astype(bool)
    rejected = failing & rows["msgid"].isin(new) & reject
    for message in rows[failing].itertuples():
        report.name(message.source_id, message.media_url, probes[message.media_url],
                    "rejected" if rejected[message.Index] else "sent")
    rejects = pd.concat([batch.rejects, _rejects(rows[rejected], probes)], ignore_index=True) \
        if rejected.any() else batch.rejects
    if presign:
        s3 = rows["media_url"].str.match(S3_URL.pattern)
        rows.loc[s3, "media_url"] = rows.loc[s3, "media_url"].map(links.fetch_url)
        report.presigned += int(s3.sum())

    messages = messages.copy()
    for column in ("media_url", "file_size"):  # by position: pandas cannot align a part of an Int64 column
        messages.loc[rows.index, column] = rows[column].array
    messages = messages.drop(index=rejected[rejected].index).reset_index(drop=True)
    return Batch(batch.conversations, messages, rejects, batch.warnings)


def _rejects(rows: pd.DataFrame, probes: dict[str, Probe]) -> pd.DataFrame:
    """The rejects of messages whose media URL did not answer, keyed as their source rows."""
    shown = load_stage.source_rows(rows)
    return pd.DataFrame({
        "source_key": source_keys(rows["source_id"], rows["msec"], None, shown),
        "reason": ["media_unreachable" if probes[url].lasting else "media_no_answer" for url in rows["media_url"]],
        "detail": [f"amoCRM downloads media from its URL, and {shown_url(url)} did not answer "
                   f"({probes[url].why}): fix the URL at the source, or set AMOJO_ETL_MEDIA_UNREACHABLE=send"
                   if probes[url].lasting else
                   f"amoCRM downloads media from its URL, and {shown_url(url)} did not answer for now "
                   f"({probes[url].why}): held back, its day stays incomplete, and a later run asks again"
                   for url in rows["media_url"]],
        "row": json_lines(shown),
    })


@task(name="media", task_run_name="media-{label}", cache_policy=NO_CACHE)
async def media_task(batch: Batch, ledger: Ledger, links: MediaLinks, report: MediaReport, check: bool,
                     reject: bool, presign: bool, label: str) -> Batch:
    """`fetchable_media` as a Prefect task: one chunk of the interval named by `label`."""
    return await fetchable_media(batch, ledger, links, report, check=check, reject=reject, presign=presign)
