"""The walking skeleton end to end: the import_chats flow against the emulator over HTTP, through Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import etl_env

from flows.import_chats import import_chats
from flows.outcome import summary_of

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]

MONTH = (date(2026, 10, 1), date(2026, 11, 2))



def _source_counts(url: str) -> tuple[int, set[str]]:
    """The clients, and the ids of what the source holds to send: each message with text or without attachments
    (those without text are rejected), and each attachment as `{message id}#{attachment id}`."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = {row[0] for row in conn.execute(sa.text(
            "SELECT id FROM messages m WHERE text IS NOT NULL OR type <> 'text' "
            "OR NOT EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = m.id)"))}
        ids |= {f"{row[0]}#{row[1]}" for row in conn.execute(sa.text("SELECT message_id, id FROM attachments"))}
        clients = conn.execute(sa.text("SELECT COUNT(DISTINCT client_id) FROM conversations")).scalar()
    engine.dispose()
    return clients, ids


async def test_import_lands_every_valid_message_exactly_once(emulator, pipeline_env):
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    summary = await state.aresult()
    assert summary["verdict"] == "complete", summary
    snapshot = emulator.emulator.snapshot()
    clients, source_ids = _source_counts(pipeline_env["AMOJO_ETL_SOURCE_URL"])

    landed = Counter(m["msgid"] for messages in snapshot["messages"].values() for m in messages)
    assert set(landed.values()) == {1}, "a message landed twice"
    rejected = {f"ae-{json.loads(s['row'])['id']}" for s in summary["reject_samples"]}
    assert set(landed) == {f"ae-{i}" for i in source_ids} - rejected
    assert summary["messages_sent"] == len(landed) == summary["confirmed"]
    assert summary["rejects_by_reason"] == {"empty_text": 2, "unknown_type": 1}

    # The seed's sequence: one chat per conversation, one contact per client, every chat linked before its
    # first message, so amoCRM made no unsorted lead and no notification.
    assert len(snapshot["chats"]) == summary["conversations"]
    assert len(snapshot["contacts"]) == clients
    assert {link["chat_id"] for link in snapshot["links"]} == {chat["id"] for chat in snapshot["chats"]}
    assert snapshot["leads"] == [] and snapshot["notifications"] == []
    assert not any(m["unlinked"] for messages in snapshot["messages"].values() for m in messages)

    users = {u.email: u.amojo_id for u in emulator.emulator.config.users}
    for messages in snapshot["messages"].values():
        assert [m["msec_timestamp"] for m in messages] == sorted(m["msec_timestamp"] for m in messages)
        for m in messages:
            assert m["silent"] is True
            if m["receiver"] is None:  # from the client
                assert "ref_id" not in m["sender"]
            else:  # from a manager: a user's amojo_id, or the bot when amoCRM has none for them
                assert m["sender"]["ref_id"] in set(users.values()) | {emulator.emulator.config.bot_id}
    anna = users["anna@example.com"]
    assert any(m["sender"].get("ref_id") == anna for ms in snapshot["messages"].values() for m in ms)


async def test_second_run_of_the_same_interval_sends_nothing(emulator, pipeline_env):
    first = await (await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)).aresult()
    before = sum(len(ms) for ms in emulator.emulator.snapshot()["messages"].values())
    second = await (await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)).aresult()
    after = sum(len(ms) for ms in emulator.emulator.snapshot()["messages"].values())
    assert second["messages_sent"] == 0
    assert second["messages_skipped"] == first["messages_sent"]
    assert second["chats_created"] == second["contacts_created"] == 0
    assert before == after
    assert second["verdict"] == "complete"


async def test_wrong_channel_secret_fails_fast_without_retries(emulator, pipeline_env, monkeypatch):
    monkeypatch.setenv("AMOJO_ETL_CHANNEL_SECRET", "0" * 40)
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    assert state.is_failed()
    assert "channel secret" in state.message and "clock" in state.message
    assert "0" * 40 not in state.message
    counts = emulator.emulator.request_counts()
    assert counts == {"rest account 200": 1, "amojo connect 403": 1}  # no retry loop, nothing else sent


