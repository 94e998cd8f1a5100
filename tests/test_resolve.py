"""The resolve rule (`amojo.resolve`): what may have landed is read back before it is done again."""

from __future__ import annotations

from amojo.errors import InvalidRequest, Transient
from amojo.resolve import resolve


class Effect:
    """A fake write and its read-back, scripted: each call takes the next outcome (an error to raise, or a value)."""

    def __init__(self, does: list, reads: list) -> None:
        self.does, self.reads, self.calls = does, reads, []

    async def do(self) -> None:
        self.calls.append("do")
        if isinstance(outcome := self.does.pop(0), Exception):
            raise outcome

    async def read_back(self) -> bool:
        self.calls.append("read")
        if isinstance(outcome := self.reads.pop(0), Exception):
            raise outcome
        return outcome


async def _no_wait(_: float) -> None:
    return None


def lost() -> Transient:
    return Transient("answer lost", status=504, uncertain=True)


async def test_a_write_that_may_have_landed_is_read_back_and_only_what_is_left_is_done_again():
    effect = Effect(does=[lost(), None], reads=[False])
    assert await resolve(effect.do, effect.read_back, sleep=_no_wait) is None
    assert effect.calls == ["do", "read", "do"]


async def test_what_the_read_finds_done_is_not_done_again():
    effect = Effect(does=[lost()], reads=[True])
    assert await resolve(effect.do, effect.read_back, sleep=_no_wait) is None
    assert effect.calls == ["do", "read"]


async def test_a_read_that_fails_for_a_passing_reason_is_read_again_never_answered_by_doing_again():
    effect = Effect(does=[lost(), None], reads=[Transient("503", status=503, uncertain=True), False])
    assert await resolve(effect.do, effect.read_back, sleep=_no_wait) is None
    assert effect.calls == ["do", "read", "read", "do"]


async def test_a_read_refused_for_good_is_returned_and_nothing_is_done_again():
    refused = InvalidRequest("400", status=400)
    effect = Effect(does=[lost()], reads=[refused])
    assert await resolve(effect.do, effect.read_back, sleep=_no_wait) is refused
    assert effect.calls == ["do", "read"]


async def test_an_error_that_says_nothing_landed_is_returned_without_reading():
    refused = InvalidRequest("422", status=422)
    effect = Effect(does=[refused], reads=[])
    assert await resolve(effect.do, effect.read_back, sleep=_no_wait) is refused
    assert effect.calls == ["do"]


async def test_the_rounds_end_with_the_last_error_still_unknown():
    errors = [lost() for _ in range(3)]
    effect = Effect(does=list(errors), reads=[False, False, False])
    assert await resolve(effect.do, effect.read_back, rounds=3, sleep=_no_wait) is errors[-1]
    assert effect.calls == ["do", "read"] * 3


async def test_read_first_reads_before_the_first_try():
    effect = Effect(does=[None], reads=[False])
    assert await resolve(effect.do, effect.read_back, read_first=True, sleep=_no_wait) is None
    assert effect.calls == ["read", "do"]
