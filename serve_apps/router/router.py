"""The routing core: pick a backend, fall back on failure, relay (and resume) streams.

Kept free of Serve and ASGI so its logic reads in one sitting; ``app.py`` wraps it in a deployment and
``asgi.py`` speaks HTTP. Fallback rules: connect errors, timeouts, dead streams, 5xx and 429 move the
request to the next candidate (a 429's Retry-After keeps that backend out for that long); any other
4xx is the client's own mistake and goes back to it untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from serve_apps.asgi import JSON_HEADERS, Reply
from serve_apps.openai_format import SSE_DONE, error_body, error_event, error_reply
from serve_apps.router import streaming
from serve_apps.router.access import allowed_routes, unknown_key
from serve_apps.router.accounting import USAGE_KEY, Usage, UsageTap, ask_for_usage, insert_member, usage_from_body
from serve_apps.router.backends.base import (
    DEADLINE,
    STARTING,
    UNSUPPORTED,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
)
from serve_apps.router.config import RouterConfig
from serve_apps.router.health import CircuitBreaker, HealthMonitor
from serve_apps.router.keys import ANONYMOUS_KEY, ApiKey, KeyTable
from serve_apps.router.lease import Lease
from serve_apps.router.limits import Limiter
from serve_apps.router.metrics import RouterMetrics
from serve_apps.router.payload import is_openai_error, retry_after, routed_model, wrong_type
from serve_apps.router.pool import BackendPool, BackendState, Readiness, Route, UnknownBackend

logger = logging.getLogger("ray.serve")
# 429: overloaded. 401/403: the backend refused the router's own credentials (client credentials are
# never forwarded), which no client can fix. Every other 4xx is the client's and goes back to it.
BACKEND_FAULT_4XX = frozenset({401, 403, 429})
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


@dataclass(slots=True)
class Attempt:
    """Bookkeeping of one request across its fallbacks."""

    failed: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    retry_after: float | None = None


@dataclass(slots=True)
class Charge:
    """Whose tokens a request spends, and whether the client's stream must not show the usage chunk
    the router asked for on its behalf."""

    key: ApiKey
    strip_usage: bool = False


class Router:
    def __init__(self, config: RouterConfig, backends: list[Backend], metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        states = []
        for backend in backends:
            breaker = CircuitBreaker(backend.config.breaker)
            breaker.on_change = lambda s, name=backend.name: self.metrics.set_breaker(name, s)
            states.append(BackendState(backend, breaker))
        self.pool = BackendPool(states)
        self.keys = KeyTable.load(config.auth.api_keys, config.auth.keys)
        self.limiter = Limiter.build(config.auth.redis, self.metrics)
        # a client may retry a 503 once the backends' next health round has had a chance to see them back
        interval = min((b.config.health.interval for b in backends), default=1.0)
        self._retry_after_503 = str(max(1, math.ceil(interval))).encode()
        self._monitor = HealthMonitor(backends, self._on_health)

    def start(self) -> None:
        for state in self.pool.states.values():
            self.metrics.set_breaker(state.name, state.breaker.state)
            self.metrics.set_health(state.name, False)  # every series exists from the start; a probe follows at once
        self._monitor.start()

    async def aclose(self) -> None:
        await self._monitor.stop()
        for state in self.pool.states.values():
            await state.backend.aclose()
        await self.limiter.aclose()

    def _on_health(self, backend: Backend, healthy: bool) -> None:
        state = self.pool.states[backend.name]
        if state.healthy != healthy:
            logger.info("backend %s is now %s", backend.name, "healthy" if healthy else "unhealthy")
        state.healthy = healthy
        self.metrics.set_health(backend.name, healthy)
        # Re-published every round, not only on change: a gauge recorded once, before the node's
        # metrics agent is connected, never reaches Prometheus.
        self.metrics.set_breaker(backend.name, state.breaker.state)

    @property
    def ready(self) -> bool:
        """Every backend has had its first health probe, so a request gets a considered answer."""
        return self._monitor.first_round_done

    def readiness(self) -> Readiness:
        """Whether every configured model can be generated now (see ``BackendPool.readiness``)."""
        return self.pool.readiness()

    # ------------------------------------------------------------------ generation

    async def generate(self, path: str, raw: bytes, header_backend: str | None, key: ApiKey = ANONYMOUS_KEY) -> Reply:
        """Answer one generation request of ``key`` (its allow-lists, limits and token account)."""
        try:
            return await self._generate(path, raw, header_backend, key)
        except RecursionError:
            # Only a client's nesting makes the JSON codec (or a translation) recurse this deep; the
            # depth at which it happens depends on the caller's stack, so catch it wherever it is.
            return error_reply(400, "request body is nested too deeply", "invalid_request_error")

    async def generate_as(self, path: str, raw: bytes, backend: str | None, key_name: str | None) -> Reply:
        """``generate`` for a caller inside the app that acts for the key called ``key_name`` (a batch
        job line, the Matrix bot): the same allow-lists, limits and accounting as over HTTP."""
        key = self.keys.named(key_name)
        if key is None:
            return unknown_key(key_name)
        return await self.generate(path, raw, backend, key)

    def refusal(self, key: ApiKey, path: str, model: str | None, explicit: str | None) -> Reply | None:
        """The error a request of ``key`` for ``model`` (on backend ``explicit``) gets before any backend
        is asked (an unknown or forbidden model or backend); None when it may go ahead."""
        routes = self._routes(key, path, model, explicit)
        return routes if isinstance(routes, Reply) else None

    def _routes(self, key: ApiKey, path: str, model: str | None, explicit: str | None) -> list[Route] | Reply:
        if not self.pool.knows_model(model):
            return error_reply(404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")
        try:
            routes = self.pool.plan(model, path, explicit)
        except UnknownBackend:
            known = ", ".join(self.pool.states)
            return error_reply(400, f"unknown backend {explicit!r}; known: {known}", "invalid_request_error")
        if not routes:
            return error_reply(404, f"no backend serves {path} for model `{model}`", "invalid_request_error")
        if key.models is not None or key.backends is not None:
            return allowed_routes(key, routes, model, explicit)
        return routes

    async def _generate(self, path: str, raw: bytes, header_backend: str | None, key: ApiKey) -> Reply:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return error_reply(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(payload, dict):
            return error_reply(400, "request body must be a JSON object", "invalid_request_error")
        body_backend = payload.pop("backend", None)
        explicit = body_backend or header_backend
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            return error_reply(400, "`model` must be a string", "invalid_request_error")
        if explicit is not None and not isinstance(explicit, str):
            return error_reply(400, "`backend` must be a string", "invalid_request_error")
        wrong = wrong_type(payload)
        if wrong is not None:
            return error_reply(400, wrong, "invalid_request_error")
        routes = self._routes(key, path, model, explicit)
        if isinstance(routes, Reply):
            return routes
        limit_headers: list[tuple[bytes, bytes]] = []
        if key.limited:
            decision = await self.limiter.admit(key)
            if not decision.allowed:
                return decision.refusal(key)
            limit_headers = decision.headers
        stream = bool(payload.get("stream"))
        charge = Charge(key)
        if stream and streaming.has_stream_options(path) and not streaming.wants_usage(payload):
            raw, payload = ask_for_usage(raw, payload)  # counted here, removed from the client's stream
            charge.strip_usage = True
        attempt = Attempt()
        reply = None
        for route in routes[: self.config.max_attempts]:
            body, routed = self._body_for(route, raw, payload, model, body_backend is not None)
            reply = await self._try(route, BackendRequest("POST", path, body, routed, stream), model, attempt, charge)
            if reply is not None:
                break
        if reply is None:
            reply = self._exhausted(attempt)
        reply.headers.extend(limit_headers)
        return reply

    def _body_for(self, route: Route, raw: bytes, payload: dict[str, Any], model: str | None, modified: bool) -> tuple[bytes, dict[str, Any]]:
        if route.model == model and not modified:
            return raw, payload  # the common case: the client's bytes go out untouched
        if route.model != model:
            payload = {**payload, "model": route.model}
        return json.dumps(payload).encode(), payload

    def _lease(self, route: Route, attempt: Attempt) -> Lease:
        return Lease(route.state, self.metrics, partial(self._failed, attempt))

    async def _try(self, route: Route, request: BackendRequest, model: str | None, attempt: Attempt,
                   charge: Charge) -> Reply | None:
        """One attempt; None means "try the next candidate" (the failure is noted in ``attempt``)."""
        state = route.state
        lease = self._lease(route, attempt)
        try:
            lease.response = response = await state.backend.send(request)
            if response.status in BACKEND_FAULT_4XX or response.status >= 500:
                await lease.fail(str(response.status))
                return None
            if request.stream and response.status == 200:
                first = await _first_chunk(response)
                self.metrics.first_byte(state.name, time.perf_counter() - lease.started)
                relay = self._relay(lease, first, request, model, attempt, charge)
                lease = None  # the relay owns it now
                return Reply(200, SSE_HEADERS + self._meta(state, attempt), relay)
            data = await response.aread()
            await lease.succeed(response.status)
        except BackendUnavailable as exc:
            if exc.reason == UNSUPPORTED:
                attempt.unsupported.append(f"{state.name}: {exc}")
            await lease.fail(exc.reason)  # type: ignore[union-attr] - only None after the return above
            return None
        finally:
            if lease is not None:
                await lease.abandon()  # no-op after a verdict; frees the slot if cancelled
        headers = [(k.encode(), v.encode()) for k, v in response.headers if k == "content-type"] or JSON_HEADERS
        if response.status == 200 and data[:1] == b"{":
            self._account(charge, routed_model(request), state.name, usage_from_body(data))
            data = insert_member(data, b'"_backend":' + json.dumps(state.name).encode())
        elif response.status >= 400 and not is_openai_error(data):
            # e.g. vLLM's framework 404 ``{"detail": "Not Found"}`` for a route its model does not serve:
            # every error a client gets keeps OpenAI's shape; the backend's own words stay in the message
            detail = data[:300].decode("utf-8", "replace")
            data, headers = error_body(response.status, f"backend {state.name} answered {response.status}: {detail}"), JSON_HEADERS
        return Reply(response.status, headers + self._meta(state, attempt), data)

    def _failed(self, attempt: Attempt, state: BackendState, reason: str, response: BackendResponse | None = None) -> None:
        attempt.reasons.append(f"{state.name}: {reason}")
        if reason == UNSUPPORTED:  # the request, not the backend: no breaker charge, no fallback note
            state.breaker.release()
            return
        if reason in (STARTING, DEADLINE):
            # Not up yet, or a non-streaming answer longer than ``timeouts.response``: no breaker charge
            # (it would stay open after start-up; a long answer is no fault). The next backend is tried.
            state.breaker.release()
            self.metrics.error(state.name, reason)
            attempt.failed.append(state.name)
            return
        state.record(False, error=reason)
        self.metrics.error(state.name, reason)
        if response is not None:
            self.metrics.request(state.name, response.status, None)
            if response.status == 429:
                retry = retry_after(response.headers)
                seconds = min(retry if retry is not None else state.backend.config.breaker.open_seconds,
                              self.config.max_retry_after)
                state.breaker.trip(seconds)
                attempt.retry_after = seconds if attempt.retry_after is None else min(attempt.retry_after, seconds)
        attempt.failed.append(state.name)
        logger.warning("backend %s failed (%s); falling back", state.name, reason)

    def _meta(self, state: BackendState, attempt: Attempt) -> list[tuple[bytes, bytes]]:
        meta = [(b"x-backend", state.name.encode())]
        if attempt.failed:
            meta.append((b"x-fallback-from", ",".join(attempt.failed).encode()))
            self.metrics.fallback(attempt.failed[0], state.name)
        return meta

    def _exhausted(self, attempt: Attempt) -> Reply:
        message = "all backends failed: " + "; ".join(attempt.reasons)
        if attempt.reasons and all(r.endswith(f": {UNSUPPORTED}") for r in attempt.reasons):
            return error_reply(400, "no backend for this model supports this request: " + "; ".join(attempt.unsupported),
                               "invalid_request_error")
        if attempt.reasons and all(r.endswith(f": {DEADLINE}") for r in attempt.reasons):
            return error_reply(504, "no backend finished the answer within its timeouts.response: " +
                               "; ".join(attempt.reasons), "timeout")
        if attempt.reasons and all(r.endswith(": 429") for r in attempt.reasons):
            retry = str(max(1, round(attempt.retry_after or 1))).encode()
            return error_reply(429, message, "rate_limit_error", headers=[(b"retry-after", retry)])
        return error_reply(503, message, "backend_unavailable", headers=[(b"retry-after", self._retry_after_503)])

    # ------------------------------------------------------------------ streaming

    def _account(self, charge: Charge, model: str, backend: str, usage: Usage | None) -> None:
        """Count a request's tokens: metrics per key, model (as the backend names it) and backend, and
        the key's token limit."""
        if usage is None:
            return
        self.metrics.tokens(charge.key.name, model, backend, *usage)
        if charge.key.tokens_per_minute:
            self.limiter.add_tokens(charge.key, usage[0] + usage[1])

    async def _relay(self, lease: Lease, first: bytes, request: BackendRequest, model: str | None,
                     attempt: Attempt, charge: Charge) -> AsyncIterator[bytes]:
        """Relay a stream; on a break, continue it elsewhere (see ``streaming``). ``request`` is the
        request as first sent; every continuation is built from it and *all* text sent so far."""
        path, payload = request.path, request.payload or {}
        sent_blocks: list[bytes] | None = [] if streaming.resumable(payload, path) else None
        resumed: streaming.Sent | None = None
        rewrite_state: dict[str, bool] = {}
        tap = UsageTap(charge.strip_usage)
        model_sent = routed_model(request)  # as the backend that answers last names it (labels the usage)
        try:
            while True:
                name = lease.state.name
                try:
                    async for block in streaming.event_blocks(first, lease.response, path):  # type: ignore[arg-type]
                        if resumed is not None:
                            block = streaming.rewrite_continuation(block, resumed, rewrite_state)
                        if USAGE_KEY in block:  # once per stream: the rest passes untouched
                            block = tap.scan(block)
                            if not block:
                                continue
                        if sent_blocks is not None:
                            sent_blocks.append(block)
                        yield block
                    await lease.succeed(200)
                    return
                except BackendUnavailable as exc:
                    await lease.fail(exc.reason)
                if sent_blocks is None:
                    yield error_event(f"backend {name} failed mid-stream and the request cannot be resumed")
                    return
                sent = streaming.summarise(sent_blocks, path)
                if sent.done:
                    return
                if sent.finished:
                    yield SSE_DONE
                    return
                # nothing visible sent yet (only a role chunk): any backend may simply start over
                new_payload = streaming.resume_payload(payload, path, sent) if sent.text else dict(payload)
                if new_payload is None:
                    yield error_event("backend failed after the token budget was spent", 502)
                    return
                opened = await self._open_resume(new_payload, model, path, set(attempt.failed), name,
                                                 need_resume=bool(sent.text))
                if opened is None:
                    yield error_event(f"backend {name} failed mid-stream and no backend could resume it")
                    return
                lease, first, resumed_model = opened
                model_sent = resumed_model or ""
                if sent.text and streaming.wants_usage(payload):
                    sent.prompt_tokens = await self._prompt_tokens(lease, payload, path, resumed_model)
                resumed, rewrite_state = sent, {}
                yield f": resumed on {lease.state.name} after {len(sent.text)} chars\n\n".encode()
        finally:
            await lease.abandon()  # no-op after a verdict; the client went away otherwise
            if tap.usage is not None:
                self._account(charge, model_sent, lease.state.name, tap.usage)
            elif charge.key.tokens_per_minute and sent_blocks:
                # No usage (the client left before it, or the backend sends none): a token limit must
                # not be escaped that way, so it is charged the text events delivered (~ tokens).
                self.limiter.add_tokens(charge.key, streaming.summarise(sent_blocks, path).pieces)

    async def _open_resume(self, payload: dict[str, Any], model: str | None, path: str, failed: set[str], source: str,
                           need_resume: bool = True) -> tuple[Lease, bytes, str | None] | None:
        """Find a backend that takes the continuation and has produced its first bytes."""
        for route in self.pool.plan(model, path):
            state = route.state
            if state.name in failed or (need_resume and not state.backend.can_resume):
                continue
            body = dict(payload)
            if route.model is not None:
                body["model"] = route.model
            request = BackendRequest("POST", path, json.dumps(body).encode(), body, True)
            lease = self._lease(route, Attempt())
            try:
                lease.response = response = await state.backend.send(request)
                if response.status != 200:
                    await lease.fail(str(response.status))
                    failed.add(state.name)
                    continue
                first = await _first_chunk(response)
            except BackendUnavailable as exc:
                await lease.fail(exc.reason)  # closes the response that never produced a first chunk
                failed.add(state.name)
                continue
            except BaseException:
                await lease.abandon()
                raise
            self.metrics.resume(source, state.name)
            return lease, first, body.get("model")
        return None

    async def _prompt_tokens(self, lease: Lease, payload: dict[str, Any], path: str, model: str | None) -> int | None:
        """The client's own prompt tokens, counted by the backend that continues the stream (vLLM's
        ``/tokenize``); None where it cannot count (the usage is then estimated, see ``streaming``)."""
        request = streaming.tokenize_request(payload, path, model)
        response: BackendResponse | None = None
        try:
            async with asyncio.timeout(lease.state.backend.config.timeouts.first_byte):
                response = await lease.state.backend.send(request)
                data = await response.aread()
        except (BackendUnavailable, TimeoutError):
            if response is not None:  # timed out while reading: do not leave the connection open
                await response.aclose()
            return None
        return streaming.token_count(data) if response.status == 200 else None

    # ------------------------------------------------------------------ read-only endpoints

    def models(self, key: ApiKey = ANONYMOUS_KEY) -> dict[str, Any]:
        """The models ``key`` may use, with the backends it may reach for each: the union of what the
        backends are configured with and what those configured with none reported (``refresh_models``)."""
        seen: dict[str, dict[str, Any]] = {}
        for state in self.pool.states.values():
            if key.backends is not None and state.name not in key.backends:
                continue
            for entry in state.backend.listed_models:
                for public in (entry.name, *entry.aliases):
                    if key.models is not None and public not in key.models and entry.name not in key.models:
                        continue
                    card = seen.setdefault(public, {
                        "id": public, "object": "model", "created": self.pool.created,
                        "owned_by": "ray-serve-cai", "backends": [],
                    })
                    if public != entry.name:
                        card["alias_of"] = entry.name
                    card["backends"].append(state.name)
        return {"object": "list", "data": list(seen.values())}

    def models_as(self, key_name: str | None) -> dict[str, Any]:
        """``models`` for a caller inside the app acting for the key called ``key_name`` (none for a
        key this router does not have)."""
        key = self.keys.named(key_name)
        return self.models(key) if key is not None else {"object": "list", "data": []}

    def backends(self) -> dict[str, Any]:
        return {"object": "list", "data": self.pool.status()}


async def _first_chunk(response: BackendResponse) -> bytes:
    """Wait for the first non-empty body bytes: until then a failure is still invisible to the client."""
    iterator = response.stream.__aiter__()
    async for chunk in iterator:
        if chunk:
            return chunk
    raise BackendUnavailable("disconnect", "empty stream")
