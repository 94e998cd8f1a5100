"""Claims in the ledger: one holder per key at a time, takeover once expired, and conversation order across runs."""

from __future__ import annotations

import math
import threading
import time
from datetime import date
from zoneinfo import ZoneInfo

import pytest

from etl.claims import ClaimLost, RunClaims
from etl.intervals import Interval
from etl.ledger import Ledger

UTC = ZoneInfo("UTC")
DAY1 = Interval.days(date(2026, 10, 1), date(2026, 10, 2), UTC)
DAY2 = Interval.days(date(2026, 10, 2), date(2026, 10, 3), UTC)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def ledger_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue(f"{request.param}_url")


def test_one_holder_at_a_time_then_takeover_after_expiry(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.leases.claim("client", ["c1", "c2"], "run-a", ttl_s=0.5) == {"c1", "c2"}
    assert ledger.leases.claim("client", ["c2", "c3"], "run-b", ttl_s=0.5) == {"c3"}  # c2 is run-a's
    assert ledger.leases.claim("client", ["c1"], "run-a", ttl_s=0.5) == {"c1"}  # a holder may claim again
    time.sleep(0.6)
    assert ledger.leases.claim("client", ["c1", "c2"], "run-b", ttl_s=30) == {"c1", "c2"}  # run-a stopped renewing
    assert ledger.leases.renew("run-a", 30) == 0  # and can tell that it lost them
    ledger.leases.release("run-b", "client", ["c1"])
    assert ledger.leases.claim("client", ["c1"], "run-a", ttl_s=30) == {"c1"}
    ledger.close()


def test_concurrent_claims_never_overlap(ledger_url):
    """Eight runs in threads, each with its own connection pool, grab overlapping keys at once: every key is held
    by exactly one of them."""
    keys = [f"v{i}" for i in range(200)]
    got: dict[str, set[str]] = {}
    barrier = threading.Barrier(8)

    def grab(holder: str, offset: int) -> None:
        ledger = Ledger(ledger_url)
        barrier.wait()
        got[holder] = ledger.leases.claim("conversation", keys[offset:] + keys[:offset], holder, ttl_s=60)
        ledger.close()

    Ledger(ledger_url).close()  # the schema, once
    threads = [threading.Thread(target=grab, args=(f"run-{n}", n * 25)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [key for keys_held in got.values() for key in keys_held]
    assert sorted(held) == sorted(keys)  # all taken, none twice


async def test_later_messages_wait_for_a_live_run_with_earlier_ones(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    noon1, noon2 = DAY1.start_ms + 12 * 3600_000, DAY2.start_ms + 12 * 3600_000
    async with RunClaims(ledger, ttl_s=30) as first, RunClaims(ledger, ttl_s=30) as second:
        await first.hold_interval(DAY1)
        await second.hold_interval(DAY2)
        # The day-1 run has registered nothing yet: it may still hold earlier messages of a conversation opened
        # on day 1, but not of one opened on day 2.
        assert second.out_of_turn({"v1": (noon1, noon2), "v3": (DAY2.start_ms, noon2)}) == {"v1"}
        assert first.out_of_turn({"v1": (noon1, noon1 + 1000)}) == set()  # nothing before day 1 is running

        # It registers its day: v1 has an earlier message not sent yet, v2 has none.
        ledger.messages.register([{"msgid": "ae-m1", "conversation_id": "v1", "msec": DAY1.end_ms - 1000,
                             "content_hash": 1, "text_hash": 1}])
        first.advance(DAY1.end_ms)
        assert second.out_of_turn({"v1": (noon1, noon2), "v2": (noon1, noon2)}) == {"v1"}

        ledger.messages.mark(["ae-m1"], "sent")
        assert second.out_of_turn({"v1": (noon1, noon2), "v2": (noon1, noon2)}) == set()
    ledger.close()


async def test_days_a_backfill_reserved_hold_later_messages_back_until_they_are_done(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    noon1, noon2 = DAY1.start_ms + 12 * 3600_000, DAY2.start_ms + 12 * 3600_000
    async with RunClaims(ledger, ttl_s=30) as backfill, RunClaims(ledger, ttl_s=30) as nightly:
        backfill.reserve([DAY1])
        await nightly.hold_interval(DAY2)
        assert nightly.out_of_turn({"v1": (noon1, noon2)}) == {"v1"}  # day 1 is not even started
        ledger.intervals.save(DAY1.start.isoformat(), DAY1.end.isoformat(), "complete", {})
        assert nightly.out_of_turn({"v1": (noon1, noon2)}) == set()  # done, by whichever run
    ledger.close()


async def test_a_dead_run_holds_later_messages_back_until_its_interval_is_taken_over(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    noon1, noon2 = DAY1.start_ms + 12 * 3600_000, DAY2.start_ms + 12 * 3600_000
    ledger.leases.claim("interval", ["2026-10-01T00:00:00+00:00/2026-10-02T00:00:00+00:00"], "killed-run", ttl_s=0.1,
                 start_ms=DAY1.start_ms, end_ms=DAY1.end_ms, frontier_ms=DAY1.start_ms)
    time.sleep(0.2)
    async with RunClaims(ledger, ttl_s=30) as later:
        await later.hold_interval(DAY2)
        assert later.out_of_turn({"v1": (noon1, noon2)}) == {"v1"}
        async with RunClaims(ledger, ttl_s=30) as takeover:
            await takeover.hold_interval(DAY1)
            takeover.advance(DAY1.end_ms)
            assert later.out_of_turn({"v1": (noon1, noon2)}) == set()
    ledger.close()


async def test_a_run_that_lost_its_claims_stops(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with RunClaims(ledger, ttl_s=3) as stalled:
        await stalled.hold_interval(DAY1)
        assert stalled.take("conversation", ["v1"]) == {"v1"}
        time.sleep(3.2)  # blocks the event loop: no heartbeat, as in a frozen process
        assert ledger.leases.claim("conversation", ["v1"], "another-run", ttl_s=30) == {"v1"}
        await __import__("asyncio").sleep(1.2)  # the next heartbeat finds the claim gone
        with pytest.raises(ClaimLost, match="another run took its work over"):
            stalled.check()
    ledger.close()


async def test_an_interval_held_by_a_live_run_waits_and_is_taken_over_once_it_expires(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.leases.claim("interval", ["2026-10-01T00:00:00+00:00/2026-10-02T00:00:00+00:00"], "killed-run", ttl_s=1.5,
                 start_ms=DAY1.start_ms, end_ms=DAY1.end_ms, frontier_ms=DAY1.start_ms)
    async with RunClaims(ledger, ttl_s=30, poll_s=0.1) as claims:
        began = time.monotonic()
        await claims.hold_interval(DAY1)
        assert time.monotonic() - began >= 1.0  # it waited for the expiry
        assert {row.holder for row in ledger.leases.live("interval")} == {claims.holder}
    assert ledger.leases.live("interval") == []  # released at the end of the run
    ledger.close()


def test_status_shows_the_intervals_being_imported_and_the_dead_runs(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from etl.cli import app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    for holder, key, ttl in (("alive-run", DAY1, 60), ("killed-run", DAY2, -1)):
        ledger.leases.claim("interval", [f"{key.start.isoformat()}/{key.end.isoformat()}"], holder, ttl_s=ttl,
                     start_ms=key.start_ms, end_ms=key.end_ms, frontier_ms=key.start_ms)
    ledger.close()
    monkeypatch.setenv("AMOJO_ETL_STATE_URL", url)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    running = {r["interval"]: r["alive"] for r in json.loads(result.output)["running"]}
    assert running == {"2026-10-01..2026-10-02": True, "2026-10-02..2026-10-03": False}


# -- the lease: kept through blips, known by time, released always, timed by the ledger's clock
def _sqlite_ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


async def test_the_heartbeat_survives_a_failed_renewal_and_the_run_keeps_its_claims(tmp_path, monkeypatch, caplog):
    import asyncio

    ledger = _sqlite_ledger(tmp_path)
    renew, calls = ledger.leases.renew, []

    def blip_once(holder: str, ttl_s: float) -> int:
        calls.append(holder)
        if len(calls) == 1:
            raise OSError("the ledger database did not answer")
        return renew(holder, ttl_s)

    monkeypatch.setattr(ledger.leases, "renew", blip_once)
    async with RunClaims(ledger, ttl_s=0.6) as claims:
        await claims.hold_interval(DAY1)
        assert claims.take("conversation", ["v1"]) == {"v1"}
        await asyncio.sleep(1.5)  # 2.5 leases: only renewals after the failed one keep the claims
        assert len(calls) >= 3
        assert ledger.leases.claim("conversation", ["v1"], "another-run", ttl_s=30) == set()  # still ours
        assert not claims.lost
        claims.check()
    assert any(r.levelname == "WARNING" and "renew" in r.getMessage() for r in caplog.records)
    ledger.close()


async def test_a_blocked_event_loop_stops_at_the_next_side_effect_without_any_heartbeat(tmp_path):
    ledger = _sqlite_ledger(tmp_path)
    async with RunClaims(ledger, ttl_s=0.6) as claims:
        await claims.hold_interval(DAY1)
        assert claims.take("conversation", ["v1"]) == {"v1"}
        claims.check()
        time.sleep(0.7)  # a long synchronous call: no heartbeat could run, nobody has taken anything yet
        with pytest.raises(ClaimLost):
            claims.take("conversation", ["v2"])
        assert ledger.leases.live("conversation", expired_within_s=math.inf)[0].key == "v1"  # v2 not claimed
        assert claims.lost
    ledger.close()


async def test_the_run_stops_once_less_than_the_safety_margin_of_its_lease_is_left(tmp_path):
    ledger = _sqlite_ledger(tmp_path)
    async with RunClaims(ledger, ttl_s=0.6) as claims:
        await claims.hold_interval(DAY1)
        claims.check()
        time.sleep(0.6 - 0.6 / 6 + 0.02)  # the lease is not over, but less than its margin (ttl/6) is left
        with pytest.raises(ClaimLost):
            claims.check()
    ledger.close()


async def test_the_margin_outlasts_the_longest_request(tmp_path):
    """A request that passed the check may take its whole timeout to land: the lease must still hold by then."""
    ledger = _sqlite_ledger(tmp_path)
    async with RunClaims(ledger, ttl_s=0.6) as plain, RunClaims(ledger, ttl_s=0.6, request_s=0.2) as patient:
        await plain.hold_interval(DAY1)
        assert patient.take("conversation", ["v1"]) == {"v1"}
        time.sleep(0.6 - 0.2 + 0.03)  # less than a request's 0.2 s left, more than a sixth of the lease
        plain.check()
        with pytest.raises(ClaimLost):
            patient.check()
    ledger.close()


async def test_the_claims_are_released_even_when_every_renewal_fails(tmp_path, monkeypatch):
    import asyncio

    ledger = _sqlite_ledger(tmp_path)

    def down(holder: str, ttl_s: float) -> int:
        raise OSError("the ledger database did not answer")

    monkeypatch.setattr(ledger.leases, "renew", down)
    async with RunClaims(ledger, ttl_s=0.6) as claims:
        await claims.hold_interval(DAY1)
        assert claims.take("conversation", ["v1"]) == {"v1"}
        await asyncio.sleep(0.5)  # a few failed renewals
    for kind in ("interval", "conversation"):
        assert ledger.leases.live(kind, expired_within_s=math.inf) == []
    ledger.close()


async def test_the_claims_are_released_when_the_run_fails(tmp_path):
    ledger = _sqlite_ledger(tmp_path)
    with pytest.raises(RuntimeError, match="the run's own error"):
        async with RunClaims(ledger, ttl_s=0.6) as claims:
            await claims.hold_interval(DAY1)
            raise RuntimeError("the run's own error")
    assert ledger.leases.live("interval", expired_within_s=math.inf) == []
    ledger.close()


def test_the_ledger_clock_is_the_database_time(ledger_url):
    ledger = Ledger(ledger_url)
    assert abs(ledger.clock() - time.time()) < 5  # this machine's servers keep its time
    ledger.close()


@pytest.fixture(params=["postgres", "mariadb"])
def server_ledger_url(request) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def test_a_worker_whose_clock_runs_ahead_does_not_take_live_claims(server_ledger_url, monkeypatch):
    """Lease times come from the ledger database's clock, not from each worker's own."""
    first, second = Ledger(server_ledger_url), Ledger(server_ledger_url)
    assert first.leases.claim("conversation", ["v1"], "first-run", ttl_s=0.6) == {"v1"}
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 40)  # the second worker's host runs 40 s ahead
    assert second.leases.claim("conversation", ["v1"], "second-run", ttl_s=30) == set()
    assert [row.holder for row in second.leases.live("conversation")] == ["first-run"]
    time.sleep(0.7)  # the real lease is over
    assert second.leases.live("conversation") == []
    assert second.leases.claim("conversation", ["v1"], "second-run", ttl_s=30) == {"v1"}
    assert first.leases.renew("first-run", 0.6) == 0
    first.close()
    second.close()


async def test_an_item_of_several_keys_comes_only_once_all_are_held_and_its_half_is_let_go(tmp_path):
    """Issue 25: a client is claimed by its phone and its email; another run holding the email keeps it waiting,
    and the phone it could take is let go meanwhile, so the other run's clients sharing that phone are not held."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with RunClaims(ledger, ttl_s=30, poll_s=0.01) as mine, RunClaims(ledger, ttl_s=30) as other:
        assert other.take("person", {"email:a@b.c"}) == {"email:a@b.c"}
        turns = mine.turns("person", {"both": {"phone:9151112233", "email:a@b.c"}, "free": {"phone:9160000000"}})
        assert await anext(turns) == {"free"}
        held = {row.key for row in ledger.leases.live("person") if row.holder == mine.holder}
        assert held == {"phone:9160000000"}  # not the phone of `both`, whose email another run holds
        other.release("person", {"email:a@b.c"})
        assert await anext(turns) == {"both"}
        await turns.aclose()
    ledger.close()
