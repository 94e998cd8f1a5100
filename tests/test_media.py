"""Media amoCRM can fetch (issue 26): file names without a URL's query, sizes looked up where the source has none,
s3:// URLs presigned, and URLs that do not answer named, and rejected or sent as the settings say."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from media_server import media_server

from etl.errors import ConfigurationError
from etl.ledger import Ledger
from etl.media import MediaLinks
from etl.settings import load_settings
from etl.source import SourceFrames
from tasks.media import MediaReport, fetchable_media
from tasks.transform import NOT_YET, Batch, Senders, transform

UTC = ZoneInfo("UTC")
SENDERS = Senders({}, bot_id="amojo-bot")
COLUMNS = ["id", "conversation_id", "created_at", "updated_at", "direction", "manager_id", "type", "text",
           "media_url", "file_name", "file_size", "lat", "lon", "contact_name", "contact_phone"]
PRESIGNED = ("https://bucket.s3.eu-central-1.amazonaws.com/chats/2026/%D0%BE%D1%82%D1%87%D1%91%D1%82.pdf"
             "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261205%2Feu-central-1%2Fs3%2Faws4_request"
             "&X-Amz-Date=20261205T120000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123")


def _frames(rows: list[dict]) -> SourceFrames:
    base = {"conversation_id": "v1", "created_at": "2026-10-05 12:00:00", "direction": "in", "type": "file"}
    return SourceFrames(
        pd.DataFrame([{c: {**base, **r}.get(c) for c in COLUMNS} for r in rows], dtype=object),
        pd.DataFrame([("v1", "c1", "2026-10-01 00:00:00")], columns=["id", "client_id", "created_at"], dtype=object),
        pd.DataFrame([("c1", "Client", None, None, None, None)],
                     columns=["id", "name", "phone", "email", "avatar_url", "profile_url"], dtype=object),
        pd.DataFrame(columns=["id", "name", "email"], dtype=object),
    )


def _transform(rows: list[dict]):
    return transform(_frames(rows), SENDERS, "ae-", UTC, now=datetime(2026, 11, 25))


def test_a_file_name_comes_from_the_source_else_from_the_urls_path_without_its_query():
    batch = _transform([{"id": "1", "media_url": PRESIGNED, "file_size": 10},
                        {"id": "2", "media_url": PRESIGNED, "file_name": "Q3 report.pdf", "file_size": 10},
                        {"id": "3", "media_url": "https://cdn.example.com/a/photo.jpg#top", "type": "picture"},
                        {"id": "4", "media_url": "s3://chat-media/inbox/42/voice note.ogg"}])
    assert batch.rejects.empty, batch.rejects.to_dict("records")
    names = dict(zip(batch.messages["source_id"], batch.messages["file_name"], strict=True))
    assert names == {"1": "отчёт.pdf", "2": "Q3 report.pdf", "3": "photo.jpg", "4": "voice note.ogg"}


def test_an_s3_url_needs_a_bucket_and_a_key():
    batch = _transform([{"id": "1", "media_url": "s3://chat-media/"}, {"id": "2", "media_url": "s3://x/key"},
                        {"id": "3", "media_url": "ftp://example.com/f.pdf"}])
    assert list(batch.rejects["reason"]) == ["bad_media_url"] * 3
    assert "s3://bucket/key" in batch.rejects["detail"].iloc[0]


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.close()


async def _fetchable(rows: list[dict], ledger: Ledger, *, check: bool = False, reject: bool = True,
                     presign: bool = True, expiry_s: int = 3600) -> tuple[Batch, MediaReport]:
    report = MediaReport()
    async with MediaLinks(expiry_s=expiry_s, timeout_s=5, concurrency=2) as links:
        batch = await fetchable_media(_transform(rows), ledger, links, report, check=check, reject=reject,
                                      presign=presign)
    return batch, report


async def test_a_missing_size_is_asked_of_the_url_once(ledger):
    with media_server({"photo.jpg": b"x" * 1234, "scan.pdf": b"y" * 77}) as files:
        batch, report = await _fetchable([
            {"id": "1", "media_url": f"{files.url}/files/photo.jpg", "type": "picture"},
            {"id": "2", "media_url": f"{files.url}/files/photo.jpg", "type": "picture"},
            {"id": "3", "media_url": f"{files.url}/no-head/scan.pdf"},  # refuses HEAD: a ranged GET tells
            {"id": "4", "media_url": f"{files.url}/files/photo.jpg", "file_size": 5},  # the source's size stands
        ], ledger)
        assert files.requests["HEAD", "/files/photo.jpg"] == 1
        assert sum(n for (method, _), n in files.requests.items() if method == "GET") == 1
    sizes = dict(zip(batch.messages["source_id"], batch.messages["file_size"], strict=True))
    assert sizes == {"1": 1234, "2": 1234, "3": 77, "4": 5}
    assert report.sizes_found == 3 and report.checked == 0


async def test_media_among_other_messages_keeps_every_message_its_own_values(ledger):
    """A chunk's media rows are a part of its messages (their index is not 0..n): each keeps its own size and URL."""
    with media_server({"photo.jpg": b"x" * 1234}) as files:
        rows = [{"id": f"t{n}", "type": "text", "text": f"text {n}", "created_at": f"2026-10-05 12:0{n}:00"}
                for n in range(3)]
        rows += [{"id": "p", "media_url": f"{files.url}/files/photo.jpg", "type": "picture",
                  "created_at": "2026-10-05 12:05:00"},
                 {"id": "v", "media_url": f"{files.url}/files/voice.ogg", "type": "voice",
                  "created_at": "2026-10-05 12:06:00"}]
        batch, _ = await _fetchable(rows, ledger)
    by_id = batch.messages.set_index("source_id")
    assert by_id.loc["p", "file_size"] == 1234 and pd.isna(by_id.loc["v", "file_size"])
    assert by_id.loc["t0", "text"] == "text 0" and by_id.loc["v", "media_url"].endswith("/voice.ogg")


