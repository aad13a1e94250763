"""One attempt on one backend, as one object: the router's bookkeeping in a single place.

A ``Lease`` is taken before a request goes to a backend (a breaker slot -- a half-open probe -- and
one more outstanding request) and released exactly once, by whichever comes first:

- ``succeed(status)``: the answer was delivered; its response is closed, success and latency recorded;
- ``fail(reason)``: the backend failed; its response is closed and the failure recorded (the
  router's ``on_fail`` decides fallback notes, 429 back-off and metrics);
- ``abandon()``: no verdict (the client went away, the task was cancelled, a bug); its response is
  closed and the breaker slot freed without charging the backend.

Later calls do nothing, so ``finally: await lease.abandon()`` is always safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serve_apps.router.backends.base import BackendResponse
from serve_apps.router.metrics import RouterMetrics
from serve_apps.router.pool import BackendState

# (state, reason, response or None) -> None: the router's failure handling
OnFail = Callable[[BackendState, str, "BackendResponse | None"], None]


class Lease:
    __slots__ = ("state", "response", "started", "_metrics", "_on_fail", "_open")

    def __init__(self, state: BackendState, metrics: RouterMetrics, on_fail: OnFail) -> None:
        self.state = state
        self.response: BackendResponse | None = None
        self._metrics = metrics
        self._on_fail = on_fail
        state.breaker.acquire()
        state.outstanding += 1
        self.started = time.perf_counter()
        self._open = True

    @property
    def open(self) -> bool:
        return self._open

    def _end(self) -> bool:
        if not self._open:
            return False
        self._open = False
        self.state.outstanding -= 1
        return True

    async def succeed(self, status: int) -> None:
        if self._end():
            latency = time.perf_counter() - self.started
            self.state.record(True, latency)
            self._metrics.request(self.state.name, status, latency)
            await self._close()

    async def fail(self, reason: str) -> None:
        if self._end():
            try:
                await self._close()
            finally:
                self._on_fail(self.state, reason, self.response)

    async def abandon(self) -> None:
        if self._end():
            self.state.breaker.release()
            await self._close()

    async def _close(self) -> None:
        if self.response is not None:
            await self.response.aclose()
