"""``serve_apps.listener`` on its own (no Ray): a real socket, a real client, a small ASGI app.

The listener coalesces the writes of one loop iteration (uvicorn writes a response's head and body
separately); these tests pin down that nothing is lost, reordered or left unsent by that: plain
responses on a kept-alive connection, streamed chunks, and a response that closes its connection.

Slow clients (``serve_apps.connection_limits``), with bounds of a fraction of a second: a client stalled
in its head, in its body, or idle is closed at its bound, not before; a client that is slow but moving,
or waits on the app, is never cut; a connection over the cap gets a quick 503.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from pydantic import ValidationError

from serve_apps.connection_limits import ConnectionLimits
from serve_apps.listener import _CoalescingTransport, start_listener
from serve_apps.router.config import RouterAppArgs

LIMITS = ConnectionLimits(header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=1.2, max_connections=4)
APP_WAIT = 1.2  # /slowread: the app reads its body only after this (longer than every bound of LIMITS)
STREAM_GAP = 0.6  # /slowstream: between its chunks (longer than every bound of LIMITS)


async def app(scope, receive, send):
    if scope["path"] == "/slowread":
        await asyncio.sleep(APP_WAIT)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] in ("/stream", "/slowstream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for index in range(5 if scope["path"] == "/stream" else 3):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % index, "more_body": True})
            await asyncio.sleep(0.01 if scope["path"] == "/stream" else STREAM_GAP)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-length", str(len(body) + 5).encode())]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b"echo:" + body})


def run_with_listener(check, limits: ConnectionLimits | None = None) -> None:
    """Start a listener on an ephemeral port, run ``check(url, port)``, close it."""

    async def main() -> None:
        started = await start_listener(app, "127.0.0.1", 0, limits=limits)
        try:
            await check(f"http://127.0.0.1:{started.port}", started.port)
        finally:
            await started.close()

    asyncio.run(main())


def test_responses_on_a_kept_alive_connection():
    async def check(url: str, port: int) -> None:
        async with httpx.AsyncClient(base_url=url) as client:
            for index in range(3):
                response = await client.post("/echo", content=b"x" * (index * 100_000))
                assert response.status_code == 201
                assert response.content == b"echo:" + b"x" * (index * 100_000)

    run_with_listener(check)


def test_stream_chunks_arrive_in_order():
    async def check(url: str, port: int) -> None:
        async with httpx.AsyncClient(base_url=url) as client:
            async with client.stream("GET", "/stream") as response:
                text = b"".join([chunk async for chunk in response.aiter_raw()])
        assert text == b"".join(b"chunk%d\n" % i for i in range(5))

    run_with_listener(check)


def test_connection_close_sends_the_whole_response_first():
    async def check(url: str, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /close HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        raw = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF: the server closed
        writer.close()
        assert raw.startswith(b"HTTP/1.1 201")
        assert raw.endswith(b"\r\n\r\necho:hi")

    run_with_listener(check)


def test_a_head_and_body_written_in_one_iteration_leave_as_one_send_and_stream_events_go_straight_out():
    asyncio.run(_one_send())


async def _one_send() -> None:
    left, right = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
    sends: list[bytes] = []
    original = transport.write
    transport.write = lambda data: (sends.append(data), original(data))  # count what reaches the socket
    coalescing = _CoalescingTransport(transport, loop)
    coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
    coalescing.write(b"body")
    assert sends == []  # nothing sent until the iteration ends
    await asyncio.sleep(0)
    assert sends == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    coalescing.write(b"event")  # a stream's later writes go straight out
    assert sends[-1] == b"event"
    coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the next response's head waits for its body...
    coalescing.close()  # ...or for close, which flushes first
    right.setblocking(False)
    received = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(right, 1024), 5):  # b"" once the transport closed
        received += chunk
    right.close()
    assert received == b"HTTP/1.1 200 OK\r\n\r\nbodyeventHTTP/1.1 200 OK\r\n\r\n"
    assert sends == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"event", b"HTTP/1.1 200 OK\r\n\r\n"]


# ------------------------------------------------------------------------------------------ slow clients


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response with a content-length: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def until_closed(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    received = await asyncio.wait_for(reader.read(), 10)  # returns at EOF
    return time.monotonic(), received


def assert_cut_at(closed: float, since: float, bound: float) -> None:
    assert bound - 0.05 <= closed - since <= bound + 0.5, f"closed {closed - since:.2f}s after, bound {bound}s"


def assert_408(received: bytes, says: str) -> None:
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head, received
    error = json.loads(payload)["error"]
    assert error["type"] == "timeout" and error["code"] == 408 and says in error["message"], error


def test_stalled_clients_are_cut_at_their_bound_and_not_before():
    async def dribbled_head(port: int) -> None:  # slowloris: a header line now and then, never the end
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\n")
        first_byte = time.monotonic()
        dribbling = asyncio.ensure_future(dribble(writer, [b"x-a: b\r\n"] * 20, 0.1))
        closed, received = await until_closed(reader)
        dribbling.cancel()
        writer.close()
        assert_cut_at(closed, first_byte, LIMITS.header_timeout)  # a total for the head, not between reads
        assert_408(received, "head not received within 0.5s")

    async def stalled_body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        last_byte = time.monotonic()
        closed, received = await until_closed(reader)
        writer.close()
        assert_cut_at(closed, last_byte, LIMITS.body_timeout)
        assert_408(received, "body stalled")

    async def silent_new_connection(port: int) -> None:  # no byte of a request: closed without an answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = time.monotonic()
        closed, received = await until_closed(reader)
        writer.close()
        assert_cut_at(closed, opened, LIMITS.header_timeout)
        assert received == b""

    async def idle_kept_alive(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        head, _ = await read_response(reader)
        answered = time.monotonic()
        assert head.startswith(b"HTTP/1.1 201")
        closed, received = await until_closed(reader)
        writer.close()
        assert_cut_at(closed, answered, LIMITS.keep_alive_timeout)
        assert received == b""

    async def check(url: str, port: int) -> None:
        await asyncio.gather(dribbled_head(port), stalled_body(port), silent_new_connection(port), idle_kept_alive(port))

    run_with_listener(check, LIMITS.model_copy(update={"max_connections": 100}))


async def dribble(writer: asyncio.StreamWriter, parts: list[bytes], gap: float) -> None:
    for part in parts:
        await asyncio.sleep(gap)
        writer.write(part)


def test_slow_but_moving_clients_and_clients_waiting_on_the_app_are_never_cut():
    async def slow_upload(port: int) -> None:  # 1.6 s in all, never 0.5 s without a byte
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\n")
        await dribble(writer, [b"%d" % i for i in range(8)], 0.2)
        head, body = await read_response(reader)
        writer.close()
        assert head.startswith(b"HTTP/1.1 201") and body == b"echo:01234567"

    async def app_reads_late(port: int, expect_continue: bool) -> None:  # the app's turn, not the client's
        payload = b"y" * (1 << 20)  # beyond uvicorn's 64 KiB: reading pauses until the app reads
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /slowread HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % len(payload)
        if expect_continue:
            writer.write(head + b"expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100")
        else:
            writer.write(head + b"\r\n")
        writer.write(payload)
        status, body = await read_response(reader)
        writer.close()
        assert status.startswith(b"HTTP/1.1 201") and body == b"echo:" + payload

    async def long_answer(port: int) -> None:  # gaps longer than every bound while the app answers
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slowstream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        _, received = await until_closed(reader)
        writer.close()
        assert received.startswith(b"HTTP/1.1 200") and all(b"chunk%d" % i in received for i in range(3))

    async def kept_alive_longer_than_the_head_bound(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
            head, _ = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 201")
            await asyncio.sleep(0.7)  # idle: keep_alive_timeout (1.2) counts, not header_timeout (0.5)
        writer.close()

    async def check(url: str, port: int) -> None:
        await asyncio.gather(slow_upload(port), app_reads_late(port, False), app_reads_late(port, True),
                             long_answer(port), kept_alive_longer_than_the_head_bound(port))

    run_with_listener(check, LIMITS.model_copy(update={"max_connections": 100}))


def test_connections_beyond_max_connections_get_a_quick_503_and_the_slot_comes_back():
    async def check(url: str, port: int) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
        await asyncio.sleep(0.05)  # accepted
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        closed, received = await until_closed(reader)
        writer.close()
        assert closed - started < 0.3
        head, _, payload = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" in head and b"retry-after: 1" in head
        assert b"content-type: application/json" in head
        error = json.loads(payload)["error"]
        assert error["type"] == "service_unavailable" and "too many connections" in error["message"], error
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/echo")).status_code == 201

    run_with_listener(check, LIMITS)


def test_the_listen_section_carries_the_bounds_validated():
    backends = [{"name": "a", "kind": "openai", "url": "http://a.invalid", "models": ["m"]}]
    listen = RouterAppArgs.model_validate({"backends": backends, "router": {"listen": {"port": 8001}}}).router.listen
    assert listen is not None
    assert (listen.header_timeout, listen.body_timeout, listen.keep_alive_timeout, listen.max_connections) == (10, 60, 75, 4096)
    custom = RouterAppArgs.model_validate({"backends": backends, "router": {"listen": {
        "port": 8001, "body_timeout": 300, "max_connections": 100}}})
    assert custom.router.listen is not None and custom.router.listen.body_timeout == 300
    for bad in ({"header_timeout": 0}, {"max_connections": 0}, {"body_timout": 5}):
        with pytest.raises(ValidationError, match="router.listen." + next(iter(bad))):
            RouterAppArgs.model_validate({"backends": backends, "router": {"listen": {"port": 8001, **bad}}})
