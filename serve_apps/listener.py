"""A data-plane listener: an ASGI app on a port of its own, beside Serve's ingress and handles.

Used by the router (``router.listen``) and by engine workers (an ephemeral port the router streams
from: cheaper than a Ray object per chunk). Why for the router: every request crosses it, and Serve's
per-request machinery (proxy hop, request ids, queue accounting, replica metrics) costs CPU on every
request on top of the router's own work, CPU taken from the engine on a small box
(``loadtests/bench_router.py`` compares both paths; figures in docs/router.md). The listener runs uvicorn's httptools protocol on the replica's own event loop,
so a request costs one parse, the routing decision, and one write (head and body coalesced).

A client that goes away: uvicorn flags the disconnect (``receive()`` answers ``http.disconnect``, later
writes are dropped), which vLLM's own app watches for and aborts on, so engine workers keep that. The
router never reads ``receive()`` after the body, so a generation nobody reads would run on to its end;
with ``cancel_on_disconnect`` (the router's listener) the request's task is cancelled instead when its
connection is lost before the response completed, and cancellation closes its backend connection on the
way out. Not for vLLM's app: cancelling it from outside orphans the task vLLM generates in.

Slow clients (``serve_apps.connection_limits`` has the bounds and their defaults): each connection has
one timer and a phase: *fresh* (accepted, no byte yet), *head* (a request's head is arriving), *body*
(its body is) or *idle* (between requests). Moving between phases stores a phase and a clock reading,
nothing else: no timer is armed or cancelled per request (uvicorn's own keep-alive timer, one arm and
one cancel per request, is replaced by this). The timer wakes at most every half of the smallest bound,
works out when the client's turn ends, closes the connection if it has, and otherwise sleeps until then.
It is not the client's turn while an answer is being produced, while flow control paused reading or
``Expect: 100-continue`` waits for the app: then nothing is closed. A client cut in its head or body gets
a 408 (OpenAI-style JSON, ``Connection: close``); a fresh or idle one is closed without a word, as
servers do. A connection beyond ``max_connections`` gets a 503 at once and is closed (``_Refused``).

Several router replicas on one node share the port through ``SO_REUSEPORT`` (the kernel spreads
connections over them). Serve still owns the replica's lifecycle, config, health and the ordinary
ingress on its HTTP port; requests on this port are not counted by Serve's autoscaler.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Any

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from serve_apps.connection_limits import ConnectionLimits
from serve_apps.openai_format import error_body

logger = logging.getLogger("ray.serve")
BACKLOG = 2048
# Set in a request's scope when its client left and the listener cancelled it: that cancellation is
# the expected end of the request, not an error to log.
CLIENT_GONE = "ray_serve_cai.client_gone"
REFUSED_LINGER = 1.0  # seconds a refused connection may stay to read its 503 (closed earlier on the client's EOF)
# a connection's phase: what the listener waits for from the client (see the module docstring)
_FRESH, _HEAD, _BODY, _IDLE = range(4)


class Listener:
    """A started listener; ``close()`` stops accepting and shuts its connections down."""

    def __init__(self, server: asyncio.Server, state: ServerState, host: str, port: int) -> None:
        self._server = server
        self._state = state
        self.host, self.port = host, port

    @property
    def serving(self) -> bool:
        return self._server.is_serving()

    @property
    def connections(self) -> int:
        """Connections open now (a refused one, answered 503 and closing, is not counted)."""
        return len(self._state.connections)

    async def close(self) -> None:
        self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()
        await asyncio.sleep(0)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"listener cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class _CoalescingTransport:
    """Sends a response's head together with what follows it in the same loop iteration. uvicorn
    writes the head and the body separately; on loopback every write is a syscall that also runs the
    receiver's TCP path, so a routed request paid one more of those than it needs. Other writes (a
    stream's events, one per token) go straight out: holding each for a loop callback cost more than
    it saved."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.append(data)
        elif data.startswith(b"HTTP/"):  # a response head: its body is usually written next
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _closing_response(status: int, message: str, headers: bytes = b"") -> bytes:
    body = error_body(status, message)
    return (STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (len(body), headers) + body)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """``ConnectionLimits`` as one listener applies them: the answers it closes with, built once."""

    header: float
    body: float
    idle: float
    poll: float  # the longest the timer sleeps without looking: half the smallest bound
    max_connections: int
    head_late: bytes
    body_late: bytes
    refused: bytes

    @classmethod
    def of(cls, limits: ConnectionLimits) -> _Bounds:
        cap = _connection_cap(limits.max_connections)
        return cls(limits.header_timeout, limits.body_timeout, limits.keep_alive_timeout,
                   min(limits.header_timeout, limits.body_timeout, limits.keep_alive_timeout) / 2, cap,
                   _closing_response(408, f"request head not received within {limits.header_timeout:g}s"),
                   _closing_response(408, f"request body stalled: nothing received for {limits.body_timeout:g}s"),
                   _closing_response(503, f"too many connections to this listener (limit {cap}); retry shortly",
                                     b"retry-after: 1\r\n"))


