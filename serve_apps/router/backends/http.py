"""HTTP plumbing of the HTTP backend kinds: one client per backend, and its body streams.

``wire`` (lean keep-alive HTTP/1.1) carries plain-HTTP backends on the data path; aiohttp carries TLS
backends and health probes. Why not httpx: its connection pool cost most of the router's CPU per
request in ``loadtests/bench_router.py``; ``wire`` spends less than aiohttp (figures in docs/router.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from serve_apps.router.backends.base import DEADLINE, BackendResponse, BackendUnavailable, IdleStream
from serve_apps.router.backends.wire import WireError, WirePool, WireResponse
from serve_apps.router.config import BackendConfig

HOP_BY_HOP = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


class AiohttpStream(IdleStream):
    """Body of an aiohttp response as it arrives (``readany``: no re-framing)."""

    def __init__(self, response: aiohttp.ClientResponse, idle: float) -> None:
        super().__init__(idle)
        self._response = response

    async def _read(self) -> bytes | None:
        async with asyncio.timeout(self._idle):
            return await self._response.content.readany() or None

    def _broken(self, exc: Exception) -> str | None:
        return type(exc).__name__ if isinstance(exc, (aiohttp.ClientError, ConnectionError)) else None

    async def aread(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle):
                return await self._response.read()
        except TimeoutError:
            raise BackendUnavailable("timeout", "body not complete within idle timeout") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise BackendUnavailable("disconnect", type(exc).__name__) from None
        finally:
            self._response.release()

    async def aclose(self) -> None:
        # close() drops the connection if the body was not fully read (a half-read stream cannot
        # be reused); release() after a complete read keeps it in the pool.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class WireStream(IdleStream):
    """Body of a ``wire`` response."""

    def __init__(self, response: WireResponse, idle: float) -> None:
        super().__init__(idle)
        self._response = response

    async def _read(self) -> bytes | None:
        return await self._response.read_chunk(self._idle) or None

    def _broken(self, exc: Exception) -> str | None:
        return str(exc) if isinstance(exc, WireError) else None

    async def aclose(self) -> None:
        self._response.close()


class HTTPClient:
    """The HTTP side of a backend (see the module docstring for which transport carries what)."""

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(config.url or "")
        self._base = config.url or ""
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc
        self._wire: WirePool | None = None
        if parts.scheme == "http" and parts.hostname:
            self._wire_target = (parts.hostname, parts.port or 80)
        else:
            self._wire_target = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeouts = self._config.timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=timeouts.connect, sock_connect=timeouts.connect
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, stream: bool = True
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response head (``timeouts.head``)."""
        try:
            async with asyncio.timeout(self._config.timeouts.head(stream)):
                return await self.session.request(method, url, headers=headers, data=body)
        except TimeoutError:
            raise head_timeout(stream) from None
        except aiohttp.ClientConnectorError as exc:
            raise BackendUnavailable("connect", type(exc).__name__) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise BackendUnavailable("disconnect", type(exc).__name__) from None

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   stream: bool = True) -> BackendResponse:
        """``stream``: whether the answer streams (it picks the head timeout, see ``Timeouts``)."""
        if self._wire_target is not None and url.startswith(self._base):
            return await self._send_wire(method, self._prefix + url[len(self._base):], headers, body or b"", stream)
        response = await self.request(method, url, headers, body, stream)
        head = [(k.lower(), v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
        return BackendResponse(response.status, head, AiohttpStream(response, self._config.timeouts.idle))

    async def _send_wire(self, method: str, path: str, headers: dict[str, str], body: bytes,
                         stream: bool) -> BackendResponse:
        timeouts = self._config.timeouts
        if self._wire is None:
            self._wire = WirePool(*self._wire_target, self._config.max_connections)  # type: ignore[misc]
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"{method} {path} HTTP/1.1\r\nhost: {self._host_header}\r\n{lines}content-length: {len(body)}\r\n\r\n"
        try:
            response = await self._wire.request(head.encode("latin-1"), body, timeouts.connect, timeouts.head(stream))
        except TimeoutError:
            raise head_timeout(stream) from None
        except WireError as exc:
            raise BackendUnavailable("disconnect", str(exc)) from None
        except OSError as exc:
            raise BackendUnavailable("connect", type(exc).__name__) from None
        head_list = [(k, v) for k, v in response.headers if k not in HOP_BY_HOP]
        return BackendResponse(response.status, head_list, WireStream(response, timeouts.idle))

    async def get(self, url: str, headers: dict[str, str] | None = None) -> bytes | None:
        """A probe's GET: the body of a 2xx answer within ``health.timeout``, else None."""
        try:
            async with asyncio.timeout(self._config.health.timeout):
                async with self.session.get(url, headers=headers or {}) as response:
                    body = await response.read()
                    return body if 200 <= response.status < 300 else None
        except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
            return None

    async def get_ok(self, url: str, headers: dict[str, str] | None = None) -> bool:
        """Health probe: True on a 2xx answer within ``health.timeout``."""
        return await self.get(url, headers) is not None

    async def aclose(self) -> None:
        if self._wire is not None:
            self._wire.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()


def head_timeout(stream: bool) -> BackendUnavailable:
    """The failure of a response head that did not come in time: for a stream the backend is hung
    (fall back); a non-streaming answer simply took longer than ``timeouts.response`` allows."""
    if stream:
        return BackendUnavailable("timeout", "no response head within first_byte timeout")
    return BackendUnavailable(DEADLINE, "the answer was not complete within timeouts.response")


def bearer_headers(token_factory: Callable[[], str | None]) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    token = token_factory()
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers
