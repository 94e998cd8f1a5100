"""Extract: read one data interval from the source database into dataframes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from prefect import task
from prefect.cache_policies import NO_CACHE

from etl.settings import Settings
from etl.source import SourceFrames, read_source


@task(name="extract", task_run_name="extract-{label}", cache_policy=NO_CACHE)
def extract_task(settings: Settings, start: datetime, end: datetime, label: str) -> SourceFrames:
    """Messages of [start, end) with their conversations, clients and managers."""
    return read_source(settings.source_url, settings.mapping, start, end, ZoneInfo(settings.source_timezone))
