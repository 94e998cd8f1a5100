"""backfill and reconcile over date ranges, through Prefect, against the emulator."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest

from flows.backfill import backfill
from flows.import_chats import import_chats
from flows.outcome import summary_of
from flows.reconcile import reconcile

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]



def _landed(emulator) -> Counter:
    return Counter(m["msgid"] for m in emulator.emulator.store.messages())


async def test_backfill_runs_each_day_once_and_resumes(emulator, pipeline_env):
    first = await backfill(start=date(2026, 10, 1), end=date(2026, 10, 4), max_parallel=2)
    assert first["ran"] == 3 and first["verdict"] == "complete"
    resumed = await backfill(start=date(2026, 10, 1), end=date(2026, 10, 8), max_parallel=3)
    assert resumed["ran"] == 4 and resumed["skipped"] == 3  # only the rest
    assert set(resumed["outcomes"]) == {f"2026-10-0{d}..2026-10-0{d + 1}" for d in range(4, 8)}
    again = await backfill(start=date(2026, 10, 1), end=date(2026, 10, 8))
    assert again["ran"] == 0
    before = _landed(emulator)
    everything = await backfill(start=date(2026, 10, 1), end=date(2026, 10, 8), reprocess="all", max_parallel=4)
    assert everything["ran"] == 7 and everything["verdict"] == "complete"
    assert _landed(emulator) == before and set(before.values()) == {1}


async def test_backfill_days_show_each_days_counts_and_a_link_to_its_run(emulator, pipeline_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter

    state = await backfill(start=date(2026, 10, 20), end=date(2026, 10, 22), return_state=True)
    summary = await summary_of(state)
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id={"any_": [state.state_details.flow_run_id]}))
    days = next(a for a in artifacts if a.key.startswith("backfill-days"))
    progress = next(a for a in artifacts if a.key.startswith("backfill-progress"))
    assert days.description.endswith("0 skipped of 2 days")
    assert progress.description.endswith("2 of 2 done · 2 complete")
    sent = {}
    for child in children:
        day = next(line for line in days.data.splitlines() if f"/runs/flow-run/{child.id})" in line)
        sent[day.split(" | ")[0].lstrip("| ")] = int(day.split(" | ")[2])
    assert summary["complete"] == 2 and set(sent) == {"2026-10-20..2026-10-21", "2026-10-21..2026-10-22"}
    assert sum(sent.values()) == len(emulator.emulator.store.messages()) > 0  # each day's own count


async def test_backfill_day_runs_carry_the_tags_of_the_run_that_started_them(emulator, pipeline_env):
    """A deployment's run has its tags on the server, not in the `tags` context the engine gives nested runs: run
    as a worker runs it (a flow run made first, with the deployment's tags), its day runs still carry them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.flow_engine import run_flow_async

    parameters = {"start": date(2026, 10, 24), "end": date(2026, 10, 26)}
    async with get_client() as client:
        parent = await client.create_flow_run(backfill, parameters=backfill.serialize_parameters(parameters),
                                              tags=["amojo-etl", "night-shift"])
        state = await run_flow_async(backfill, flow_run=parent, parameters=parameters, return_type="state")
        assert state.is_completed(), state.message
        children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [parent.id]}))
    assert len(children) == 2
    channel = f"channel:{pipeline_env['AMOJO_ETL_CHANNEL_ID']}"
    assert all({"amojo-etl", "night-shift", channel} <= set(child.tags) for child in children), \
        [child.tags for child in children]


async def test_reconcile_days_description_carries_the_headline(emulator, pipeline_env):
    """The description of `reconcile-days` is what the artifact's history by key shows: a run history, counts
    and verdict."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    day = (date(2026, 10, 13), date(2026, 10, 14))
    await import_chats(start=day[0], end=day[1])
    emulator.emulator.store.drop_message(sorted(_landed(emulator))[0])
    state = await reconcile(start=day[0], end=day[1], return_state=True)
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    days = next(a for a in artifacts if a.key.startswith("reconcile-days"))
    assert days.description == f"Reconcile 2026-10-13..2026-10-14: {state.message}"
    assert " 1 missing · " in days.description and days.description.endswith("incomplete")


async def test_backfill_refuses_bad_ranges_before_it_starts(emulator, pipeline_env):
    from prefect.exceptions import ParameterTypeError

    backwards = await backfill(start=date(2026, 10, 5), end=date(2026, 10, 1), return_state=True)
    assert backwards.is_failed() and "must be after" in backwards.message
    future = await backfill(start=date(2099, 1, 1), end=date(2099, 1, 3), return_state=True)
    assert future.is_failed() and "future" in future.message
    with pytest.raises(ParameterTypeError):
        await backfill(start=date(2026, 10, 1), end=date(2026, 10, 2), max_parallel=0)


async def test_reconcile_finds_a_lost_message_and_repair_sends_it_once(emulator, pipeline_env):
    day = (date(2026, 10, 10), date(2026, 10, 11))
    imported = await import_chats(start=day[0], end=day[1])
    assert imported["messages_sent"] > 0
    lost = sorted(_landed(emulator))[0]
    emulator.emulator.store.drop_message(lost)
    state = await reconcile(start=day[0], end=day[1], return_state=True)
    assert state.is_failed() and state.name == "Incomplete" and "1 missing" in state.message
    found = await summary_of(state)
    assert found["verdict"] == "incomplete" and found["missing"] == 1
    repaired = await reconcile(start=day[0], end=day[1], repair=True)
    assert repaired["repaired"] == 1 and repaired["verdict"] == "complete"
    landed = _landed(emulator)
    assert landed[lost] == 1 and set(landed.values()) == {1}


async def test_repair_edits_a_message_whose_text_in_amocrm_is_not_the_sources(emulator, pipeline_env):
    day = (date(2026, 10, 11), date(2026, 10, 12))
    await import_chats(start=day[0], end=day[1])
    store = emulator.emulator.store
    changed = next(m for m in store.messages() if m["message"].get("type") == "text")
    source_text = changed["message"]["text"]
    store.edit_message(changed["id"], {"text": "changed in amoCRM"})
    found = await summary_of(await reconcile(start=day[0], end=day[1], return_state=True))
    assert found["verdict"] == "incomplete" and found["by_day"][0]["mismatched"] == 1
    repaired = await reconcile(start=day[0], end=day[1], repair=True)
    assert repaired["repaired"] == 1 and repaired["verdict"] == "complete"
    assert store.message(changed["id"])["message"]["text"] == source_text
    assert set(_landed(emulator).values()) == {1}


async def test_reconcile_reports_surplus_messages(emulator, pipeline_env):
    from amojo.chats import ChatsClient

    day = (date(2026, 10, 12), date(2026, 10, 13))
    await import_chats(start=day[0], end=day[1])
    chat = emulator.emulator.store.chats()[0]
    config = emulator.emulator.config
    async with ChatsClient(emulator.url, config.channel_id, config.channel_secret) as client:
        await client.connect(config.account_id)
        at = 1_791_800_000  # 2026-10-12 13:33 UTC
        await client.new_message({"timestamp": at, "msec_timestamp": at * 1000, "msgid": "ae-ghost",
                                  "conversation_id": chat["conversation_id"], "silent": True,
                                  "sender": chat["user"], "message": {"type": "text", "text": "not in the source"}})
    found = await reconcile(start=day[0], end=day[1])
    assert found["by_day"][0]["surplus"] == 1
    assert found["verdict"] == "complete"  # surplus is reported, not held against the import
