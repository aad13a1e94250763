"""Per-key rate limits: requests and tokens per minute, shared by every router replica through Redis.

Counting: fixed one-minute windows (``reset`` = the time left in the current minute), one counter of
admitted requests and one of tokens per key name and window. A request is admitted while the window
holds fewer requests than ``requests_per_minute`` and fewer used tokens than ``tokens_per_minute``; a
refused request counts nothing. Tokens are known only after the answer (the engines' ``usage``, streams
included), so the token limit is admission against what the window has used: the request that crosses
the line is served, the next one is refused. A fixed window lets a client spend up to twice a limit
across a minute boundary; it keeps the check to one Redis round trip.

Stores: ``MemoryStore`` (one replica) and ``RedisStore`` (a Lua script per admission, so check and
increment are atomic across replicas). Redis down or slow -> the request is admitted (fail open): the
router keeps serving, logs once per outage, counts each such decision in a metric, and tries Redis
again after ``retry_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from serve_apps.asgi import Reply
from serve_apps.openai_format import error_reply
from serve_apps.router.keys import ApiKey, RedisConfig
from serve_apps.router.metrics import RouterMetrics

logger = logging.getLogger("ray.serve")
WINDOW = 60.0


class StoreUnavailable(Exception):
    """The shared store did not answer (down, slow, refused)."""


class Store(Protocol):
    async def admit(self, name: str, window: int, rpm: int, tpm: int, ttl: float) -> tuple[bool, int, int]:
        """Admit one request unless a limit (0 = none) is reached; (admitted, requests, tokens) after."""

    async def add_tokens(self, name: str, window: int, tokens: int, ttl: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Counters of this process only (one router replica)."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int, int]] = {}  # name -> (window, requests, tokens)

    def _current(self, name: str, window: int) -> tuple[int, int]:
        counted = self._counts.get(name)
        return (counted[1], counted[2]) if counted is not None and counted[0] == window else (0, 0)

    async def admit(self, name: str, window: int, rpm: int, tpm: int, ttl: float) -> tuple[bool, int, int]:
        requests, tokens = self._current(name, window)
        if (rpm and requests >= rpm) or (tpm and tokens >= tpm):
            return False, requests, tokens
        self._counts[name] = (window, requests + 1, tokens)
        return True, requests + 1, tokens

    async def add_tokens(self, name: str, window: int, tokens: int, ttl: float) -> None:
        requests, used = self._current(name, window)
        self._counts[name] = (window, requests, used + tokens)

    async def aclose(self) -> None:
        return None


# Check both limits and count the request in one step, so two replicas cannot both take the last slot.
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if (rpm > 0 and requests >= rpm) or (tpm > 0 and tokens >= tpm) then
  return {0, requests, tokens}
end
requests = redis.call('INCR', KEYS[1])
if requests == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, requests, tokens}
"""


class RedisStore:
    """Counters in Redis (``redis`` package, asyncio client): limits hold across router replicas."""

    def __init__(self, config: RedisConfig) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError(f"auth.redis needs the redis package: pip install 'ray-serve-cai[redis]' ({exc})") from None
        password = config.password.resolve() if config.password is not None else None
        # One immediate retry: a pooled connection from before a Redis restart fails once, then reconnects.
        self._client = aioredis.Redis.from_url(
            config.url, password=password, socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 1))
        self._admit = self._client.register_script(_ADMIT)
        self._prefix = config.prefix
        self._errors = (RedisError, OSError, asyncio.TimeoutError)

    def _keys(self, name: str, window: int) -> list[str]:
        base = f"{self._prefix}:{{{name}:{window}}}"  # one hash slot for both keys (Redis Cluster)
        return [base + ":requests", base + ":tokens"]

    async def admit(self, name: str, window: int, rpm: int, tpm: int, ttl: float) -> tuple[bool, int, int]:
        try:
            admitted, requests, tokens = await self._admit(keys=self._keys(name, window), args=[rpm, tpm, int(ttl * 1000)])
        except self._errors as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        return bool(admitted), int(requests), int(tokens)

    async def add_tokens(self, name: str, window: int, tokens: int, ttl: float) -> None:
        key = self._keys(name, window)[1]
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.incrby(key, tokens).pexpire(key, int(ttl * 1000)).execute()
        except self._errors as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(slots=True)