async def test_a_run_that_lost_its_claims_leaves_the_intervals_status_to_the_run_that_took_over(
        emulator, pipeline_env, monkeypatch):
    import tasks.load.loader
    from etl.claims import ClaimLost
    from etl.ledger import Ledger

    day = (date(2026, 10, 3), date(2026, 10, 4))
    assert (await import_chats(start=day[0], end=day[1]))["verdict"] == "complete"
    ledger_url = pipeline_env["AMOJO_ETL_STATE_URL"]
    taken_over = True

    async def stalled(*args, **kwargs):
        if taken_over:  # meanwhile another run took the interval over, and holds it
            engine = sa.create_engine(ledger_url)
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE claims SET holder = 'another-run', expires_at = 4e9 "
                                     "WHERE kind = 'interval'"))
            engine.dispose()
        raise ClaimLost("this run's claims expired")

    monkeypatch.setattr(tasks.load.loader, "load", stalled)
    state = await import_chats(start=day[0], end=day[1], return_state=True)
    assert state.is_failed() and "claims" in state.message
    ledger = Ledger(ledger_url)
    assert set(ledger.intervals.statuses().values()) == {"complete"}  # not overwritten with `failed`
    ledger.leases.release("another-run")

    taken_over = False  # nobody took it over: the lease lapsed (the ledger did not answer), the day failed
    state = await import_chats(start=day[0], end=day[1], return_state=True)
    assert state.is_failed() and set(ledger.intervals.statuses().values()) == {"failed"}
    ledger.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    full_env.pop("PREFECT_API_URL", None)  # the CLI runs as a user would: its own temporary server
    return subprocess.run([str(Path(sys.executable).parent / "amojo-etl"), *args],
                          env=full_env, capture_output=True, text=True, timeout=300)


def test_cli_import_with_another_secret_exits_2_with_the_signature_message(emulator, pipeline_env):
    result = _cli({**pipeline_env, "AMOJO_ETL_CHANNEL_SECRET": "f" * 40},
                  "import", "--start", "2026-10-01", "--end", "2026-10-02")
    assert result.returncode == 2, result.stderr  # a wrong setting (issue 14): found before Prefect starts
    assert "rejected the request signature" in result.stderr
    assert "AMOJO_ETL_CHANNEL_SECRET" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "f" * 40 not in result.stderr + result.stdout


def test_a_cli_run_on_a_server_carries_the_tags_that_tell_it_apart(emulator, pipeline_env):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **pipeline_env, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run([str(Path(sys.executable).parent / "amojo-etl"), "import", "--start", "2026-10-01",
                             "--end", "2026-10-02"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "running on the Prefect server at" in result.stdout + result.stderr
    channel = f"channel:{pipeline_env['AMOJO_ETL_CHANNEL_ID']}"

    async def tagged() -> list:
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["amojo-etl", "cli", channel])))
    runs = asyncio.run(tagged())
    assert [run.name for run in runs] == ["import-2026-10-01..2026-10-02"]


def test_cli_missing_setting_exits_2_naming_it(pipeline_env, monkeypatch):
    env = {k: v for k, v in pipeline_env.items() if k != "AMOJO_ETL_AMOCRM_TOKEN"}
    monkeypatch.delenv("AMOJO_ETL_AMOCRM_TOKEN")
    result = _cli(env, "import", "--start", "2026-10-01", "--end", "2026-10-02")
    assert result.returncode == 2
    assert "AMOJO_ETL_AMOCRM_TOKEN" in result.stderr


def test_cli_end_before_start_is_a_usage_error(pipeline_env):
    result = _cli(pipeline_env, "import", "--start", "2026-10-02", "--end", "2026-10-01")
    assert result.returncode == 2
    assert "--end" in result.stderr and "exclusive" in result.stderr


