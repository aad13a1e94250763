"""Fallback, breaker, resume and accounting of the routing core, against in-process scripted backends:
milliseconds per test. The real-process fault tests (test_router_faults.py) are the integration layer."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.asgi import Reply
from serve_apps.router.config import RouterConfig
from serve_apps.router.health import BreakerState
from serve_apps.router.router import Router
from tests.serve_apps.router.scripted import ANSWER, PROMPT_TOKENS, TOKENS, ScriptedBackend, Step

CHAT = "/v1/chat/completions"


def make_router(*scripts: list[Step], resumable: tuple[bool, ...] = (), **router_options) -> tuple[Router, list[ScriptedBackend]]:
    configs = [{"name": f"b{i}", "kind": "openai", "url": f"http://b{i}.invalid", "tier": i,
                "models": [{"name": "m"}], "timeouts": {"first_byte": 0.05},
                "breaker": {"failure_threshold": 2, "open_seconds": 30}} for i in range(len(scripts))]
    config = RouterConfig.model_validate({"backends": configs, **router_options})
    backends = [ScriptedBackend(c, list(s), resumable[i] if i < len(resumable) else True)
                for i, (c, s) in enumerate(zip(config.backends, scripts, strict=False))]
    return Router(config, backends), backends


def body(stream: bool = False, **extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}).encode()


def header(reply: Reply, name: bytes) -> bytes | None:
    return dict(reply.headers).get(name)


async def drain(reply: Reply) -> bytes:
    assert not isinstance(reply.body, bytes)
    return b"".join([chunk async for chunk in reply.body])


def streamed_text(raw: bytes) -> str:
    text = ""
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def settled(router: Router, backends: list[ScriptedBackend]) -> None:
    """Nothing outstanding, and every response the backends gave was closed."""
    assert {s.name: s.outstanding for s in router.pool.states.values()} == {b.name: 0 for b in backends}
    for backend in backends:
        assert all(r.stream.closed for r in backend.responses), f"{backend.name} left a response open"


@pytest.mark.parametrize("failure", [Step(status=500), Step(status=503), Step(refuse="connect"), Step(hang=True),
                                     Step(status=401)])
def test_falls_back_on_backend_faults(failure: Step):
    router, backends = make_router([failure], [Step()])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 200 and header(reply, b"x-backend") == b"b1"
    assert header(reply, b"x-fallback-from") == b"b0"
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == ANSWER
    assert router.pool.states["b0"].outcomes[-1] is False
    settled(router, backends)


def test_client_error_goes_back_untouched_without_fallback():
    router, backends = make_router([Step(status=400)], [Step()])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 400 and json.loads(reply.body)["error"]["message"] == "scripted"
    assert backends[1].requests == []
    settled(router, backends)


def test_429_keeps_the_backend_out_for_retry_after_and_is_passed_on_when_all_refuse():
    router, backends = make_router([Step(status=429, retry_after="7")], [Step(status=429, retry_after="100")],
                                   max_retry_after=20)
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 429 and header(reply, b"retry-after") == b"7"
    assert json.loads(reply.body)["error"]["type"] == "rate_limit_error"
    states = router.pool.states
    assert states["b0"].breaker.state is BreakerState.OPEN and states["b1"].breaker.state is BreakerState.OPEN
    assert 6 < states["b1"].breaker._open_until - states["b0"].breaker._open_until < 13.5  # capped at 20 s
    settled(router, backends)


def test_breaker_opens_after_threshold_and_the_backend_is_skipped():
    router, backends = make_router([Step(status=500), Step(status=500)], [Step(), Step(), Step()])

    async def three() -> list[Reply]:
        return [await router.generate(CHAT, body(), None) for _ in range(3)]

    replies = asyncio.run(three())
    assert [header(r, b"x-backend") for r in replies] == [b"b1"] * 3
    assert len(backends[0].requests) == 2  # the third request never reached it
    assert router.pool.states["b0"].breaker.state is BreakerState.OPEN
    settled(router, backends)


def test_all_failing_is_a_503_naming_each_backend():
    router, backends = make_router([Step(status=500)], [Step(refuse="timeout")])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 503
    message = json.loads(reply.body)["error"]["message"]
    assert "b0: 500" in message and "b1: timeout" in message
    settled(router, backends)


def test_unsupported_everywhere_is_the_clients_400_and_charges_no_breaker():
    router, backends = make_router([Step(refuse="unsupported")], [Step(refuse="unsupported")])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 400 and json.loads(reply.body)["error"]["type"] == "invalid_request_error"
    assert all(not s.outcomes for s in router.pool.states.values())
    settled(router, backends)


def test_stream_resumes_on_another_backend_without_loss_or_duplication():
    router, backends = make_router([Step(die_after=4)], [Step()])

    async def run() -> bytes:
        reply = await router.generate(CHAT, body(stream=True), None)
        assert reply.status == 200 and header(reply, b"x-backend") == b"b0"
        return await drain(reply)

    raw = asyncio.run(run())
    assert streamed_text(raw) == ANSWER
    assert b": resumed on b1 after" in raw and raw.endswith(b"data: [DONE]\n\n")
    continuation = backends[1].requests[0].payload
    assert continuation["continue_final_message"] is True
    assert continuation["messages"][-1] == {"role": "assistant", "content": "".join(TOKENS[:3])}
    assert router.pool.states["b0"].outcomes[-1] is False and router.pool.states["b1"].outcomes[-1] is True
    settled(router, backends)


def test_stream_that_cannot_resume_ends_with_an_error_event():
    router, backends = make_router([Step(die_after=3)], [Step()], resumable=(True, False))
    async def run() -> bytes:
        return await drain(await router.generate(CHAT, body(stream=True), None))

    raw = asyncio.run(run())
    assert b"no backend could resume it" in raw and b'"type":"backend_error"' in raw and raw.endswith(b"data: [DONE]\n\n")
    assert backends[1].requests == []
    settled(router, backends)


def test_resume_candidate_that_dies_before_its_first_chunk_is_closed():
    router, backends = make_router([Step(die_after=3)], [Step(die_after=0)], [Step()])

    async def run() -> bytes:
        return await drain(await router.generate(CHAT, body(stream=True), None))

    raw = asyncio.run(run())
    assert streamed_text(raw) == ANSWER and b": resumed on b2" in raw
    assert backends[1].responses[0].stream.closed  # the half-open continuation was closed
    settled(router, backends)


def test_client_leaving_mid_stream_releases_everything_without_a_verdict():
    router, backends = make_router([Step()])

    async def run() -> None:
        reply = await router.generate(CHAT, body(stream=True), None)
        stream = reply.body
        assert not isinstance(stream, bytes)
        await stream.__anext__()
        assert router.pool.states["b0"].outstanding == 1
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(run())
    assert not router.pool.states["b0"].outcomes  # neither success nor failure
    settled(router, backends)


def test_half_open_probe_slot_is_freed_when_the_client_leaves():
    router, backends = make_router([Step()])
    breaker = router.pool.states["b0"].breaker
    breaker.trip(0)  # half-open at once: one probe allowed

    async def run() -> None:
        reply = await router.generate(CHAT, body(stream=True), None)
        await reply.body.__anext__()  # type: ignore[union-attr]
        await reply.body.aclose()  # type: ignore[union-attr]

    asyncio.run(run())
    assert breaker.state is BreakerState.HALF_OPEN and breaker.acquire()
    settled(router, backends)


def usage_of(raw: bytes) -> dict:
    usages = [json.loads(line[6:])["usage"] for line in raw.split(b"\n")
              if line.startswith(b"data: {") and json.loads(line[6:]).get("usage")]
    assert len(usages) == 1, usages
    return usages[0]


@pytest.mark.parametrize("tokenize", [True, False])
def test_usage_after_a_resume_is_the_clients_own_request(tokenize: bool):
    router, backends = make_router([Step(die_after=4)], [Step()])  # role chunk + 3 tokens, then dies
    backends[1].tokenize = tokenize

    async def run() -> bytes:
        return await drain(await router.generate(CHAT, body(stream=True, stream_options={"include_usage": True}), None))

    raw = asyncio.run(run())
    assert streamed_text(raw) == ANSWER and b": resumed on b1" in raw
    # the continuation itself counted the 3 delivered tokens as prompt: PROMPT_TOKENS + 3 and 5
    assert usage_of(raw) == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(TOKENS),
                             "total_tokens": PROMPT_TOKENS + len(TOKENS)}
    settled(router, backends)


def test_usage_prompt_is_counted_by_the_continuing_backend_when_the_text_retokenizes_differently():
    router, backends = make_router([Step(die_after=4)], [Step()])
    backends[1].retokenized_extra = 2  # e.g. BPE merges the delivered pieces differently

    async def run() -> bytes:
        return await drain(await router.generate(CHAT, body(stream=True, stream_options={"include_usage": True}), None))

    usage = usage_of(asyncio.run(run()))
    assert usage["prompt_tokens"] == PROMPT_TOKENS and usage["completion_tokens"] == len(TOKENS)


def test_all_failing_503_says_when_to_retry():
    router, backends = make_router([Step(status=500)], [Step(refuse="connect")])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 503 and int(header(reply, b"retry-after")) >= 1
    settled(router, backends)


def test_a_backend_still_starting_is_skipped_without_a_breaker_charge():
    router, backends = make_router([Step(refuse="starting")], [Step()])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 200 and header(reply, b"x-backend") == b"b1"
    assert header(reply, b"x-fallback-from") == b"b0"
    assert router.pool.states["b0"].breaker.state is BreakerState.CLOSED and router.pool.states["b0"].breaker.acquire()
    settled(router, backends)


def test_only_starting_backends_is_an_immediate_503_with_retry_after():
    router, backends = make_router([Step(refuse="starting")])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    assert reply.status == 503 and header(reply, b"retry-after") is not None
    assert "b0: starting" in json.loads(reply.body)["error"]["message"]
    settled(router, backends)
