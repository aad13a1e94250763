"""Many batch requests per call to the router.

A Serve deployment-handle call costs the job host and the router replica more CPU than a small
request carries: with one call per request, a batch reached less than half the tokens/s of a client at
concurrency 64 on the router's listener (P4 online, docs/batch.md). So the job host groups the requests
its job tasks make at about the same moment into one streaming call, and each result comes back on its
own as soon as the router has it: a slow request holds up nobody else in its group.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

# One request of a job: (path, raw JSON body, the name of the key it acts for: its batch's owner).
Call = tuple[str, bytes, str | None]
# The router's side: run these requests, yield lists of (index in the group, status, body) as they finish.
GroupCall = Callable[[list[Call]], AsyncIterator[list[tuple[int, int, bytes]]]]
Pending = tuple[Call, "asyncio.Future[tuple[int, bytes]]"]


class GroupedSender:
    """A ``Send`` (``serve_apps.batch.job``) that ships requests in groups of up to ``max_group``,
    waiting at most ``window_s`` for a group to fill. A failed group call fails each of its requests
    that had no answer yet with the call's error (the job retries those, as it would one lost call)."""

    def __init__(self, group_call: GroupCall, max_group: int = 32, window_s: float = 0.005) -> None:
        self.group_call = group_call
        self.max_group = max_group
        self.window_s = window_s
        self._pending: list[Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def __call__(self, path: str, raw: bytes, key: str | None) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._pending.append(((path, raw, key), future))
        if len(self._pending) >= self.max_group:
            self._ship()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._ship)
        return await future

    def _ship(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # never more than max_group: __call__ ships the moment a group fills
        group, self._pending = self._pending, []
        task = asyncio.create_task(self._send(group))
        self._in_flight.add(task)  # a task nobody references may be garbage-collected mid-call
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, group: list[Pending]) -> None:
        futures = [future for _, future in group]
        error: BaseException
        try:
            async for answers in self.group_call([request for request, _ in group]):
                for index, status, body in answers:
                    if not futures[index].done():  # done: its caller was cancelled
                        futures[index].set_result((status, body))
            error = RuntimeError("the router ended a group call before answering every request in it")
        except Exception as exc:
            error = exc
        for future in futures:
            if not future.done():
                future.set_exception(error)
