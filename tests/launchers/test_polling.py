"""``poll_until``: answers, early failure, timeout, and progress lines, on a fake clock."""

from __future__ import annotations

import pytest

from launchers.polling import PollTimeout, poll_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_answer():
    clock, answers = Clock(), iter([None, False, "ready"])
    assert poll_until(lambda: next(answers), 10, 2, clock=clock, sleep=clock.sleep) == "ready"
    assert clock.sleeps == [2, 2]


def test_times_out_without_oversleeping():
    clock = Clock()
    with pytest.raises(PollTimeout) as info:
        poll_until(lambda: None, 5, 2, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [2, 2, 1]
    assert info.value.elapsed == 5
    assert isinstance(info.value, TimeoutError)


def test_check_fails_early():
    clock = Clock()

    def check() -> None:
        raise RuntimeError("dead")

    with pytest.raises(RuntimeError, match="dead"):
        poll_until(check, 5, 1, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_progress_on_change_and_every_interval():
    clock, lines = Clock(), []
    states = iter(["a", "a", "a", "b", "b"] + ["b"] * 20)
    current = {"s": ""}

    def check() -> None:
        current["s"] = next(states)

    with pytest.raises(PollTimeout):
        poll_until(check, 9, 1, status=lambda elapsed: f"{elapsed:.0f} {current['s']}".split()[1],
                   progress=lines.append, every_s=4, clock=clock, sleep=clock.sleep)
    # "a" at 0 s, "b" when it changes at 3 s, "b" again 4 s later at 7 s
    assert lines == ["a", "b", "b"]
