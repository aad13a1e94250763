"""Per-key rate limits (``serve_apps/router/limits.py``): exact counts, OpenAI's headers and 429 body,
token limits from the engines' usage, the ``openai`` SDK's view of a 429, and limits shared by two
routers through a real ``redis-server`` that is SIGKILLed (requests still served, fail-open counted)
and restarted (limits enforced again). The window's clock is pinned so no test straddles a minute."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid

import openai
import pytest

from launchers.local import free_port
from serve_apps.asgi import call_asgi
from serve_apps.listener import start_listener
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.limits import go_duration
from tests.serve_apps.router.redis_server import REDIS_SERVER, RedisServer
from tests.serve_apps.router.scripted import PROMPT_TOKENS, TOKENS, Step
from tests.serve_apps.router.test_router_scripted import make_router

SECRET = "sk-limited-0123456789"
WINDOW_START = 1_800_000_000.0  # a minute boundary (divisible by 60)
USED = PROMPT_TOKENS + len(TOKENS)  # tokens one scripted answer uses
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed: run scripts/setup-test-services.sh")


class Clock:
    def __init__(self, now: float = WINDOW_START + 0.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limited_router(monkeypatch, redis_url: str | None = None, prefix: str = "", steps: int = 20,
                   **limits) -> tuple[RouterASGI, Clock]:
    monkeypatch.setenv("LIMITED_KEY", SECRET)
    auth: dict = {"keys": [{"name": "team-a", "key": {"env": "LIMITED_KEY"}, **limits}]}
    if redis_url is not None:
        auth["redis"] = {"url": redis_url, "prefix": prefix, "retry_interval": 0.2}
    router, _ = make_router([Step()] * steps, auth=auth)
    clock = Clock()
    router.limiter.clock = clock
    return RouterASGI(router), clock


async def post(app: RouterASGI, stream: bool = False) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    response = await call_asgi(app, "POST", "/v1/chat/completions",
                               [("authorization", f"Bearer {SECRET}"), ("content-type", "application/json")], body)
    data = await response.read()
    await app.router.limiter.drain()  # the answer's tokens are counted (in the background) before the next request
    return response.status, dict(response.headers), data


def ratelimit(headers: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("x-ratelimit-"): v for k, v in headers.items() if k.startswith("x-ratelimit-")}


def test_requests_per_minute_exact_count_headers_and_openai_shaped_429(monkeypatch):
    app, clock = limited_router(monkeypatch, requests_per_minute=3)

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        return [await post(app) for _ in range(4)]

    answers = asyncio.run(run())
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    for (_, headers, _), remaining in zip(answers, ("2", "1", "0", "0"), strict=False):
        assert ratelimit(headers) == {"limit-requests": "3", "remaining-requests": remaining, "reset-requests": "59.5s"}
    status, headers, body = answers[3]
    assert headers["retry-after"] == "60" and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and error["param"] is None
    assert "team-a" in error["message"] and "requests per min" in error["message"] and SECRET not in error["message"]
    assert len(app.router.pool.states["b0"].backend.requests) == 3  # the refused request reached no backend

    clock.now = WINDOW_START + 60 + 45  # next window, 15 s left in it
    status, headers, _ = asyncio.run(post(app))
    assert status == 200 and ratelimit(headers)["remaining-requests"] == "2" and ratelimit(headers)["reset-requests"] == "15s"


def test_tokens_per_minute_is_admission_against_the_windows_used_tokens(monkeypatch):
    app, clock = limited_router(monkeypatch, tokens_per_minute=USED + 1)

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        return [await post(app), await post(app, stream=True), await post(app)]

    (s1, h1, _), (s2, h2, streamed), (s3, h3, body) = asyncio.run(run())
    assert (s1, s2, s3) == (200, 200, 429)
    assert ratelimit(h1) == {"limit-tokens": str(USED + 1), "remaining-tokens": str(USED + 1), "reset-tokens": "59.5s"}
    assert ratelimit(h2)["remaining-tokens"] == "1"  # the first answer's usage was counted
    assert b'"usage"' not in streamed  # the client did not ask for usage; the stream's tokens count anyway
    assert ratelimit(h3)["remaining-tokens"] == "0" and json.loads(body)["error"]["type"] == "tokens"
    assert h3["retry-after"] == "60"


def test_go_durations_as_openai_writes_them():
    assert [go_duration(s) for s in (0.012, 0.9996, 1, 1.5, 59.25, 60, 360, 75.5)] == [
        "12ms", "1000ms", "1s", "1.5s", "59.25s", "1m0s", "6m0s", "1m15.5s"]


def test_openai_sdk_sees_a_rate_limit_error_with_the_headers(monkeypatch):
    app, _ = limited_router(monkeypatch, requests_per_minute=1)

    async def run() -> None:
        port = free_port()
        listener = await start_listener(app, "127.0.0.1", port)
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, max_retries=0)
        try:
            first = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert first.headers["x-ratelimit-remaining-requests"] == "0"
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            error = caught.value
            assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
            assert error.response.headers["retry-after"] == "60"
            assert error.response.headers["x-ratelimit-limit-requests"] == "1"
            assert error.response.headers["x-ratelimit-reset-requests"] == "59.5s"
        finally:
            await client.close()
            await listener.close()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@needs_redis
def test_two_routers_share_a_limit_through_redis(monkeypatch, redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    one, _ = limited_router(monkeypatch, redis_server.url, prefix, requests_per_minute=4, tokens_per_minute=10 * USED)
    two, _ = limited_router(monkeypatch, redis_server.url, prefix, requests_per_minute=4, tokens_per_minute=10 * USED)

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        try:
            return [await post(app) for app in (one, two, one, two, one, two)]
        finally:
            await one.router.aclose()
            await two.router.aclose()

    answers = asyncio.run(run())
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 429, 429]
    assert [ratelimit(h)["remaining-requests"] for _, h, _ in answers] == ["3", "2", "1", "0", "0", "0"]
    # each router counted the tokens of its answers into the shared window
    assert [ratelimit(h)["remaining-tokens"] for _, h, _ in answers[:4]] == [str((10 - n) * USED) for n in range(4)]
    assert one.router.metrics.fail_open_count == two.router.metrics.fail_open_count == 0


@needs_redis
def test_redis_killed_fails_open_once_logged_and_limits_return_with_it(monkeypatch, redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    app, _ = limited_router(monkeypatch, redis_server.url, prefix, steps=40, requests_per_minute=2)
    lines = Lines()
    logging.getLogger("ray.serve").addHandler(lines)

    async def run() -> None:
        try:
            assert [(await post(app))[0] for _ in range(3)] == [200, 200, 429]
            redis_server.kill()  # a real SIGKILL: the pooled connection breaks, new ones are refused
            down = [await post(app) for _ in range(5)]
            assert [status for status, _, _ in down] == [200] * 5  # served, without limit headers
            assert all(not ratelimit(headers) for _, headers, _ in down)
            assert app.router.metrics.fail_open_count == 5
            await asyncio.sleep(0.3)  # past retry_interval: Redis is tried again, still down
            assert (await post(app))[0] == 200 and app.router.metrics.fail_open_count == 6
            outage = [line for line in lines.lines if "rate-limit store" in line]
            assert len(outage) == 1 and "unavailable" in outage[0]  # one line per outage, not per request

            redis_server.start()  # same port, empty
            await asyncio.sleep(0.3)
            assert [(await post(app))[0] for _ in range(3)] == [200, 200, 429]
            assert app.router.metrics.fail_open_count == 6
            assert any("back" in line for line in lines.lines)
        finally:
            logging.getLogger("ray.serve").removeHandler(lines)
            await app.router.aclose()

    asyncio.run(run())


def test_keys_without_limits_never_touch_the_store(monkeypatch):
    """A key with no limits (and every anonymous caller) costs no store call: a Redis that does not
    exist is never noticed."""
    monkeypatch.setenv("LIMITED_KEY", SECRET)
    router, _ = make_router([Step()], auth={"keys": [{"name": "free", "key": {"env": "LIMITED_KEY"}}],
                                            "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    app = RouterASGI(router)
    status, headers, _ = asyncio.run(post(app))
    assert status == 200 and not ratelimit(headers) and router.metrics.fail_open_count == 0


def test_a_client_leaving_before_the_usage_chunk_is_charged_the_tokens_it_received(monkeypatch):
    app, _ = limited_router(monkeypatch, tokens_per_minute=1000)

    async def run() -> tuple[str, dict]:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        reply = await app.router.generate("/v1/chat/completions", body, None, app.router.keys.lookup(f"Bearer {SECRET}".encode()))
        stream = reply.body
        received = [await stream.__anext__() for _ in range(4)]  # role chunk + 3 tokens, then the client leaves
        assert b"".join(received).count(b'"content":" w') == 3
        await stream.aclose()
        await app.router.limiter.drain()
        _, headers, _ = await post(app)
        return ratelimit(headers)["remaining-tokens"], app.router.metrics.tokens_used

    remaining, counted = asyncio.run(run())
    assert remaining == str(1000 - 3)  # the 3 text events delivered
    # the metrics count only backend usage: the left stream's none, the later complete answer's own
    assert counted == {("team-a", "m", "b0"): [PROMPT_TOKENS, len(TOKENS)]}


@needs_redis
def test_a_hung_redis_costs_at_most_its_timeout_and_fails_open(monkeypatch, redis_server):
    """SIGSTOP: Redis accepts nothing and answers nothing (a hung server or a black-holed network)."""
    app, _ = limited_router(monkeypatch, redis_server.url, f"t{uuid.uuid4().hex[:8]}", requests_per_minute=1)

    async def run() -> None:
        try:
            assert [(await post(app))[0] for _ in range(2)] == [200, 429]
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                assert (await post(app))[0] == 200  # fails open after the call's timeout (0.25 s, one retry)
                assert time.monotonic() - started < 1.5 and app.router.metrics.fail_open_count == 1
                started = time.monotonic()
                assert (await post(app))[0] == 200  # within retry_interval: Redis is not even asked
                assert time.monotonic() - started < 0.2 and app.router.metrics.fail_open_count == 2  # asking costs >= 0.25 s
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.3)
            assert (await post(app))[0] == 429  # the window's count survived the pause
        finally:
            await app.router.aclose()

    asyncio.run(run())
