"""``GroupedSender``: many job requests per router call, each answered on its own."""

from __future__ import annotations

import asyncio

import pytest

from serve_apps.batch.sender import GroupedSender


class GroupCalls:
    """The router's side: answers each request with its own body, after ``delays[body]`` seconds."""

    def __init__(self, delays: dict[bytes, float] | None = None, fail_after: int | None = None,
                 stop_after: int | None = None) -> None:
        self.groups: list[list[bytes]] = []
        self.delays = delays or {}
        self.fail_after, self.stop_after = fail_after, stop_after

    async def __call__(self, requests: list[tuple[str, bytes, str | None]]):
        self.groups.append([raw for _, raw, _ in requests])

        async def one(index: int, raw: bytes) -> tuple[int, int, bytes]:
            await asyncio.sleep(self.delays.get(raw, 0))
            return index, 200, b"answer " + raw

        tasks = [asyncio.create_task(one(i, raw)) for i, (_, raw, _) in enumerate(requests)]
        try:
            for count, finished in enumerate(asyncio.as_completed(tasks)):
                result = await finished
                if count == self.fail_after:
                    raise ConnectionError("replica gone")
                if count == self.stop_after:
                    return
                yield [result]
        finally:
            for task in tasks:
                task.cancel()


def test_requests_made_together_share_calls_and_each_gets_its_own_answer():
    calls = GroupCalls()

    async def run():
        sender = GroupedSender(calls, max_group=16)
        return await asyncio.gather(*(sender("/v1/completions", str(i).encode(), None) for i in range(40)))

    answers = asyncio.run(run())
    assert answers == [(200, b"answer " + str(i).encode()) for i in range(40)]
    assert [len(group) for group in calls.groups] == [16, 16, 8]


def test_a_slow_request_holds_up_nobody_in_its_group():
    calls = GroupCalls(delays={b"slow": 1.0})

    async def run():
        sender = GroupedSender(calls)
        slow = asyncio.create_task(sender("/v1/completions", b"slow", None))
        fast = [asyncio.create_task(sender("/v1/completions", str(i).encode(), None)) for i in range(5)]
        done, _ = await asyncio.wait(fast, timeout=0.5)
        answered_before_slow = len(done) if not slow.done() else -1
        await slow
        return answered_before_slow

    assert asyncio.run(run()) == 5
    assert len(calls.groups) == 1


@pytest.mark.parametrize("fault,error", [({"fail_after": 2}, ConnectionError), ({"stop_after": 2}, RuntimeError)])
def test_a_broken_call_fails_only_its_unanswered_requests(fault, error):
    calls = GroupCalls(delays={str(i).encode(): 0.01 * i for i in range(5)}, **fault)

    async def run():
        sender = GroupedSender(calls)
        return await asyncio.gather(*(sender("/v1/completions", str(i).encode(), None) for i in range(5)),
                                    return_exceptions=True)

    answers = asyncio.run(run())
    assert answers[:2] == [(200, b"answer 0"), (200, b"answer 1")]
    assert all(isinstance(answer, error) for answer in answers[2:])


def test_a_cancelled_caller_leaves_the_others_answered():
    calls = GroupCalls(delays={b"0": 0.05})

    async def run():
        sender = GroupedSender(calls)
        tasks = [asyncio.create_task(sender("/v1/completions", str(i).encode(), None)) for i in range(3)]
        await asyncio.sleep(0.02)
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(run())
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [(200, b"answer 1"), (200, b"answer 2")]
