"""The router's lean HTTP client against a real server process (the fake backend): keep-alive reuse,
chunked SSE bodies read as they arrive, and a server that dies mid-body."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.router.backends.wire import WireError, WirePool
from tests.serve_apps.router.conftest import FakeBackend
from tests.serve_apps.router.helpers import chat_body, expected_text


@pytest.fixture
def fake():
    server = FakeBackend("openai").start()
    yield server
    server.kill()


def head(body: bytes, port: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()


async def call(pool: WirePool, port: int, body: dict, idle: float | None = None) -> tuple[int, bytes]:
    raw = json.dumps(body).encode()
    response = await pool.request(head(raw, port), raw, 2, 5)
    chunks = []
    while chunk := await response.read_chunk(idle):
        chunks.append(chunk)
    return response.status, b"".join(chunks)


def test_keep_alive_json_and_chunked_stream(fake):
    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        status, data = await call(pool, fake.port, chat_body("w", 5))
        assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == expected_text("w", 5)
        status, data = await call(pool, fake.port, chat_body("w", 5, stream=True))  # chunked transfer
        assert status == 200 and data.endswith(b"data: [DONE]\n\n")
        assert len(pool._open) == 1  # the same connection served both
        status, data = await call(pool, fake.port, {"model": "nope", "messages": []})
        assert status == 404 and b"does not exist" in data
        pool.close()
    asyncio.run(run())


def test_server_death_mid_body_raises(fake):
    fake.control(die_after=3, delay=0.01)

    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        with pytest.raises(WireError):
            await call(pool, fake.port, chat_body("w", 20, stream=True))
        assert not pool._open  # the dead connection left the pool
    asyncio.run(run())


def test_connection_refused_is_an_os_error(fake):
    fake.kill()

    async def run():
        with pytest.raises(OSError):
            await WirePool("127.0.0.1", fake.port, 1).request(b"GET / HTTP/1.1\r\n\r\n", b"", 1, 1)
    asyncio.run(run())


def test_hanging_backend_times_out_and_its_connection_is_dropped(fake):
    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        await call(pool, fake.port, chat_body("w", 2))  # one keep-alive connection, now idle
        fake.control(mode="hang")
        raw = json.dumps(chat_body("w", 2)).encode()
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await pool.request(head(raw, fake.port), raw, 2, 0.3)
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        await asyncio.sleep(0.05)
        assert not pool._open and not pool._idle  # its late answer can never reach another request
        fake.control(mode="ok")
        status, _ = await call(pool, fake.port, chat_body("w", 2))  # a fresh connection works
        assert status == 200
        pool.close()
    asyncio.run(run())


def test_stream_slower_than_idle_timeout_raises_timeout(fake):
    fake.control(delay=0.5)

    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        with pytest.raises(TimeoutError):
            await call(pool, fake.port, chat_body("w", 5, stream=True), idle=0.2)
        pool.close()
    asyncio.run(run())


def test_idle_timeout_is_per_gap_not_per_stream(fake):
    """Events 0.1 s apart never time out at idle=0.3, however long the stream runs (the deadline moves
    with every chunk); a gap longer than idle still does."""
    fake.control(delay=0.1)

    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        started = asyncio.get_running_loop().time()
        status, data = await call(pool, fake.port, chat_body("w", 8, stream=True), idle=0.3)
        assert status == 200 and data.endswith(b"data: [DONE]\n\n")
        assert asyncio.get_running_loop().time() - started > 0.6  # the stream outlived two idle periods
        fake.control(delay=0.5)
        with pytest.raises(TimeoutError):
            await call(pool, fake.port, chat_body("w", 3, stream=True), idle=0.3)
        pool.close()
    asyncio.run(run())


def test_a_shorter_timeout_on_a_later_read_is_kept(fake):
    """The response's one timer was armed for a long first wait; a later, shorter wait still expires on
    time (the timer is moved earlier, not left at the old deadline)."""
    fake.control(delay=0.5)

    async def run():
        pool = WirePool("127.0.0.1", fake.port, 4)
        raw = json.dumps(chat_body("w", 5, stream=True)).encode()
        response = await pool.request(head(raw, fake.port), raw, 2, 5)
        assert await response.read_chunk(30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            while await response.read_chunk(0.2):
                pass
        assert loop.time() - started < 0.45  # not the 30 s deadline, nor the next event 0.5 s later
        response.close()
        pool.close()
    asyncio.run(run())
