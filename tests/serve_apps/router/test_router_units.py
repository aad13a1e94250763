"""Pure logic of the router, no processes: breaker state machine, candidate order, config errors,
protocol translation, resume request building, stream framing."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.checks import parse_router_args
from serve_apps.router.accounting import insert_member
from serve_apps.router.backends.anthropic import to_anthropic
from serve_apps.router.backends.base import BackendResponse, BackendUnavailable, BytesStream, ByteStream
from serve_apps.router.backends.ollama import to_ollama
from serve_apps.router.backends.openai import OpenAIBackend
from serve_apps.router.backends.serve import _CountedStream, _Endpoint
from serve_apps.router.config import BackendConfig, BreakerConfig, RouterConfig
from serve_apps.router.health import BreakerState, CircuitBreaker
from serve_apps.router.pool import BackendPool, BackendState, UnknownBackend
from serve_apps.router.streaming import Sent, event_blocks, resume_payload, rewrite_continuation, summarise


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_state_machine():
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, open_seconds=5), clock)
    breaker.on_change = changes.append
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # consecutive failures only
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and not breaker.acquire()  # one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_breaker_release_frees_probe_slot():
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(open_seconds=1), clock)
    breaker.trip(1)
    clock.now += 1
    assert breaker.acquire() and not breaker.available()
    breaker.release()
    assert breaker.available()


def make_pool(*specs: dict) -> BackendPool:
    states = []
    for spec in specs:
        config = BackendConfig(kind="openai", url="http://127.0.0.1:1", **spec)
        states.append(BackendState(OpenAIBackend(config), CircuitBreaker(config.breaker)))
    return BackendPool(states)


def test_pool_orders_by_tier_then_least_outstanding():
    pool = make_pool({"name": "x", "tier": 1, "models": ["m"]}, {"name": "y", "tier": 0, "models": ["m"]},
                     {"name": "z", "tier": 0, "models": ["m"]})
    pool.states["y"].outstanding = 3
    assert [r.state.name for r in pool.plan("m", "/v1/chat/completions")] == ["z", "y", "x"]
    pool.states["z"].breaker.trip(60)
    pool.states["y"].healthy = False
    assert [r.state.name for r in pool.plan("m", "/v1/chat/completions")] == ["x"]
    pool.states["x"].healthy = False
    assert len(pool.plan("m", "/v1/chat/completions")) == 3  # nothing available: try everything


def test_pool_explicit_aliases_and_wildcards():
    pool = make_pool({"name": "x", "models": [{"name": "real", "aliases": ["nick"]}]}, {"name": "any", "tier": 5})
    routes = pool.plan("nick", "/v1/chat/completions")
    assert [(r.state.name, r.model) for r in routes] == [("x", "real"), ("any", "nick")]
    assert pool.plan("nick", "/v1/chat/completions", explicit="any")[0].state.name == "any"
    with pytest.raises(UnknownBackend):
        pool.plan("nick", "/v1/chat/completions", explicit="nope")


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"backends\.0\.timeouts\.conect"):
        parse_router_args({"backends": [{"name": "a", "kind": "openai", "url": "http://x", "timeouts": {"conect": 1}}]})
    with pytest.raises(ValueError, match="needs `url`"):
        parse_router_args({"backends": [{"name": "a", "kind": "openai"}]})
    with pytest.raises(ValueError, match="not in engines"):
        parse_router_args({"backends": [{"name": "a", "kind": "serve", "engine": "ghost"}]})
    with pytest.raises(ValueError, match="`transport` applies to kind serve only"):
        parse_router_args({"backends": [{"name": "a", "kind": "openai", "url": "http://x", "transport": "handle"}]})
    with pytest.raises(ValueError, match=r"backends\.0\.transport"):
        parse_router_args({"backends": [{"name": "a", "kind": "serve", "engine": "e", "transport": "grpc"}],
                           "engines": [{"name": "e"}]})
    with pytest.raises(ValueError, match=r"router\.listen\.port"):
        parse_router_args({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}],
                           "router": {"listen": {"port": 70000}}})
    with pytest.raises(ValueError, match="duplicate backend names: a"):
        RouterConfig.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}] * 2})


def test_secrets_are_references_not_values(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("sk-secret\n")
    config = BackendConfig(name="c", kind="anthropic", url="http://x", api_key={"file": str(key_file)})
    assert config.api_key.resolve() == "sk-secret"
    assert "sk-secret" not in repr(config) and "sk-secret" not in config.model_dump_json()
    monkeypatch.setenv("ROUTER_KEYS", "k1, k2")
    auth = RouterConfig.model_validate({"backends": [config.model_dump()], "auth": {"api_keys": {"env": "ROUTER_KEYS"}}}).auth
    assert auth.load_keys() == {"k1", "k2"}
    monkeypatch.setenv("ROUTER_KEYS", "")
    with pytest.raises(ValueError, match="no key was found"):
        auth.load_keys()


def test_to_anthropic():
    body, trimmed = to_anthropic({
        "model": "claude", "max_tokens": 20, "stop": "END", "temperature": 0.2, "user": "u1", "stream": True,
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                     {"role": "assistant", "content": "Hello "}],
    }, 1024)
    assert body == {"model": "claude", "max_tokens": 20, "system": "sys", "stop_sequences": ["END"], "temperature": 0.2,
                    "metadata": {"user_id": "u1"}, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]}
    assert trimmed == " "
    assert to_anthropic({"messages": [{"role": "user", "content": "x"}]}, 77)[0]["max_tokens"] == 77
    with pytest.raises(ValueError):
        to_anthropic({"messages": [{"role": "tool", "content": "x"}]}, 1)
    with pytest.raises(ValueError):
        to_anthropic({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 1)


def test_to_ollama():
    body = to_ollama({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stop": ["x"],
                      "seed": 3, "temperature": 0, "response_format": {"type": "json_object"}})
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False, "format": "json",
                    "options": {"temperature": 0, "seed": 3, "num_predict": 5, "stop": ["x"]}}


def sse(*events: dict | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events)


def chunk(text: str | None = None, role: str | None = None, finish: str | None = None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", text)) if v is not None}
    return {"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_summarise_and_resume_payload():
    blocks = [sse(chunk("", role="assistant"), chunk("Hel")), sse(chunk("lo"))]
    sent = summarise(blocks, "/v1/chat/completions")
    assert (sent.text, sent.pieces, sent.id, sent.finished, sent.done) == ("Hello", 2, "c1", False, False)
    payload = {"model": "m", "max_tokens": 10, "backend": "x", "messages": [{"role": "user", "content": "q"}]}
    resumed = resume_payload(payload, "/v1/chat/completions", sent)
    assert resumed["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert resumed["continue_final_message"] is True and resumed["add_generation_prompt"] is False
    assert resumed["max_tokens"] == 8 and "backend" not in resumed
    assert resume_payload({**payload, "max_tokens": 2}, "/v1/chat/completions", sent) is None
    completion = resume_payload({"prompt": "abc", "max_tokens": 9}, "/v1/completions", Sent(text="de", pieces=1))
    assert completion == {"prompt": "abcde", "max_tokens": 8}


def test_rewrite_continuation_keeps_one_stream_identity():
    sent = Sent(id="orig", created=1, model="public")
    state: dict[str, bool] = {}
    out = rewrite_continuation(sse({**chunk("", role="assistant"), "id": "new"}, {**chunk("!"), "id": "new"}, "[DONE]"), sent, state)
    events = [json.loads(line[6:]) for line in out.decode().split("\n\n") if line.startswith("data: {")]
    assert [e["id"] for e in events] == ["orig"] and events[0]["choices"][0]["delta"] == {"content": "!"}
    assert out.endswith(b"data: [DONE]\n\n")


class Chunks(ByteStream):
    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    async def _iterate(self):
        for piece in self._chunks:
            yield piece


def collect(first: bytes, *rest: bytes) -> tuple[list[bytes], BaseException | None]:
    async def run():
        out = []
        try:
            async for block in event_blocks(first, BackendResponse(200, [], Chunks(*rest))):
                out.append(block)
        except BackendUnavailable as exc:
            return out, exc
        return out, None
    return asyncio.run(run())


def test_event_blocks_never_split_an_event_and_detect_truncation():
    whole = sse(chunk("a"), chunk("b"), "[DONE]")
    blocks, error = collect(whole[:7], whole[7:30], whole[30:])
    assert b"".join(blocks) == whole and error is None
    assert all(block.endswith(b"\n\n") for block in blocks)
    blocks, error = collect(sse(chunk("a")), sse(chunk("b"))[:10])
    assert b"".join(blocks) == sse(chunk("a")) and error.reason == "disconnect"  # the half event is held back
    blocks, error = collect(sse(chunk("a")) + b'data: {"error": {"message": "x"}}\n\n')
    assert b"".join(blocks) == sse(chunk("a")) and error.reason == "protocol"


def test_insert_member_without_parsing():
    assert json.loads(insert_member(b'{"id": 1}', b'"_backend":"a"')) == {"_backend": "a", "id": 1}
    assert json.loads(insert_member(b"{ }", b'"_backend":' + json.dumps('q"x').encode())) == {"_backend": 'q"x'}
    assert json.loads(insert_member(b' {"a":[1]}', b'"s":{"u":true}')) == {"s": {"u": True}, "a": [1]}


def test_serve_endpoint_counts_a_request_until_its_body_is_done():
    async def run() -> list[int]:
        endpoint = _Endpoint("http://127.0.0.1:1", None, {})  # type: ignore[arg-type]
        endpoint.outstanding = 3  # as send() leaves it for three requests with their heads in
        read, closed, relayed = (_CountedStream(BytesStream(b"x"), endpoint) for _ in range(3))
        seen = [endpoint.outstanding]
        assert await read.aread() == b"x"
        seen.append(endpoint.outstanding)
        await closed.aclose()
        await closed.aclose()  # a second close releases nothing more
        seen.append(endpoint.outstanding)
        assert [chunk async for chunk in relayed] == [b"x"]  # iterated to the end, never closed
        seen.append(endpoint.outstanding)
        return seen

    assert asyncio.run(run()) == [3, 2, 1, 0]


def test_bytes_stream_reads_once():
    assert asyncio.run(BytesStream(b"abc").aread()) == b"abc"
