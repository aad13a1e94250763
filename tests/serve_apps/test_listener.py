"""``serve_apps.listener`` on its own (no Ray): a real socket, a real client, a small ASGI app.

The listener coalesces the writes of one loop iteration (uvicorn writes a response's head and body
separately); these tests pin down that nothing is lost, reordered or left unsent by that: plain
responses on a kept-alive connection, streamed chunks, and a response that closes its connection.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

from serve_apps.listener import _CoalescingTransport, start_listener


async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for index in range(5):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % index, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-length", str(len(body) + 5).encode())]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b"echo:" + body})


def run_with_listener(check) -> None:
    """Start a listener on an ephemeral port, run ``check(url, port)``, close it."""

    async def main() -> None:
        started = await start_listener(app, "127.0.0.1", 0)
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