async def test_task_runs_grow_with_chunks_not_messages(emulator, pipeline_env, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    monkeypatch.setenv("AMOJO_ETL_CHUNK_SIZE", "100")
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    summary = await state.aresult()
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    stages = Counter(run.name.split("-")[0] for run in runs)
    chunks = summary["chunks"]
    assert summary["verdict"] == "complete"
    assert chunks == -(-(summary["messages_valid"] + summary["rejected"]) // 100)  # every source row, 100 a chunk
    # extract runs once more than there are chunks: the last one finds the interval exhausted
    assert stages == {"extract": chunks + 1, "transform": chunks, "media": chunks, "load": chunks, "resolve": 1,
                      "reconcile": 1, "publish": 1}


async def test_a_message_edited_in_the_source_goes_out_as_edit_message(emulator, pipeline_env):
    await import_chats(start=MONTH[0], end=MONTH[1])
    engine = sa.create_engine(pipeline_env["AMOJO_ETL_SOURCE_URL"])
    with engine.begin() as conn:
        message_id = conn.execute(sa.text("SELECT id FROM messages WHERE type = 'text' AND text IS NOT NULL "
                                          "AND TRIM(text) <> '' ORDER BY id LIMIT 1")).scalar()
        conn.execute(sa.text("UPDATE messages SET text = 'исправлено', updated_at = '2026-11-15 10:00:00' "
                             "WHERE id = :id"), {"id": message_id})
    engine.dispose()
    summary = await import_chats(start=date(2026, 11, 15), end=date(2026, 11, 16))
    assert summary["messages_edited"] == 1 and summary["messages_sent"] == 0
    stored = [m for ms in emulator.emulator.snapshot()["messages"].values() for m in ms
              if m["msgid"] == f"ae-{message_id}"]
    assert len(stored) == 1 and stored[0]["message"]["text"] == "исправлено"
    again = await import_chats(start=date(2026, 11, 15), end=date(2026, 11, 16))
    assert again["messages_edited"] == 0  # the ledger knows the new content now


async def test_rejected_rows_are_kept_and_shown(emulator, pipeline_env, tmp_path):
    summary = await import_chats(start=MONTH[0], end=MONTH[1])
    out = tmp_path / "rejects.csv"
    result = _cli(pipeline_env, "rejects", "--csv", str(out))
    assert result.returncode == 0, result.stderr
    import pandas as pd

    rows = pd.read_csv(out)
    assert len(rows) == summary["rejected"] == 3
    assert rows["reason"].value_counts().to_dict() == summary["rejects_by_reason"]
    assert rows["row"].str.contains('"conversation_id"').all()  # the source row itself, to fix at the source
    shown = _cli(pipeline_env, "rejects", "--reason", "unknown_type")
    assert "unknown_type" in shown.stdout and "empty_text" not in shown.stdout


@pytest.mark.parametrize("duplicate_msgid, ledger", [("idempotent", "sqlite"), ("reject", "sqlite"),
                                                     ("reject", "postgres")])
async def test_exactly_once_through_faults_of_every_kind(emulator_config, duplicate_msgid, ledger, tmp_path,
                                                         monkeypatch, request):
    """10% of answers fail — 500, 502, 503, 429, lost after the message was stored, hangs past the client's
    timeout — and still every valid message lands exactly once, under both readings of a repeated msgid."""
    from amojo.emulator.config import Faults
    from amojo.emulator.server import start
    from etl.sample import SampleSize, write_sample

    emulator_config.duplicate_msgid = duplicate_msgid
    emulator_config.faults = Faults(seed=11, error_rates={500: 0.02, 502: 0.02, 503: 0.02, 429: 0.01},
                                    lost_answer_rate=0.02, hang_rate=0.01, hang_seconds=1.5, history_lag_ms=200)
    source = tmp_path / "source.db"
    write_sample(f"sqlite:///{source}", size=SampleSize(messages=450, conversations=30, clients=15))
    with start(emulator_config) as running:
        ledger_url = f"sqlite:///{tmp_path / 'l.db'}" if ledger == "sqlite" else request.getfixturevalue("postgres_url")
        for key, value in {**etl_env(running, f"sqlite:///{source}", ledger_url), "AMOJO_ETL_TIMEOUT_S": "0.5"}.items():
            monkeypatch.setenv(key, value)
        summary = await import_chats(start=MONTH[0], end=MONTH[1])
        snapshot = running.emulator.snapshot()
        counts = running.emulator.request_counts()
    landed = Counter(m["msgid"] for messages in snapshot["messages"].values() for m in messages)
    assert summary["verdict"] == "complete", summary
    assert set(landed.values()) == {1}
    assert len(landed) == summary["messages_valid"] == summary["confirmed"]
    assert snapshot["leads"] == [] and snapshot["notifications"] == []
    faults = sum(n for key, n in counts.items() if key.split()[-1] in ("500", "502", "503", "429", "504", "0"))
    assert faults > 10, counts  # the faults really happened


@pytest.mark.postgres
async def test_ledger_in_postgres(emulator, pipeline_env, postgres_url, monkeypatch):
    monkeypatch.setenv("AMOJO_ETL_STATE_URL", postgres_url)
    first = await import_chats(start=MONTH[0], end=MONTH[1])
    second = await import_chats(start=MONTH[0], end=MONTH[1])
    assert first["verdict"] == second["verdict"] == "complete"
    assert first["messages_sent"] > 0 and second["messages_sent"] == 0
    landed = Counter(m["msgid"] for ms in emulator.emulator.snapshot()["messages"].values() for m in ms)
    assert set(landed.values()) == {1} and len(landed) == first["messages_valid"]


async def test_no_secret_in_logs_summary_or_artifacts(emulator, pipeline_env, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    secrets = [pipeline_env["AMOJO_ETL_CHANNEL_SECRET"], pipeline_env["AMOJO_ETL_AMOCRM_TOKEN"]]
    caplog.set_level("DEBUG")
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    summary = await state.aresult()
    async with get_client() as client:
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    from tasks.report import artifact_key

    assert {a.key for a in artifacts} >= {artifact_key(k) for k in ("import-summary", "import-rejects",
                                                                    "import-verdict", "import-progress")}
    assert next(a for a in artifacts if a.key == artifact_key("import-progress")).data == 100.0
    seen = caplog.text + json.dumps(summary, default=str) + "".join(str(a.data) for a in artifacts)
    for secret in secrets:
        assert secret not in seen


async def test_dry_run_sends_nothing_and_says_what_it_would(emulator, pipeline_env):
    dry = await import_chats(start=MONTH[0], end=MONTH[1], dry_run=True)
    assert not any(key.startswith("amojo") for key in emulator.emulator.request_counts())  # no Chats API call
    assert emulator.emulator.store.messages() == [] and emulator.emulator.store.contacts() == []
    assert dry["plan"]["messages_to_send"] == dry["messages_valid"] > 0
    assert dry["plan"]["chats_to_create"] == dry["conversations"]
    samples = dry["plan"]["sample_payloads"]
    assert "create_chat" in samples[0] and samples[1]["new_message"]["silent"] is True
    await import_chats(start=MONTH[0], end=MONTH[1])
    after = await import_chats(start=MONTH[0], end=MONTH[1], dry_run=True)
    assert after["plan"]["messages_to_send"] == 0 and after["plan"]["chats_to_create"] == 0


async def test_oauth_pairs_rotate_through_the_ledger(emulator_config, tmp_path, monkeypatch):
    """Access tokens expire mid-run; each single-use refresh token is spent once, and the pair that comes back
    is in the ledger before it is used, so the next run carries on where this one left off."""
    from amojo.emulator.server import start
    from etl.ledger import Ledger
    from etl.sample import SampleSize, write_sample

    emulator_config.access_token_ttl_s = 1.0
    write_sample(f"sqlite:///{tmp_path / 's.db'}", size=SampleSize(messages=300, conversations=20, clients=12))
    with start(emulator_config) as running:
        config = running.emulator.config
        env = {**etl_env(running, f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'l.db'}"),
               "AMOJO_ETL_OAUTH_CLIENT_ID": config.oauth_client_id,
               "AMOJO_ETL_OAUTH_CLIENT_SECRET": config.oauth_client_secret,
               "AMOJO_ETL_OAUTH_REDIRECT_URI": "https://example.com/oauth",
               "AMOJO_ETL_OAUTH_REFRESH_TOKEN": config.oauth_refresh_token}
        env.pop("AMOJO_ETL_AMOCRM_TOKEN")  # the OAuth pair instead
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AMOJO_ETL_AMOCRM_TOKEN", raising=False)
        first = await import_chats(start=MONTH[0], end=MONTH[1])
        assert first["verdict"] == "complete"
        counts = running.emulator.request_counts()
        assert counts.get("rest oauth 200", 0) >= 2  # the first pair, then at least one refresh on expiry
        assert "rest oauth 400" not in counts  # never a spent token
        ledger = Ledger(env["AMOJO_ETL_STATE_URL"])
        _, refresh, _ = ledger.account.oauth_pair(running.url)
        ledger.close()
        assert refresh != config.oauth_refresh_token
        assert running.emulator.store.token_state(config.oauth_refresh_token) == ("refresh", False)  # spent
        second = await import_chats(start=MONTH[0], end=MONTH[1])  # the env still names the spent token
        assert second["verdict"] == "complete" and second["messages_sent"] == 0


async def test_ambiguous_contact_quarantines_until_resolved(emulator, pipeline_env):
    import httpx

    engine = sa.create_engine(pipeline_env["AMOJO_ETL_SOURCE_URL"])
    with engine.connect() as conn:
        client_id, phone = conn.execute(sa.text("SELECT id, phone FROM clients WHERE phone IS NOT NULL "
                                                "ORDER BY id LIMIT 1")).one()
        conversations = {f"ae-{c}" for (c,) in conn.execute(
            sa.text("SELECT id FROM conversations WHERE client_id = :c"), {"c": client_id})}
    engine.dispose()
    twins = [{"name": f"Twin {n}", "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": phone}]}]}
             for n in (1, 2)]
    created = httpx.post(f"{emulator.url}/api/v4/contacts", json=twins,
                         headers={"Authorization": f"Bearer {pipeline_env['AMOJO_ETL_AMOCRM_TOKEN']}"}).json()
    first = await summary_of(await import_chats(start=MONTH[0], end=MONTH[1], return_state=True))
    assert set(first["quarantined"]) == conversations and first["verdict"] == "incomplete"
    assert all("ambiguous contact" in reason for reason in first["quarantined"].values())
    held = {chat["conversation_id"] for chat in emulator.emulator.store.chats()
            if emulator.emulator.store.chat_messages(chat["id"])}
    assert not held & conversations  # none of its messages went anywhere
    emulator.emulator.store.drop_contact(created["_embedded"]["contacts"][1]["id"])  # a person merges the twins
    second = await import_chats(start=MONTH[0], end=MONTH[1])
    assert second["quarantined"] == {} and second["verdict"] == "complete"
    links = {link["chat_id"]: link["contact_id"] for link in emulator.emulator.store.links()}
    twin = created["_embedded"]["contacts"][0]["id"]
    assert sum(1 for contact in links.values() if contact == twin) == len(conversations)


