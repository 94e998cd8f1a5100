"""A source in another shape, read through the example mapping of data/examples/."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from etl.intervals import Interval
from etl.settings import ConfigurationError
from etl.source import check_source, load_queries, open_source
from tasks.transform import SeenIds, Senders, transform

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "examples"
MAPPING = EXAMPLES / "helpdesk_mapping.toml"
UTC = ZoneInfo("UTC")


def _helpdesk(url: str) -> None:
    engine = sa.create_engine(url)
    sql = (EXAMPLES / "helpdesk_schema.sql").read_text()
    sql = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    with engine.begin() as conn:
        for statement in filter(str.strip, sql.split(";")):
            conn.exec_driver_sql(statement)
        conn.execute(sa.text("INSERT INTO customers VALUES ('6f1c', 'Ольга Петрова', '+7 916 000-11-22', NULL)"))
        conn.execute(sa.text("INSERT INTO agents VALUES (7, 'Anna', 'anna@example.com')"))
        conn.execute(sa.text("INSERT INTO tickets VALUES (501, '6f1c', '2026-10-05 09:00:00')"))
        rows = [
            (1, "2026-10-05 09:00:00", None, "customer", None, "Где мой заказ?", None, None, None),
            (2, "2026-10-05 09:05:00", None, "agent", 7, "Уже в пути!", None, None, None),
            (3, "2026-10-05 09:06:00", None, "agent", 7, None, "https://x.example/track.pdf", "track.pdf", 1200),
            (4, "2026-10-06 10:00:00", None, "robot", None, "not a known author", None, None, None),
            (5, "2026-10-04 10:00:00", "2026-10-05 12:00:00", "customer", None, "edited on the 5th", None, None,
             None),
        ]
        for row in rows:
            conn.execute(sa.text("INSERT INTO ticket_messages VALUES (:a, 501, :b, :c, :d, :e, :f, :g, :h, :i)"),
                         dict(zip("abcdefghi", row, strict=True)))
    engine.dispose()


def _day(url: str, day: date):
    interval = Interval.days(day, date.fromordinal(day.toordinal() + 1), UTC)
    seen, batches = SeenIds(), []
    with open_source(url, MAPPING, interval.start, interval.end, UTC) as stream:
        while (frames := stream.next_chunk()) is not None:
            batches.append(transform(frames, Senders({"anna@example.com": "amojo-anna"}, None), "hd-", UTC,
                                     seen=seen))
    return batches


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_helpdesk_schema_through_the_example_mapping(dialect, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    _helpdesk(url)
    check_source(url, MAPPING)
    batches = _day(url, date(2026, 10, 5))
    messages = [m for b in batches for m in b.messages.itertuples(index=False)]
    # The day's three messages, then the message of the 4th that was edited on the 5th (the edits pass).
    assert [m.msgid for m in messages] == ["hd-1", "hd-2", "hd-3", "hd-5"]
    assert [m.outgoing for m in messages] == [False, True, True, False]
    assert messages[1].ref_id == "amojo-anna" and messages[2].type == "file"
    conversation = batches[0].conversations.loc["hd-501"]
    assert conversation["phone"] == "+79160001122" and conversation["name"] == "Ольга Петрова"
    rejected = [r for b in _day(url, date(2026, 10, 6)) for r in b.rejects.itertuples()]
    assert [(r.source_key, r.reason) for r in rejected] == [("message:4@2026-10-06T10:00:00Z", "unknown_direction")]


def test_mistyped_column_in_a_mapping_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    _helpdesk(url)
    broken = tmp_path / "broken.toml"
    broken.write_text(MAPPING.read_text().replace("full_name AS name", "full_name AS nmae"))
    with pytest.raises(ConfigurationError, match=r"clients query returns no column name \(it returns .*nmae"):
        check_source(url, broken)


def test_mapping_without_a_required_query_is_refused(tmp_path):
    partial = tmp_path / "partial.toml"
    partial.write_text('[queries]\nmessages = "SELECT 1"\n')
    with pytest.raises(ConfigurationError, match="no query for conversations, clients, managers"):
        load_queries(partial)


def _with_queries(tmp_path: Path, **replaced: str) -> Path:
    """The example mapping with some of its queries replaced (None drops one)."""
    import tomllib

    queries = {**tomllib.loads(MAPPING.read_text())["queries"], **replaced}
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[queries]\n" + "".join(f"{k} = '''{v}'''\n" for k, v in queries.items() if v is not None))
    return mapping


@pytest.mark.parametrize(("entity", "sql", "lacking"), [
    ("messages", "SELECT * FROM ticket_messages WHERE sent_at >= :start", ":end"),
    ("messages", "SELECT * FROM ticket_messages", ":start and :end"),
    ("edits", "SELECT * FROM ticket_messages WHERE edited_at < :end", ":start"),
])
def test_an_interval_query_that_does_not_bind_start_and_end_is_refused_with_the_fix(tmp_path, entity, sql, lacking):
    with pytest.raises(ConfigurationError, match=rf"the {entity} query does not use {lacking}, so it would read the "
                                                 r"whole table for every interval; filter it on .*>= :start"):
        load_queries(_with_queries(tmp_path, **{entity: sql}))


def test_lookups_and_unplaced_need_no_bounds(tmp_path):
    # The example's conversations, clients, managers and unplaced bind nothing, and a cast is no parameter.
    queries = load_queries(_with_queries(tmp_path, messages=(
        "SELECT * FROM ticket_messages WHERE sent_at::text >= :start AND sent_at::text < :end")))
    assert queries.unplaced and "edited_at" not in queries.messages


def test_unknown_columns_of_a_mapping_are_named_once_for_the_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    _helpdesk(url)
    import tomllib

    queries = tomllib.loads(MAPPING.read_text())["queries"]
    mapping = _with_queries(
        tmp_path, messages=queries["messages"].replace("FROM ticket_messages", ", msg_id AS reply_to_idx FROM "
                                                                               "ticket_messages"),
        clients=queries["clients"].replace("FROM customers", ", mobile AS phone2 FROM customers"),
        conversations=queries["conversations"].replace(" FROM tickets", ", 'web' AS source_external_id FROM tickets"))
    check_source(url, mapping)  # columns it does not read are no reason to stop
    interval = Interval.days(date(2026, 10, 5), date(2026, 10, 6), UTC)
    with open_source(url, mapping, interval.start, interval.end, UTC, chunk_size=1) as stream:
        assert stream.unknown_columns is not None
        assert "(messages: reply_to_idx; clients: phone2)" in stream.unknown_columns
        assert "source_external_id" not in stream.unknown_columns  # an optional column it reads
    with open_source(url, MAPPING, interval.start, interval.end, UTC) as stream:
        assert stream.unknown_columns is None


@pytest.mark.prefect
def test_unknown_columns_are_one_warning_per_flow_run_not_per_chunk_or_day(tmp_path, monkeypatch, prefect_harness,
                                                                            caplog):
    from prefect import flow

    from etl.settings import load_settings
    from tasks.interval import open_interval

    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    _helpdesk(url)
    mapping = _with_queries(tmp_path, managers="SELECT CAST(agent_id AS TEXT) AS id, display_name AS name, "
                                               "work_email AS email, 1 AS shift FROM agents")
    monkeypatch.setenv("AMOJO_ETL_SOURCE_URL", url)
    monkeypatch.setenv("AMOJO_ETL_MAPPING", str(mapping))

    @flow
    def read_days() -> int:
        settings, chunks = load_settings().model_copy(update={"chunk_size": 1}), 0
        for day in (5, 6):
            with open_interval(settings, Interval.days(date(2026, 10, day), date(2026, 10, day + 1), UTC)) as source:
                while source.next_chunk() is not None:
                    chunks += 1
        return chunks

    for _ in range(2):
        assert read_days() >= 3
    named = [r for r in caplog.records if "return columns amojo-etl does not read" in r.getMessage()]
    assert len(named) == 2 and all("managers: shift" in r.getMessage() for r in named)


def test_the_media_base_url_setting_is_read_by_a_mapping_query_as_a_parameter(tmp_path, monkeypatch):
    from etl.settings import load_settings

    url = f"sqlite:///{tmp_path / 'helpdesk.db'}"
    _helpdesk(url)
    import tomllib

    clients = tomllib.loads(MAPPING.read_text())["queries"]["clients"]
    mapping = _with_queries(tmp_path, clients=clients.replace(
        "NULL AS avatar_url", "CAST(:media_base_url AS TEXT) || customer_uuid || '.png' AS avatar_url"))
    monkeypatch.setenv("AMOJO_ETL_MEDIA_BASE_URL", "https://files.example/avatars/")
    settings = load_settings()
    check_source(url, mapping, settings.mapping_parameters)
    interval = Interval.days(date(2026, 10, 5), date(2026, 10, 6), UTC)
    with open_source(url, mapping, interval.start, interval.end, UTC, parameters=settings.mapping_parameters) as s:
        assert list(s.next_chunk().clients["avatar_url"]) == ["https://files.example/avatars/6f1c.png"]
    for wrong in ("ftp://files.example/", "files.example/avatars"):
        monkeypatch.setenv("AMOJO_ETL_MEDIA_BASE_URL", wrong)
        with pytest.raises(ConfigurationError, match="AMOJO_ETL_MEDIA_BASE_URL"):
            load_settings()
    monkeypatch.setenv("AMOJO_ETL_MEDIA_BASE_URL", "s3://chatwoot-files/")
    assert load_settings().mapping_parameters == {"media_base_url": "s3://chatwoot-files/"}
