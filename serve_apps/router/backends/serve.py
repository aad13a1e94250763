"""``kind: serve`` -- engine replicas of the same Serve app, over HTTP to each replica's own port or
through their DeploymentHandle.

Two transports, one body format (exactly what vLLM's HTTP server sends):

- HTTP (``transport: auto``, the default, wherever replicas publish a port): each engine worker
  serves its guarded OpenAI app on an ephemeral port of its node and says where (and the token that
  port requires) through ``endpoint()``. The backend learns the endpoints
  on every health round (asking the handle a few times, so every replica is met) and spreads requests
  over them: least outstanding first, or (``routing: prefix_affinity``) to the replica that already
  served the prompt's prefix (``serve_apps.router.affinity``). Measured faster for streams: one
  socket write per chunk.
- the handle: ``forward(method, path, headers, body)`` streams a head dict then body bytes; each
  streamed item costs one Ray object / gRPC message. Used when no endpoint is known yet, when
  ``transport: handle``, and for one request whose endpoint refused the connection (a replica that
  just went away), so a replica change is never a client-visible error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.router.affinity import PrefixAffinity
from serve_apps.router.backends.base import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    GENERATION_ROUTES,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    ByteStream,
    IteratorStream,
)
from serve_apps.router.backends.http import HTTPClient, head_timeout
from serve_apps.router.config import BackendConfig
from serve_apps.router.metrics import RouterMetrics

GENERATION_PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})  # a /tokenize on the side follows load
FORWARD_HEADERS = [("content-type", "application/json")]
FORWARD_HEADERS_DICT = dict(FORWARD_HEADERS)


def _is_transport_error(exc: BaseException) -> bool:
    """Ray errors (dead actor, unavailable replica, lost object) vs. bugs in our own code."""
    module = type(exc).__module__ or ""
    return module.startswith("ray") or isinstance(exc, (ConnectionError, OSError))


class HandleStream(IteratorStream):
    """Body items of a streaming DeploymentHandle call."""

    def _broken(self, exc: Exception) -> str | None:
        return type(exc).__name__ if _is_transport_error(exc) else None

    async def aclose(self) -> None:
        self._source.cancel()  # type: ignore[attr-defined]  # a DeploymentResponseGenerator


class ServeBackend(Backend):
    kind = "serve"
    can_resume = True  # the replica runs vLLM, which honours continue_final_message
    paths = GENERATION_ROUTES  # vLLM's own app answers each (404 where the model does not serve it)

    def __init__(self, config: BackendConfig, handle: Any, metrics: RouterMetrics | None = None) -> None:
        super().__init__(config)
        if handle is None:
            raise ValueError(f"backend {config.name!r}: kind serve needs a DeploymentHandle")
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._health_path = config.health.path or "/health"
        self._endpoints: dict[str, _Endpoint] = {}
        self._metrics = metrics
        self._affinity: PrefixAffinity | None = None
        if config.routing == "prefix_affinity":
            settings = config.affinity
            self._affinity = PrefixAffinity(settings.block_size, settings.capacity, settings.spill_margin,
                                            settings.min_gain)
        # Until a health probe passes, calls through the handle would queue behind replicas that are
        # still loading their engine (a minute or more): refuse at once instead, so the client gets 503.
        self._up = False

    def describe(self) -> dict[str, object]:
        # endpoints are only ever learned with transport auto, so they alone say which path is in use
        load = {}
        for url in sorted(self._endpoints):
            endpoint = self._endpoints[url]
            load[url] = {"outstanding": endpoint.outstanding, "requests": endpoint.requests}
            if self._affinity is not None:
                load[url].update(self._affinity.endpoint_stats(url))
        facts: dict[str, object] = {"transport": "http" if self._endpoints else "handle",
                                    "endpoints": sorted(self._endpoints), "routing": self.config.routing,
                                    "endpoint_load": load}
        if self._affinity is not None:
            facts["affinity"] = self._affinity.describe()
        return facts

    async def _open(self, method: str, path: str, body: bytes, wait: float | None,
                    late: BackendUnavailable | None = None) -> BackendResponse:
        """The head of ``forward`` through the handle within ``wait`` (None: no limit); ``late`` is
        the failure when it does not come."""
        generator = self._stream_handle.forward.remote(method, path, FORWARD_HEADERS, body)
        try:
            async with asyncio.timeout(wait):
                head = await generator.__anext__()
        except TimeoutError:
            generator.cancel()
            raise late or BackendUnavailable("timeout", "no response head within the probe timeout") from None
        except asyncio.CancelledError:
            generator.cancel()  # the caller's client left: Serve cancels the replica's call (vLLM aborts)
            raise
        except StopAsyncIteration:
            raise BackendUnavailable("protocol", "replica sent no response head") from None
        except Exception as exc:
            generator.cancel()
            if not _is_transport_error(exc):
                raise
            raise BackendUnavailable("connect", type(exc).__name__) from None
        if not isinstance(head, dict) or "status" not in head:
            generator.cancel()
            raise BackendUnavailable("protocol", "first item is not a response head")
        headers = [(k.lower(), v) for k, v in head.get("headers", [])]
        return BackendResponse(int(head["status"]), headers, HandleStream(generator, self.config.timeouts.idle))

    async def send(self, request: BackendRequest) -> BackendResponse:
        # A replica that dies refuses connections, or, while its process is still exiting, accepts
        # them and closes them unanswered. Before any response head either means "not this replica":
        # try the others (a refused one is dropped, and with affinity its prefixes move), then the
        # handle. Once a head has arrived, failures are the router's (fallback / resume).
        keys = None
        if self._affinity is not None and len(self._endpoints) > 1 and request.path in GENERATION_PATHS:
            keys = self._affinity.keys(request.payload)  # once per request, O(prompt length)
        tried: set[str] = set()
        broken: BackendUnavailable | None = None
        for _ in range(len(self._endpoints)):
            endpoint = self._pick(keys, tried)
            if endpoint is None:
                break
            tried.add(endpoint.url)
            endpoint.outstanding += 1
            endpoint.requests += 1
            try:
                response = await endpoint.client.send(request.method, endpoint.url + request.path,
                                                      endpoint.headers, request.body, request.stream)
            except BackendUnavailable as exc:
                endpoint.outstanding -= 1
                if exc.reason == "disconnect":
                    broken = exc
                    continue
                if exc.reason != "connect":
                    raise
                await self._drop(endpoint.url)  # gone; its replacement shows up on a later round
            except BaseException:
                endpoint.outstanding -= 1
                raise
            else:
                response.stream = _CountedStream(response.stream, endpoint)
                return response
        if broken is not None and set(self._endpoints) <= tried:
            raise broken
        if not self._up:
            raise BackendUnavailable("starting", "engine replicas are still starting")
        return await self._open(request.method, request.path, request.body,
                                self.config.timeouts.head(request.stream), head_timeout(request.stream))

    def _pick(self, keys: list[int] | None, tried: set[str]) -> _Endpoint | None:
        endpoints = self._endpoints
        if tried:
            endpoints = {url: e for url, e in endpoints.items() if url not in tried}
        if not endpoints:
            return None
        if self._affinity is None or keys is None:
            return min(endpoints.values(), key=lambda e: (e.outstanding, random.random()))
        choice = self._affinity.choose(keys, {url: e.outstanding for url, e in endpoints.items()})
        if self._metrics is not None:
            self._metrics.affinity(self.name, choice.outcome)
        return endpoints[choice.endpoint]

    async def _drop(self, url: str) -> None:
        endpoint = self._endpoints.pop(url, None)
        if self._affinity is not None:
            self._affinity.forget(url)
        if endpoint is not None:
            await endpoint.client.aclose()

    async def check_health(self) -> bool:
        if self.config.transport == "auto":
            await self._refresh_endpoints()
        try:
            response = await self._open("GET", self._health_path, b"", self.config.health.timeout)
            await response.aread()
        except BackendUnavailable:
            return False
        if response.status == 200:
            self._up = True
        return response.status == 200

    async def _refresh_endpoints(self) -> None:
        """Ask the deployment for its replicas' endpoints. Serve spreads the calls over replicas, so
        ask more times than there are known endpoints; keep the ones that answered."""
        asks = 2 * len(self._endpoints) + 4
        try:
            async with asyncio.timeout(self.config.health.timeout):
                answers = await asyncio.gather(*(self._handle.endpoint.remote() for _ in range(asks)),
                                               return_exceptions=True)
        except TimeoutError:
            return
        seen = {a["url"]: a["token"] for a in answers
                if isinstance(a, dict) and str(a.get("url", "")).startswith("http://") and a.get("token")}
        if not seen:
            return  # no listener anywhere (or calls failed): keep what we had; connect errors prune it
        for url, endpoint in list(self._endpoints.items()):
            if url in seen:
                endpoint.missed = 0
            elif endpoint.outstanding == 0:
                endpoint.missed += 1
                # Not met in three rounds: Serve's handle may just have favoured the other replicas,
                # so ask the port itself before dropping it (dropping forgets its prefixes).
                if endpoint.missed >= 3:
                    if await endpoint.client.get_ok(url + self._health_path, endpoint.headers):
                        endpoint.missed = 0
                    else:
                        await self._drop(url)
        for url in seen.keys() - self._endpoints.keys():
            headers = {**FORWARD_HEADERS_DICT, "authorization": f"Bearer {seen[url]}"}
            self._endpoints[url] = _Endpoint(url, HTTPClient(self.config.model_copy(update={"url": url})), headers)

    async def aclose(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.client.aclose()
        self._endpoints.clear()


class _CountedStream(ByteStream):
    """Keeps its request counted against the endpoint until the body is read or closed, so "least
    outstanding" sees running streams, not only requests still waiting for their response head."""

    def __init__(self, inner: ByteStream, endpoint: _Endpoint) -> None:
        self._inner = inner
        self._endpoint: _Endpoint | None = endpoint

    def _release(self) -> None:
        if self._endpoint is not None:
            self._endpoint.outstanding -= 1
            self._endpoint = None

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        finally:
            self._release()

    async def aclose(self) -> None:
        self._release()
        await self._inner.aclose()


class _Endpoint:
    __slots__ = ("url", "client", "headers", "outstanding", "requests", "missed")

    def __init__(self, url: str, client: HTTPClient, headers: dict[str, str]) -> None:
        self.url, self.client, self.headers = url, client, headers  # headers carry the replica's token
        self.outstanding = 0
        self.requests = 0  # sent by this router replica since the endpoint was learned
        self.missed = 0
