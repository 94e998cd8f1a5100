"""The ledger's schema: created at the current version, older ones upgraded in place, newer ones refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa

from etl.ledger import SCHEMA_VERSION, Ledger
from etl.ledger.schema import meta
from etl.settings import ConfigurationError


def _indexes(url: str) -> set[str]:
    engine = sa.create_engine(url)
    names = {index["name"] for index in sa.inspect(engine).get_indexes("messages")}
    engine.dispose()
    return names


def _set_version(url: str, version: int, drop_index: bool = False) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
        if drop_index:  # and the claims table of version 3
            conn.execute(sa.text("DROP INDEX messages_conversation_msec"))
            conn.execute(sa.text("DROP TABLE claims"))
            conn.execute(sa.text("DROP TABLE uncertain"))  # and that of version 5
            conn.execute(sa.text("DROP TABLE audits"))  # and that of version 6
            conn.execute(sa.text("DROP TABLE persons"))  # and that of version 7
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_version_1_ledger_is_upgraded_in_place(database, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    ledger.messages.record([{"msgid": "m1", "conversation_id": "c1", "msec": 1, "content_hash": 7, "status": "sent"}])
    ledger.close()
    _set_version(url, 1, drop_index=True)  # as version 1 left it
    assert "messages_conversation_msec" not in _indexes(url)
    upgraded = Ledger(url)
    assert upgraded.schema_version() == SCHEMA_VERSION == 7
    assert "messages_conversation_msec" in _indexes(url)
    assert upgraded.leases.claim("conversation", ["c1"], "run", ttl_s=60) == {"c1"}
    upgraded.effects.expect("contact", ["client-1"])
    assert set(upgraded.effects.uncertain("contact", ["client-1", "client-2"])) == {"client-1"}
    assert upgraded.messages.states(["m1"]) == {"m1": ("sent", 7, "c1", 1)}  # the data stays
    upgraded.audits.save("2026-10-01", "2026-10-02", AUDIT)
    assert upgraded.audits.last()[("2026-10-01", "2026-10-02")]["verdict"] == "differs"
    upgraded.contacts.save_persons({"phone:9151112233": 31})
    assert upgraded.contacts.persons(["phone:9151112233", "email:a@b.c"]) == {"phone:9151112233": 31}
    upgraded.close()


AUDIT = {"verdict": "differs", "source": 7, "source_rejected": 1, "ledger": {"sent": 5, "rejected": 1},
         "amocrm": 4, "differences": {"missing_in_amocrm": 1, "not_sent": 0}, "repair": False, "repaired": 0}


def test_each_interval_keeps_its_last_audit(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.audits.save("2026-10-01", "2026-10-02", AUDIT)
    first = ledger.audits.last()[("2026-10-01", "2026-10-02")]
    ledger.audits.save("2026-10-01", "2026-10-02", {**AUDIT, "verdict": "consistent", "repair": True,
                                                   "repaired": 1, "differences": {"missing_in_amocrm": 0}})
    last = ledger.audits.last()
    ledger.close()
    assert list(last) == [("2026-10-01", "2026-10-02")]
    assert last[("2026-10-01", "2026-10-02")]["audited_at"] >= first["audited_at"]
    assert {k: v for k, v in last[("2026-10-01", "2026-10-02")].items() if k not in ("audited_at",)} == {
        "start": "2026-10-01", "end": "2026-10-02", "verdict": "consistent", "source": 7, "source_rejected": 1,
        "ledger": {"sent": 5, "rejected": 1}, "amocrm": 4, "differences": {"missing_in_amocrm": 0}, "repair": True,
        "repaired": 1}


def test_a_ledger_from_a_newer_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).close()
    _set_version(url, SCHEMA_VERSION + 1)
    with pytest.raises(ConfigurationError, match="newer amojo-etl"):
        Ledger(url)


@pytest.mark.parametrize("database", ["postgres", "mariadb"])
def test_workers_starting_together_create_a_new_ledger_once(database, request):
    import threading

    url = request.getfixturevalue(f"{database}_url")
    barrier, errors = threading.Barrier(6), []

    def open_ledger() -> None:
        barrier.wait()
        try:
            Ledger(url).close()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_ledger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Ledger(url).schema_version() == SCHEMA_VERSION


def _as_version_3(url: str) -> None:
    """Turn a new ledger into what version 3 left: ids in VARCHAR(255), rejects without their interval."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN msgid TYPE VARCHAR(255)"))
            conn.execute(sa.text("ALTER TABLE chats ALTER COLUMN conversation_id TYPE VARCHAR(255)"))
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.execute(sa.text("ALTER TABLE messages MODIFY msgid VARCHAR(255) NOT NULL"))
            conn.execute(sa.text("ALTER TABLE chats MODIFY conversation_id VARCHAR(255) NOT NULL"))
        conn.execute(sa.text("DROP INDEX ix_rejects_interval_label" + (" ON rejects" if engine.dialect.name
                                                                      in ("mysql", "mariadb") else "")))
        conn.execute(sa.text("ALTER TABLE rejects DROP COLUMN interval_label"))
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="3"))
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres", "mariadb"])
def test_a_version_3_ledger_takes_ids_of_any_length_the_source_may_hold(database, tmp_path, request):
    """Issue 11: a 300-character id with the ledger on PostgreSQL stopped the interval (VARCHAR(255))."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if database == "sqlite" else request.getfixturevalue(f"{database}_url")
    ledger = Ledger(url)
    ledger.rejects.save([{"source_key": "message:old", "reason": "empty_text", "detail": "", "row": "{}"}], "d")
    ledger.close()
    _as_version_3(url)
    upgraded = Ledger(url)
    assert upgraded.schema_version() == SCHEMA_VERSION
    long_id = "ae-" + "x" * 300 + "-" + "я" * 200
    upgraded.messages.record([{"msgid": long_id, "conversation_id": "ae-" + "c" * 500, "msec": 1,
                               "content_hash": 7, "status": "sent"}])
    assert upgraded.messages.states([long_id])[long_id][0] == "sent"
    upgraded.rejects.save([{"source_key": "message:" + "k" * 500, "reason": "id_too_long", "detail": "",
                            "row": "{}"}], "2026-10-01..2026-10-02")
    assert upgraded.rejects.counts("2026-10-01..2026-10-02") == {"id_too_long": 1}
    assert {r["source_key"] for r in upgraded.rejects.rows()} == {"message:old", "message:" + "k" * 500}
    upgraded.rejects.clear("2026-10-01..2026-10-02")
    assert [r["source_key"] for r in upgraded.rejects.rows()] == ["message:old"]
    # The same source row rejected again under its new key replaces the old one rather than being listed twice.
    upgraded.rejects.save([{"source_key": "message:old@2026-10-05T10:00:00Z", "reason": "empty_text", "detail": "",
                            "row": "{}"}], "2026-10-05..2026-10-06")
    assert [r["source_key"] for r in upgraded.rejects.rows()] == ["message:old@2026-10-05T10:00:00Z"]
    upgraded.close()


def test_a_reader_of_a_sqlite_ledger_does_not_hold_up_the_run_that_writes(tmp_path):
    """`amojo-etl status` (or any reader) in a read transaction while an import records its messages: the import's
    commit goes through at once instead of waiting for the reader and failing with "database is locked"."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    row = {"msgid": "m1", "conversation_id": "c1", "msec": 1, "content_hash": 7, "status": "sending"}
    ledger.messages.record([row])
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT status FROM messages").fetchall() == [("sending",)]
    try:
        ledger.messages.record([{**row, "status": "sent"}])
        assert reader.execute("SELECT status FROM messages").fetchall() == [("sending",)]  # its snapshot
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert ledger.messages.states(["m1"])["m1"][0] == "sent"


