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

Several router replicas on one node share the port through ``SO_REUSEPORT`` (the kernel spreads
connections over them). Serve still owns the replica's lifecycle, config, health and the ordinary
ingress on its HTTP port; requests on this port are not counted by Serve's autoscaler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

logger = logging.getLogger("ray.serve")
BACKLOG = 2048
# Set in a request's scope when its client left and the listener cancelled it: that cancellation is
# the expected end of the request, not an error to log.
CLIENT_GONE = "ray_serve_cai.client_gone"


class Listener:
    """A started listener; ``close()`` stops accepting and shuts its connections down."""

    def __init__(self, server: asyncio.Server, state: ServerState, host: str, port: int) -> None:
        self._server = server
        self._state = state
        self.host, self.port = host, port

    @property
    def serving(self) -> bool:
        return self._server.is_serving()

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


class _Protocol(HttpToolsProtocol):
    _task: asyncio.Task[None] | None = None
    _task_cycle: RequestResponseCycle | None = None
    cancel_on_disconnect = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's own body (without its opt-in ``reset_contextvars``), keeping the task: uvicorn
        # holds it only in a server-wide set, where a lost connection cannot find it.
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._task, self._task_cycle = task, cycle

    def connection_lost(self, exc: Exception | None) -> None:
        cycle, task = self.cycle, self._task
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


async def start_listener(app: Any, host: str, port: int, cancel_on_disconnect: bool = False) -> Listener:
    """Serve ``app`` (ASGI, HTTP only: no lifespan) on ``host:port`` from the running loop;
    ``cancel_on_disconnect``: see the module docstring."""
    protocol = _CancellingProtocol if cancel_on_disconnect else _Protocol
    config = Config(_cancellable(app) if cancel_on_disconnect else app, http="httptools", lifespan="off", access_log=False, proxy_headers=False,
                    server_header=False, date_header=False, log_config=None, timeout_keep_alive=75)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    sock = bind_socket(host, port)
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}, _loop=loop),
        sock=sock, backlog=BACKLOG)
    bound_port = sock.getsockname()[1]
    logger.info("listener on http://%s:%d (event loop: %s)", host, bound_port, type(loop).__module__)
    return Listener(server, state, host, bound_port)