async def test_wrong_token_stops_the_run_at_the_first_refusal(emulator, pipeline_env, monkeypatch):
    monkeypatch.setenv("AMOJO_ETL_AMOCRM_TOKEN", "not-the-token")
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    assert state.is_failed() and "AMOJO_ETL_AMOCRM_TOKEN" in state.message and "not-the-token" not in state.message
    assert emulator.emulator.request_counts() == {"rest account 401": 1}


async def test_credentials_from_prefect_secret_blocks(emulator, pipeline_env, monkeypatch):
    from prefect.blocks.system import Secret

    await Secret(value=pipeline_env["AMOJO_ETL_CHANNEL_SECRET"]).save("amojo-channel-secret", overwrite=True)
    await Secret(value=pipeline_env["AMOJO_ETL_AMOCRM_TOKEN"]).save("amocrm-token", overwrite=True)
    monkeypatch.delenv("AMOJO_ETL_CHANNEL_SECRET")
    monkeypatch.delenv("AMOJO_ETL_AMOCRM_TOKEN")
    monkeypatch.setenv("AMOJO_ETL_CHANNEL_SECRET_BLOCK", "amojo-channel-secret")
    monkeypatch.setenv("AMOJO_ETL_AMOCRM_TOKEN_BLOCK", "amocrm-token")
    summary = await import_chats(start=MONTH[0], end=MONTH[1])
    assert summary["verdict"] == "complete" and summary["messages_sent"] > 0
    monkeypatch.setenv("AMOJO_ETL_CHANNEL_SECRET_BLOCK", "no-such-block")
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    assert state.is_failed() and "no-such-block" in state.message


