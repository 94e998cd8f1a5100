"""Media through a whole import and a dry run (issue 26): sizes amoCRM gets, URLs that do not answer rejected and
listed by `amojo-etl rejects`, or named by a dry run; nothing asked of any URL unless the check is on."""

from __future__ import annotations

import csv
from datetime import timedelta

import pytest
from load_harness import DAY, execute, write_source
from media_server import media_server
from typer.testing import CliRunner

from etl import cli
from flows.import_chats import import_chats

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]

END = DAY + timedelta(days=1)


def _media_rows(source: str, base: str) -> None:
    """Three media messages in the first conversation: one without a size, one whose URL is gone, one sized."""
    for n, (url, size) in enumerate([(f"{base}/files/scan.pdf?sig=s3cr3t", None), (f"{base}/files/gone.pdf", 10),
                                     (f"{base}/files/photo.jpg", 4)]):
        execute(source, "INSERT INTO messages (id, conversation_id, created_at, direction, type, media_url, "
                        "file_size) VALUES (:i, 'cv0', :t, 'in', :k, :u, :s)",
                i=f"media-{n}", t=f"{DAY} 05:0{n}:00", k="picture" if n == 2 else "file", u=url, s=size)


async def test_an_import_sends_real_sizes_and_rejects_a_url_that_does_not_answer(emulator, source_env,
                                                                                 monkeypatch, tmp_path):
    write_source(source_env, conversations=2, messages=2)
    monkeypatch.setenv("AMOJO_ETL_MEDIA_CHECK", "always")
    with media_server({"scan.pdf": b"%" * 4321, "photo.jpg": b"jpeg"}) as files:
        _media_rows(source_env, files.url)
        summary = await import_chats(start=DAY, end=END)
    assert summary["verdict"] == "complete" and summary["rejects_by_reason"] == {"media_unreachable": 1}
    assert summary["media"]["checked"] == 3 and summary["media"]["unreachable"] == 1
    held = {m["msgid"]: m["message"] for m in emulator.emulator.store.messages()}
    assert held["ae-media-0"]["file_size"] == 4321 and held["ae-media-0"]["file_name"] == "scan.pdf"
    assert "ae-media-1" not in held
    listed = CliRunner().invoke(cli.app, ["rejects", "--reason", "media_unreachable", "--csv",
                                          str(tmp_path / "rejects.csv")])
    assert listed.exit_code == 0, listed.output
    with open(tmp_path / "rejects.csv", newline="", encoding="utf-8") as file:
        rejects = list(csv.DictReader(file))
    assert [r["source_key"] for r in rejects] == [f"message:media-1@{DAY}T05:01:00Z"]
    assert "gone.pdf did not answer (HTTP 404)" in rejects[0]["detail"]


async def test_a_dry_run_names_the_urls_that_do_not_answer_and_asks_none_unless_told(emulator, source_env,
                                                                                    monkeypatch):
    write_source(source_env, conversations=1, messages=1)
    with media_server({"scan.pdf": b"%" * 10, "photo.jpg": b"jpeg"}) as files:
        _media_rows(source_env, files.url)
        execute(source_env, "UPDATE messages SET file_size = 10 WHERE id = 'media-0'")
        quiet = await import_chats(start=DAY, end=END, dry_run=True)
        assert not files.requests and quiet["media"]["checked"] == 0  # off unless asked for
        monkeypatch.setenv("AMOJO_ETL_MEDIA_CHECK", "dry-run")
        checked = await import_chats(start=DAY, end=END, dry_run=True)
    assert checked["media"]["unreachable_urls"] == [
        {"message_id": "media-1", "url": f"{files.url}/files/gone.pdf", "why": "HTTP 404", "outcome": "rejected"}]
    assert checked["rejects_by_reason"] == {"media_unreachable": 1} and not emulator.emulator.store.messages()
