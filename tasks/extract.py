"""Extract: the next chunk of one data interval from the source database, as dataframes."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from etl.source import SourceFrames, SourceStream


@task(name="extract", task_run_name="extract-{label}", cache_policy=NO_CACHE)
def extract_task(stream: SourceStream, label: str) -> SourceFrames | None:
    """The next chunk of messages with their conversations, clients and managers; None after the last."""
    return stream.next_chunk()