def _connection_cap(configured: int) -> int:
    """``configured``, at most half the open-file limit: a routed request also holds a backend connection."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or configured <= soft // 2:
        return configured
    cap = max(1, soft // 2)
    logger.warning("listener: max_connections %d is more than half the open-file limit (%d); using %d "
                   "(raise `ulimit -n` for more)", configured, soft, cap)
    return cap


class _Refused(asyncio.Protocol):
    """A connection beyond ``max_connections``: its 503 is written at once, its request is read and
    dropped (closing on unread data would reset the connection before the client saw the 503), and it
    is closed on the client's EOF or after ``REFUSED_LINGER``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, response: bytes) -> None:
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()  # a client reading to EOF has its answer now
        self._timer = loop.call_later(REFUSED_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class _Protocol(HttpToolsProtocol):
    _task: asyncio.Task[None] | None = None
    _task_cycle: RequestResponseCycle | None = None
    _timer: asyncio.TimerHandle | None = None
    cancel_on_disconnect = False

    def __init__(self, bounds: _Bounds, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bounds = bounds
        self._phase = _FRESH
        self._since = self._read_at = 0.0  # when the phase began; the last read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._bounds.max_connections:
            transport.set_protocol(_Refused(transport, self.loop, self._bounds.refused))  # type: ignore[arg-type]
            return
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._since = self._read_at = now = self.loop.time()
        self._timer = self.loop.call_at(now + self._bounds.poll, self._look)

    # -- the phases: a store and a clock reading per transition, no timer work

    def data_received(self, data: bytes) -> None:
        self._read_at = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._since = _HEAD, self._read_at

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = _BODY

    def on_response_complete(self) -> None:
        # uvicorn's own body, without its keep-alive timer (``_look`` bounds the idle phase)
        self.server_state.total_requests += 1
        # a pipelined request next (rare): its body's clock starts now, reading was paused until now
        self._phase, self._since = (_BODY if self.pipeline else _IDLE), self.loop.time()
        self._read_at = self._since
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def handle_websocket_upgrade(self) -> None:
        self._stop_timer()  # the connection is the websocket protocol's from here
        super().handle_websocket_upgrade()

    # -- the timer

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _turn_ends(self, now: float) -> float | None:
        """When the client's turn ends; None while it is not the client's turn."""
        cycle, bounds = self.cycle, self._bounds
        if self._phase == _BODY:
            if not cycle.more_body or cycle.response_complete:
                return None  # the body is in: the app's turn (idle again when its answer is complete)
            if self.flow.read_paused or cycle.waiting_for_100_continue:
                self._read_at = now  # the app is not reading: the client's clock restarts when it does
                return None
            return self._read_at + bounds.body
        if cycle is not None and not cycle.response_complete:
            return None  # an answer is being produced (a next request may be arriving behind it)
        return self._since + (bounds.idle if self._phase == _IDLE else bounds.header)

    def _look(self) -> None:
        self._timer = None
        if self.transport.is_closing() and not self.transport.get_write_buffer_size():
            return  # closed, or closing once its last bytes are sent (else bounded as idle: see ``_cut``)
        now = self.loop.time()
        ends = self._turn_ends(now)
        if ends is not None and now + 0.001 >= ends:
            self._cut()
            return
        wake = now + self._bounds.poll
        self._timer = self.loop.call_at(wake if ends is None or ends > wake else ends, self._look)

    def _cut(self) -> None:
        """Close a connection whose client's turn ran out: with a 408 when it was inside a request."""
        transport = self.transport
        if self._phase == _HEAD:
            transport.write(self._bounds.head_late)
        elif self._phase == _BODY:
            transport.write(self._bounds.body_late)
        transport.close()
        if transport.get_write_buffer_size():  # the client reads nothing either: do not wait for it
            transport.abort()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's own body (without its opt-in ``reset_contextvars``), keeping the task: uvicorn
        # holds it only in a server-wide set, where a lost connection cannot find it.
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._task, self._task_cycle = task, cycle

    def connection_lost(self, exc: Exception | None) -> None:
        cycle, task = self.cycle, self._task
        self._stop_timer()
        super().connection_lost(exc)
        if (self.cancel_on_disconnect and cycle is not None and cycle.disconnected and cycle is self._task_cycle
                and task is not None and not task.done()):
            cycle.scope[CLIENT_GONE] = True
            task.cancel()


def _cancellable(app: Any) -> Any:
    """``app`` ending quietly when the listener cancels it for a client that left."""

    async def run(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if not scope.get(CLIENT_GONE):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    return run


class _CancellingProtocol(_Protocol):
    cancel_on_disconnect = True


async def start_listener(app: Any, host: str, port: int, cancel_on_disconnect: bool = False,
                         limits: ConnectionLimits | None = None) -> Listener:
    """Serve ``app`` (ASGI, HTTP only: no lifespan) on ``host:port`` from the running loop;
    ``cancel_on_disconnect`` and ``limits`` (defaults: ``ConnectionLimits()``): see the module docstring."""
    protocol = _CancellingProtocol if cancel_on_disconnect else _Protocol
    bounds = _Bounds.of(limits or ConnectionLimits())
    # uvicorn's keep-alive timer is not used (``_Protocol.on_response_complete``): ``bounds.idle`` is
    config = Config(_cancellable(app) if cancel_on_disconnect else app, http="httptools", lifespan="off", access_log=False, proxy_headers=False,
                    server_header=False, date_header=False, log_config=None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    sock = bind_socket(host, port)
    server = await loop.create_server(
        lambda: protocol(bounds, config=config, server_state=state, app_state={}, _loop=loop),
        sock=sock, backlog=BACKLOG)
    bound_port = sock.getsockname()[1]
    logger.info("listener on http://%s:%d (event loop: %s)", host, bound_port, type(loop).__module__)
    return Listener(server, state, host, bound_port)