async def test_a_size_that_cannot_be_found_is_left_to_the_payloads_zero(ledger):
    batch, _ = await _fetchable([{"id": "1", "media_url": "http://127.0.0.1:9/nothing-listens-here.pdf"}], ledger)
    assert batch.rejects.empty and batch.messages["file_size"].isna().all()


async def test_an_s3_url_is_presigned_with_the_chosen_expiry_and_the_digest_stays_the_sources(ledger, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    rows = [{"id": "1", "media_url": "s3://chat-media/inbox/42/voice note.ogg", "file_size": 3}]
    source = _transform(rows).messages
    batch, report = await _fetchable(rows, ledger, expiry_s=86_400)
    url = urlsplit(batch.messages["media_url"].iloc[0])
    query = parse_qs(url.query)
    assert (url.scheme, url.hostname, url.path) == ("https", "chat-media.s3.eu-central-1.amazonaws.com",
                                                    "/inbox/42/voice%20note.ogg")
    assert query["X-Amz-Expires"] == ["86400"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    credential = query["X-Amz-Credential"][0]
    assert credential.startswith("AKIDEXAMPLE/") and "/eu-central-1/s3/" in credential
    assert batch.messages["file_name"].iloc[0] == "voice note.ogg" and report.presigned == 1
    assert list(batch.messages["content_hash"]) == list(source["content_hash"])  # a new signature is no edit
    dotted, _ = await _fetchable([{"id": "2", "media_url": "s3://my.media/x.pdf", "file_size": 3}], ledger)
    dotted_url = urlsplit(dotted.messages["media_url"].iloc[0])  # a dotted bucket in the path: TLS matches the host
    assert (dotted_url.hostname, dotted_url.path) == ("s3.eu-central-1.amazonaws.com", "/my.media/x.pdf")
    dry, _ = await _fetchable(rows, ledger, presign=False)
    assert dry.messages["media_url"].iloc[0] == rows[0]["media_url"]  # a dry run shows no working link


async def test_s3_urls_without_aws_credentials_say_what_to_set(ledger, monkeypatch):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        await _fetchable([{"id": "1", "media_url": "s3://chat-media/a.pdf", "file_size": 1}], ledger)


@pytest.mark.parametrize("unreachable", ["reject", "send"])
async def test_a_url_that_does_not_answer_is_named_and_rejected_or_sent(ledger, unreachable):
    with media_server({"ok.pdf": b"z" * 10}) as files:
        rows = [{"id": "good", "media_url": f"{files.url}/files/ok.pdf", "file_size": 10},
                {"id": "gone", "media_url": f"{files.url}/files/gone.pdf?token=secret-token", "file_size": 10}]
        batch, report = await _fetchable(rows, ledger, check=True, reject=unreachable == "reject")
    assert report.checked == 2 and report.unreachable == 1
    outcome = "rejected" if unreachable == "reject" else "sent"
    assert report.unreachable_urls == [{"message_id": "gone", "url": f"{files.url}/files/gone.pdf?…",
                                        "why": "HTTP 404", "outcome": outcome}]
    if unreachable == "reject":
        assert list(batch.messages["source_id"]) == ["good"]
        assert list(batch.rejects["reason"]) == ["media_unreachable"]
        assert batch.rejects["source_key"].iloc[0] == "message:gone@2026-10-05T12:00:00Z"
        assert "HTTP 404" in batch.rejects["detail"].iloc[0] and "secret-token" not in batch.rejects["detail"].iloc[0]
    else:
        assert list(batch.messages["source_id"]) == ["good", "gone"] and batch.rejects.empty


async def test_a_url_that_fails_for_now_is_held_back_for_a_later_run_not_rejected_for_good(ledger):
    """A 503, 429 or timeout says nothing lasting about the file: such a message is held back (its day stays
    incomplete, so a later run checks it again), while a 404 is the source's to fix."""
    with media_server({}) as files:
        rows = [{"id": "busy", "media_url": f"{files.url}/status/503/a.pdf", "file_size": 10},
                {"id": "limited", "media_url": f"{files.url}/status/429/b.pdf", "file_size": 10},
                {"id": "gone", "media_url": f"{files.url}/status/404/c.pdf", "file_size": 10}]
        batch, report = await _fetchable(rows, ledger, check=True, reject=True)
    reasons = dict(zip(batch.rejects["source_key"].str.split("@").str[0], batch.rejects["reason"], strict=True))
    assert reasons == {"message:busy": "media_no_answer", "message:limited": "media_no_answer",
                       "message:gone": "media_unreachable"}
    assert "media_no_answer" in NOT_YET and "media_unreachable" not in NOT_YET
    assert report.unreachable == 3 and batch.messages.empty


def test_a_presign_expiry_beyond_what_sigv4_allows_is_refused_naming_the_setting():
    with pytest.raises(ConfigurationError, match="AMOJO_ETL_MEDIA_URL_EXPIRY_S"):
        load_settings(media_url_expiry_s=604_801)
    assert load_settings().media_url_expiry_s == 604_800  # amoCRM may download days later: the longest by default


@pytest.mark.parametrize("url", ["https://[::1/photo.jpg?token=secret-token", "https://exämple..com/photo.jpg",
                                 "http://example.com:99999/photo.jpg?token=secret-token"])
async def test_a_url_no_client_can_send_to_is_named_unreachable_and_the_run_goes_on(ledger, url):
    """A media URL the transform takes (http(s), no blanks) whose host no HTTP client can even address: its probe
    says so like any URL that does not answer, rather than failing the whole run with the URL in the traceback."""
    rows = [{"id": "odd", "media_url": url, "type": "picture"}]
    unsized, _ = await _fetchable(rows, ledger)  # no check: only its size is asked for, and none is found
    assert list(unsized.messages["source_id"]) == ["odd"] and unsized.messages["file_size"].isna().all()
    batch, report = await _fetchable(rows, ledger, check=True)
    assert report.unreachable == 1 and list(batch.rejects["reason"]) == ["media_unreachable"]
    assert "secret-token" not in batch.rejects["detail"].iloc[0] + str(report.unreachable_urls)