def test_a_rollback_mode_ledger_opens_while_another_process_writes_to_it(tmp_path):
    """A ledger an older amojo-etl made (rollback journal), opened while one of its workers commits: the switch to
    write-ahead mode, which SQLite refuses at once then, waits for a later connection instead of failing the run."""
    path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)  # as the older one left it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); c.execute(\"UPDATE meta SET value=value WHERE key='schema_version'\")\n"
        "print('writing', flush=True); time.sleep(1); c.execute('COMMIT')\n"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "writing"
        ledger = Ledger(f"sqlite:///{path}")  # waits for the writer's commit, as before write-ahead mode
    finally:
        holder.wait(10)
    ledger.messages.record([{"msgid": "m1", "conversation_id": "c1", "msec": 1, "content_hash": 7, "status": "sent"}])
    ledger.close()
    reopened = Ledger(f"sqlite:///{path}")
    with reopened.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert reopened.messages.states(["m1"])["m1"][0] == "sent"


def test_a_ledger_recreated_at_the_same_url_in_one_process_gets_its_tables_again(tmp_path):
    """Review of the redesign: the schema is upgraded once per process, and a later open only reads the version;
    a database made anew at the same URL (a deleted file, a second in-memory ledger) must still get its tables."""
    path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{path}").close()
    path.unlink()
    reopened = Ledger(f"sqlite:///{path}")
    assert reopened.schema_version() == SCHEMA_VERSION
    reopened.close()
    for _ in range(2):
        in_memory = Ledger("sqlite://")
        assert in_memory.messages.status_counts() == {}
        in_memory.close()
