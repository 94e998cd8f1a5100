"""An interval as the source holds it: its chunks extracted and transformed, the managers they name, its digest,
and which days an import would change. The import, its look-back, a backfill and an audit all read days this way.
"""

from __future__ import annotations

from collections.abc import Iterator

from prefect import get_run_logger
from prefect.runtime import flow_run

from etl.api import rest_client
from etl.intervals import Interval
from etl.ledger import Ledger
from etl.settings import Settings
from etl.source import SourceFrames, SourceStream, open_source
from tasks.extract import extract_task
from tasks.load import resolve_senders_task
from tasks.report import RunTotals
from tasks.transform import Batch, SeenIds, Senders, transform_task


def transformed_chunks(source: SourceStream, settings: Settings, senders: Senders,
                       label: str) -> Iterator[tuple[SourceFrames, Batch]]:
    """The interval's chunks in time order, each as the source gave it and as transformed: the one loop of the
    import, the dry run, the look-back and the audit."""
    seen = SeenIds(source.repeated_ids())
    while (frames := extract_task(source, label=f"{label}#{source.chunks + 1}")) is not None:
        yield frames, transform_task(frames, senders, settings.id_prefix, settings.source_timezone, seen,
                                     settings.text_limit, label=f"{label}#{source.chunks}")


def open_interval(settings: Settings, interval: Interval) -> SourceStream:
    """The source's rows of `interval`, read a chunk at a time. Columns of the mapping's queries that no stage
    reads are named in one warning per flow run, however many days and chunks it reads."""
    source = open_source(settings.source_url, settings.mapping, interval.start, interval.end, settings.source_zone,
                         settings.chunk_size, settings.mapping_parameters)
    if source.unknown_columns is not None and flow_run.get_id() not in _WARNED_RUNS:
        _WARNED_RUNS.add(flow_run.get_id())
        get_run_logger().warning(source.unknown_columns)
    return source


_WARNED_RUNS: set[str | None] = set()
"""The flow runs (ids) that have named the mapping's unknown columns already."""


async def read_senders(settings: Settings, ledger: Ledger) -> Senders:
    """Managers by email, read with a REST client of its own (runs that send nothing open no Chats API client)."""
    rest = rest_client(settings, ledger)
    try:
        return await resolve_senders_task(rest, settings.bot_id)
    finally:
        if rest is not None:
            await rest.aclose()


async def days_to_revisit(settings: Settings, days: list[Interval]) -> dict[str, str]:
    """The days (label -> why) that an import would change: never imported as that interval (`new`), not complete
    (their status), or whose source rows differ from those recorded (`changed`: late rows, edits, deletes). A day
    recorded complete with the same rows and digest needs nothing: it costs its source query, no API request."""
    ledger = Ledger(settings.state_url)
    senders = await read_senders(settings, ledger)
    revisit: dict[str, str] = {}
    try:
        for day in days:
            recorded = ledger.intervals.record(day.start.isoformat(), day.end.isoformat())
            if recorded is None:
                revisit[day.label] = "new"
            elif recorded[0] != "complete":
                revisit[day.label] = recorded[0]
            else:
                rows, digest = day_digest(settings, day, senders)
                if (recorded[1].get("source_rows"), recorded[1].get("source_digest")) != (rows, f"{digest:016x}"):
                    revisit[day.label] = "changed"
    finally:
        ledger.close()
    return revisit


def day_digest(settings: Settings, day: Interval, senders: Senders) -> tuple[int, int]:
    """The day's source rows and their digest, as an import of the day records them; reads only the source."""
    source = open_interval(settings, day)
    try:
        totals = RunTotals(day.label)
        for _, batch in transformed_chunks(source, settings, senders, day.label):
            totals.add_source(batch)
        return totals.source_rows, totals.source_digest
    finally:
        source.close()
