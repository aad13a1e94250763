"""When a batch request's answer is final, and the one wait for the rest (batch jobs and ``/v1/batch``).

A request fails only for its own fault. The router answers 503 ``backend_unavailable`` when no backend
could serve a request (engine replicas starting, connection refused, breakers open, the backends' own
5xx) and 429 when every backend is rate-limited, or when the key the request acts for is over its
requests- or tokens-per-minute limit (``router/limits.py``: its window ends within a minute). A request that meets one of those, or a router it
cannot reach, waits with backoff (jittered, 0.25 s doubling to 5 s) and is sent again until the stack
serves it or its deadline passes: the batch's completion window for a job, ``endpoint_wait_seconds``
for a ``/v1/batch`` item. Counted against the request itself, at most ``retries`` times, after which its
answer is final:

- any other 5xx (500: an internal error; 504: its answer took longer than the router's response
  timeout): the stack answered, about this request;
- a 503 in which every backend failed *this* request in a way that names the request rather than an
  outage (the backend answered it 500/502, or something not its protocol) while the same stack served other
  requests since its last try: one poison request does not hold its batch until the window ends.

A 2xx or any other 4xx (the request's own mistake) is final at once.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger("ray.serve")
Attempt = Callable[[], Awaitable[tuple[int, bytes]]]
# The router's reasons (``backends.base.Reason`` and a backend's own status) that say the backend is
# down or busy, whatever the request: never the request's fault. ``disconnect`` is what the requests in
# flight meet when an engine dies (and the first ones after, on pooled connections to the dead one).
OUTAGE_REASONS = frozenset({"starting", "connect", "disconnect", "timeout", "429", "503"})
UNAVAILABLE_PREFIX = "all backends failed: "
BASE_DELAY_S, MAX_DELAY_S = 0.25, 5.0


class Verdict(enum.Enum):
    FINAL = "final"  # 2xx, or a 4xx about the request
    WAIT = "wait"  # nothing can serve it now: never the request's fault
    SUSPECT = "suspect"  # unavailable, but maybe because of the request: its fault if others were served
    STRIKE = "strike"  # the stack answered an error about this request


def judge(status: int, body: bytes) -> tuple[Verdict, str]:
    """The verdict on one answer of the router, and the reason to show while waiting."""
    if status < 400 or (status < 500 and status not in (408, 429)):
        return Verdict.FINAL, ""
    message = _message(body) or f"HTTP {status}"
    if status in (408, 429, 502):
        return Verdict.WAIT, message
    if status != 503:
        return Verdict.STRIKE, message
    if not message.startswith(UNAVAILABLE_PREFIX):
        return Verdict.WAIT, message
    reasons = {part.rsplit(": ", 1)[-1] for part in message.removeprefix(UNAVAILABLE_PREFIX).split("; ")}
    return (Verdict.WAIT if reasons & OUTAGE_REASONS else Verdict.SUSPECT), message


def _message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("message", "")) if isinstance(error, dict) else ""


@dataclass(frozen=True, slots=True)
class Answer:
    """The final answer to a request; ``expired``: the deadline passed while it waited (``status`` and
    ``body`` are then its last try's, or None and ``b""`` when the router was never reached)."""

    status: int | None
    body: bytes
    expired: bool = False


class Gate:
    """What the requests of one job (or one ``/v1/batch`` request) have seen of the stack, shared by
    them all: how many were served, and since when and why they wait (``note``)."""

    def __init__(self, retries: int, clock: Callable[[], float] = time.time) -> None:
        self.retries = retries
        self.clock = clock
        self.served = 0
        self.waiting_since: float | None = None
        self.reason: str | None = None

    def note(self) -> str | None:
        """"waiting since <UTC time>: <why>" while requests wait for a backend; None otherwise."""
        if self.waiting_since is None:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.waiting_since))
        return f"waiting for a backend since {since}: {self.reason}"

    def _serving(self) -> None:
        self.served += 1
        if self.waiting_since is not None:
            logger.info("batch: backends serve again after %.1f s", self.clock() - self.waiting_since)
        self.waiting_since = self.reason = None

    def _waiting(self, why: str) -> None:
        if self.waiting_since is None:
            self.waiting_since = self.clock()
            logger.warning("batch: no backend can serve (%s); waiting", why)
        self.reason = why

    async def send(self, attempt: Attempt, deadline: float | None, give_up_s: float | None = None) -> Answer:
        """``attempt()`` until its answer is final or ``deadline`` (``clock`` time) passes. An exception
        from ``attempt`` (the router unreachable) waits too when ``give_up_s`` is set, and is raised
        once it has lasted that long; without ``give_up_s`` it is raised at once."""
        strikes = tries = 0
        seen = self.served
        status: int | None = None
        body = b""
        unreachable_since: float | None = None
        while True:
            try:
                status, body = await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if give_up_s is None:
                    raise
                unreachable_since = unreachable_since or self.clock()
                if self.clock() - unreachable_since > give_up_s:
                    raise RuntimeError(f"router unreachable for {give_up_s:.0f} s") from exc
                verdict, why = Verdict.WAIT, f"router unreachable ({type(exc).__name__}: {exc})"
            else:
                unreachable_since = None
                verdict, why = judge(status, body)
            if verdict is Verdict.FINAL:
                self._serving()
                return Answer(status, body)
            others_served, seen = self.served > seen, self.served
            if verdict is Verdict.STRIKE or (verdict is Verdict.SUSPECT and others_served):
                strikes += 1
                if strikes > self.retries:
                    return Answer(status, body)
            if verdict is not Verdict.STRIKE:
                self._waiting(why)
            remaining = float("inf") if deadline is None else deadline - self.clock()
            if remaining <= 0:
                return Answer(status, body, expired=True)
            delay = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(tries, 8)) * random.uniform(0.5, 1.0)
            tries += 1
            await asyncio.sleep(min(delay, remaining))
