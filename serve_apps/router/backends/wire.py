"""A lean HTTP/1.1 client for the router's data path: keep-alive connections, httptools parsing.

Why not aiohttp here: every request crosses the router, and on a small box the router's CPU per
request competes with the engine's own API server. In-process against the same vLLM server, aiohttp
cost ~0.28 ms CPU per request; this client writes each request in one ``write`` and parses with
httptools (llhttp, the parser uvicorn uses), with no per-request timers, tracing hooks or cookie
jars. It supports only what the router needs: one request at a time per connection, a response head
future, and a body read chunk by chunk (content-length or chunked), with backpressure.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httptools

IDLE_KEEP = 4.0  # drop idle connections before servers' usual 5 s keep-alive close them under us
HIGH_WATER = 1 << 20


class WireError(ConnectionError):
    pass


class WireResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], connection: _Connection) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # loop time by which the awaited chunk must arrive
        self._timer: asyncio.TimerHandle | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()
        self._cancel_timer()

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """Everything buffered so far (b"" at the end); raises ``WireError`` if the connection died
        and ``TimeoutError`` if nothing arrives for ``timeout`` seconds."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise WireError(str(self._error))
                return b""
            loop = self._connection.loop
            self._waiter = loop.create_future()
            if timeout is not None:
                # One timer per response, moved lazily: a stream waits once per event (thousands a
                # second through the router), and a timer created and cancelled per wait cost more
                # than the rest of the wait. ``_check_deadline`` re-arms itself while reads go on.
                self._deadline = loop.time() + timeout
                if self._timer is None or self._timer.when() > self._deadline:  # a shorter timeout than before
                    self._cancel_timer()
                    self._timer = loop.call_at(self._deadline, self._check_deadline)
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._connection.resume()
        return data

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait arms a new timer
        loop = self._connection.loop
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def complete(self) -> bool:
        return self._done and self._error is None and not self._chunks

    def close(self) -> None:
        """Abandon the body: an unfinished response makes its connection unusable."""
        self._cancel_timer()
        if not self._done:
            self._connection.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: WirePool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[WireResponse] | None = None
        self._response: WireResponse | None = None
        self._headers: list[tuple[str, str]] = []
        self._paused = False
        self.closed = False
        self.last_used = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(WireError(f"bad HTTP from backend: {exc}"))
            self.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._fail(WireError("connection closed by backend"))
        self._pool._discard(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._response = WireResponse(self._parser.get_status_code(), self._headers, self)
        self._headers = []
        if self._head is not None and not self._head.done():
            self._head.set_result(self._response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(bytes(body))

    def on_message_complete(self) -> None:
        response, self._response, self._head = self._response, None, None
        if response is not None:
            response._finish()
        if self._parser.should_keep_alive() and not self.closed:
            self.last_used = time.monotonic()
            self._pool._release(self)
        else:
            self.abort()

    # used by the pool / response
    def send(self, data: bytes) -> asyncio.Future[WireResponse]:
        self._head = self.loop.create_future()
        self._transport.write(data)  # type: ignore[union-attr]
        return self._head

    def _fail(self, error: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._response is not None:
            self._response._finish(error)
            self._response = None

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class WirePool:
    """Keep-alive connections to one ``host:port``; at most ``limit`` open at once."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port = host, port
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._open: set[_Connection] = set()

    def _release(self, connection: _Connection) -> None:
        self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._slots.release()
        if connection in self._idle:
            self._idle.remove(connection)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.last_used < IDLE_KEEP:
                return connection
            connection.abort()
        return None

    async def _open_connection(self, connect_timeout: float) -> _Connection:
        async with asyncio.timeout(connect_timeout):
            await self._slots.acquire()
            try:
                loop = asyncio.get_running_loop()
                _, connection = await loop.create_connection(lambda: _Connection(self, loop), self._host, self._port)
            except BaseException:
                self._slots.release()
                raise
        self._open.add(connection)
        return connection

    async def request(self, head: bytes, body: bytes, connect_timeout: float, head_timeout: float | None) -> WireResponse:
        """Send a request (``head`` ends with the blank line) and wait for the response head.

        ``head_timeout`` (None: no limit) counts from the call, connecting included; on expiry the connection is dropped
        (its late answer must not be taken for the next request's) and ``TimeoutError`` raised. A plain
        timer rather than ``asyncio.timeout``: this runs once per routed request, and the context
        manager's task lookups cost several times more."""
        loop = asyncio.get_running_loop()
        connect = connect_timeout if head_timeout is None else min(connect_timeout, head_timeout)
        deadline = None if head_timeout is None else loop.time() + head_timeout
        connection = self._take_idle() or await self._open_connection(connect)
        head_future = connection.send(head + body)
        timer = None if deadline is None else loop.call_at(deadline, _expire, head_future)
        try:
            return await head_future
        except (TimeoutError, asyncio.CancelledError):
            # No head in time, or the caller gave up (its client left): the server is still working
            # on the request, and closing the connection is how it learns to stop (vLLM aborts).
            connection.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        for connection in list(self._open):
            connection.abort()
