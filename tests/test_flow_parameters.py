"""The Custom run form explains itself: every parameter of every flow has a description, and bounds where it has
them (Prefect builds the form from this schema)."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from flows.audit import audit
from flows.backfill import backfill
from flows.import_chats import import_chats
from flows.reconcile import reconcile


@pytest.mark.parametrize("flow", [import_chats, backfill, reconcile, audit], ids=lambda f: f.name)
def test_every_parameter_is_described(flow):
    properties = parameter_schema(flow.fn).properties
    assert properties and all(len(p.get("description", "")) > 20 for p in properties.values()), properties


def test_the_form_says_what_end_and_empty_dates_mean_and_bounds_the_numbers():
    imports = parameter_schema(import_chats.fn).properties
    assert "exclusive" in imports["end"]["description"] and "scheduled" in imports["start"]["description"]
    backfills = parameter_schema(backfill.fn).properties
    assert (backfills["max_parallel"]["minimum"], backfills["max_parallel"]["maximum"]) == (1, 32)
    lookback = next(option for option in imports["lookback_days"]["anyOf"] if option.get("type") == "integer")
    assert (lookback["minimum"], lookback["maximum"]) == (0, 31)
