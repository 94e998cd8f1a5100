"""Extract: the next chunk of one data interval from the source database, as dataframes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from etl.source import SourceFrames, SourceStream, read_unplaced


@task(name="extract", task_run_name="extract-{label}", cache_policy=NO_CACHE)
def extract_task(stream: SourceStream, label: str) -> SourceFrames | None:
    """The next chunk of messages with their conversations, clients and managers; None after the last."""
    return stream.next_chunk()


@task(name="extract-unplaced", cache_policy=NO_CACHE)
def extract_unplaced_task(source_url: str, mapping: Path | None) -> pd.DataFrame | None:
    """The source's messages no interval can select (no readable created_at); None if the mapping cannot say."""
    return read_unplaced(source_url, mapping)