class Decision:
    """An admission: whether the request may go on, and the ``x-ratelimit-*`` headers to send."""

    allowed: bool
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    refused_by: str | None = None  # "requests" or "tokens"
    retry_after: float = 0.0

    def refusal(self, key: ApiKey) -> Reply:
        """The 429 as OpenAI sends it: ``rate_limit_exceeded``, ``Retry-After`` and the limit headers."""
        limit = key.requests_per_minute if self.refused_by == "requests" else key.tokens_per_minute
        seconds = max(1, math.ceil(self.retry_after))
        message = (f"Rate limit reached for key {key.name!r} on {self.refused_by} per min: limit {limit}. "
                   f"Please try again in {seconds}s.")
        return error_reply(429, message, self.refused_by or "requests", "rate_limit_exceeded",
                           headers=[(b"retry-after", str(seconds).encode()), *self.headers])


class Limiter:
    """Admission and token counting for keys with limits; keys without limits never reach the store."""

    def __init__(self, store: Store, metrics: RouterMetrics, retry_interval: float = 1.0,
                 clock: Callable[[], float] = time.time, window: float = WINDOW) -> None:
        self.store = store
        self.metrics = metrics
        self.retry_interval = retry_interval
        self.clock = clock
        self.window = window
        self._down_until = 0.0  # monotonic; while in the future, the store is not asked
        self._outage = False
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def build(cls, redis: RedisConfig | None, metrics: RouterMetrics) -> Limiter:
        if redis is None:
            return cls(MemoryStore(), metrics)
        return cls(RedisStore(redis), metrics, redis.retry_interval)

    def _now(self) -> tuple[int, float]:
        """The current window's number and the seconds left in it."""
        now = self.clock()
        window = int(now // self.window)
        return window, (window + 1) * self.window - now

    async def admit(self, key: ApiKey) -> Decision:
        window, left = self._now()
        rpm, tpm = key.requests_per_minute or 0, key.tokens_per_minute or 0
        if not self._store_usable():
            self.metrics.fail_open()
            return Decision(True)
        try:
            allowed, requests, tokens = await self.store.admit(key.name, window, rpm, tpm, 2 * self.window)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            self.metrics.fail_open()
            return Decision(True)
        self._store_ok()
        headers: list[tuple[bytes, bytes]] = []
        reset = go_duration(left).encode()
        if rpm:
            headers += [(b"x-ratelimit-limit-requests", str(rpm).encode()),
                        (b"x-ratelimit-remaining-requests", str(max(0, rpm - requests)).encode()),
                        (b"x-ratelimit-reset-requests", reset)]
        if tpm:
            headers += [(b"x-ratelimit-limit-tokens", str(tpm).encode()),
                        (b"x-ratelimit-remaining-tokens", str(max(0, tpm - tokens)).encode()),
                        (b"x-ratelimit-reset-tokens", reset)]
        if allowed:
            return Decision(True, headers)
        refused_by = "requests" if rpm and requests >= rpm else "tokens"
        self.metrics.rate_limited(key.name, refused_by)
        return Decision(False, headers, refused_by, left)

    def add_tokens(self, key: ApiKey, tokens: int) -> None:
        """Count a finished request's tokens against its key's window (in the background: the answer
        is already on its way)."""
        if not key.tokens_per_minute or tokens <= 0 or not self._store_usable():
            return
        task = asyncio.get_running_loop().create_task(self._add_tokens(key.name, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _add_tokens(self, name: str, tokens: int) -> None:
        window, _ = self._now()
        try:
            await self.store.add_tokens(name, window, tokens, 2 * self.window)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        self._store_ok()

    async def drain(self) -> None:
        """Wait for token counts still being written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.store.aclose()

    def _store_usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _store_failed(self, exc: StoreUnavailable) -> None:
        self._down_until = time.monotonic() + self.retry_interval
        if not self._outage:
            self._outage = True
            logger.warning("rate-limit store unavailable (%s): admitting requests without limits until it is back", exc)

    def _store_ok(self) -> None:
        if self._outage:
            self._outage = False
            logger.warning("rate-limit store is back: limits are enforced again")


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