async def test_runs_share_the_account_budget_through_a_prefect_limit(emulator, pipeline_env, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="amojo-budget", limit=200, slot_decay_per_second=400))
    monkeypatch.setenv("AMOJO_ETL_SHARED_RATE_LIMIT", "amojo-budget")
    summary = await import_chats(start=MONTH[0], end=MONTH[1])
    assert summary["verdict"] == "complete" and summary["messages_sent"] > 0
    monkeypatch.setenv("AMOJO_ETL_SHARED_RATE_LIMIT", "no-such-limit")
    monkeypatch.setenv("AMOJO_ETL_STATE_URL", pipeline_env["AMOJO_ETL_STATE_URL"] + ".2")
    state = await import_chats(start=MONTH[0], end=MONTH[1], return_state=True)
    assert state.is_failed() and "no-such-limit" in state.message and "prefect gcl create" in state.message


async def test_without_dates_an_import_takes_the_day_before_its_scheduled_time(emulator, pipeline_env):
    from datetime import UTC, datetime, timedelta

    summary = await import_chats()
    today = datetime.now(UTC).date()
    assert summary["interval"] == f"{today - timedelta(days=1)}..{today}"
    assert summary["verdict"] == "complete"  # the sample has no messages then: nothing to send, nothing missing


async def test_an_incomplete_import_ends_in_a_red_state_that_names_its_counts(emulator, pipeline_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from amojo.emulator.config import Faults

    emulator.emulator.set_faults(Faults(history_lag_ms=600_000))  # amoCRM shows nothing for ten minutes
    day = (date(2026, 10, 10), date(2026, 10, 11))
    state = await import_chats(start=day[0], end=day[1], return_state=True)

    summary = await summary_of(state)
    assert summary["verdict"] == "incomplete" and summary["confirmed"] == 0 and summary["messages_sent"] > 0
    headline = f"{summary['messages_sent']} sent · {summary['rejected']} rejected · {summary['missing']} missing"
    assert state.is_failed() and state.name == "Incomplete" and state.message.startswith(headline)
    async with get_client() as client:  # as the server has it: what the runs list and automations see
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.type == StateType.FAILED and run.state.name == "Incomplete" and run.state.message == state.message
    event = await _event("amojo-etl.import.incomplete", run.id)
    assert event["payload"]["missing"] == summary["missing"] > 0 and event["payload"]["confirmed"] == 0
    assert event["resource"]["prefect.resource.id"].endswith(".interval.2026-10-10..2026-10-11")

    emulator.emulator.set_faults(Faults())
    state = await import_chats(start=day[0], end=day[1], return_state=True)
    assert state.is_completed() and state.message.endswith(" · complete") and "0 sent" in state.message


async def _event(name: str, flow_run_id, wait_s: float = 30.0) -> dict:
    """The event of this name that the Prefect server holds for the flow run (events are stored a moment later)."""
    import asyncio

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for _ in range(int(wait_s / 0.5)):
            response = await client._client.post("/events/filter", json={
                "filter": {"event": {"name": [name]}, "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}})
            if events := response.json().get("events"):
                return events[0]
            await asyncio.sleep(0.5)
    raise AssertionError(f"no {name} event for flow run {flow_run_id}")
