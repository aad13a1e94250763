"""Backend health: a circuit breaker fed by real outcomes, and background probes on an interval.

Two signals, kept apart on purpose:
- passive: every real request outcome goes to the backend's ``CircuitBreaker`` (closed -> open after
  ``failure_threshold`` consecutive failures; after ``open_seconds`` one probe request is let through
  (half-open); its success closes the breaker, its failure re-opens it). A 429 opens it for the
  backend's Retry-After instead.
- active: ``HealthMonitor`` probes each backend every ``health.interval`` seconds in the background,
  never on the request path; after a passing probe it lets the backend refresh the models it serves
  (``Backend.refresh_models``), so a model list a backend reports is never older than one interval.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from serve_apps.router.backends.base import Backend
from serve_apps.router.config import BreakerConfig

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probes = 0  # half-open requests in flight
        self.on_change: Callable[[BreakerState], None] | None = None

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    def available(self) -> bool:
        """May a request be sent now? (Does not take a half-open probe slot; ``acquire`` does.)"""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self._probes < self._config.half_open_max_requests
        )

    def acquire(self) -> bool:
        if not self.available():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probes += 1
        return True

    def release(self) -> None:
        """A request ended with no verdict (client went away): free its half-open probe slot."""
        if self._probes > 0:
            self._probes -= 1

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._probes = 0
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._config.failure_threshold:
            self.trip(self._config.open_seconds)

    def trip(self, seconds: float) -> None:
        """Open now for ``seconds`` (a failed probe, the threshold, or a 429's Retry-After)."""
        self._open_until = max(self._open_until, self._clock() + seconds)
        self._probes = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(state)


class HealthMonitor:
    """Probes every backend on its own interval; ``on_result(backend, healthy)`` gets each verdict
    after ``unhealthy_after`` consecutive failures (a single success marks it healthy again)."""

    def __init__(self, backends: Iterable[Backend], on_result: Callable[[Backend, bool], None]) -> None:
        self._backends = list(backends)
        self._on_result = on_result
        self._tasks: list[asyncio.Task[None]] = []
        self._unprobed = {b.name for b in self._backends}

    @property
    def first_round_done(self) -> bool:
        """Every backend has been probed once (whatever the answer): the router knows where it stands."""
        return not self._unprobed

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._loop(b), name=f"health-{b.name}") for b in self._backends]

    async def _loop(self, backend: Backend) -> None:
        health = backend.config.health
        failures = 0
        while True:
            ok = bool(await _bounded(backend.check_health(), health.timeout, f"health probe of {backend.name}"))
            failures = 0 if ok else failures + 1
            if ok or failures >= health.unhealthy_after:
                self._on_result(backend, ok)
            if ok:  # before the first round counts as done: a ready router lists the models too
                await _bounded(backend.refresh_models(), health.timeout, f"model refresh of {backend.name}")
            self._unprobed.discard(backend.name)
            await asyncio.sleep(health.interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


async def _bounded(call: Awaitable[T], timeout: float, what: str) -> T | None:
    """``call``'s result within ``timeout``; None if it failed or took longer (a probe must never kill
    the monitor)."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except Exception as exc:
        logger.debug("%s failed: %s", what, type(exc).__name__)
        return None
