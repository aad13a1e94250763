"""Token accounting (``serve_apps/router/accounting.py``): the router's counters per key, model and
backend match the usage the client received, streamed or not; a stream whose client did not ask for
usage is asked upstream and the usage chunk never reaches the client; resumed streams count the
client's own request (``_restate_usage``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.openai_format import SSE_DONE, sse_event
from serve_apps.router.accounting import UsageTap, ask_for_usage, usage_from_body
from tests.serve_apps.router.scripted import ANSWER, PROMPT_TOKENS, TOKENS, Step
from tests.serve_apps.router.test_router_scripted import CHAT, body, drain, make_router, streamed_text

OWN = [PROMPT_TOKENS, len(TOKENS)]


def usages(raw: bytes) -> list[dict]:
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    return [event["usage"] for event in events if "usage" in event]


def test_non_streamed_usage_is_counted_as_anonymous_when_auth_is_off():
    router, _ = make_router([Step()])
    reply = asyncio.run(router.generate(CHAT, body(), None))
    usage = json.loads(reply.body)["usage"]
    assert router.metrics.tokens_used == {("anonymous", "m", "b0"): [usage["prompt_tokens"], usage["completion_tokens"]]}
    assert [usage["prompt_tokens"], usage["completion_tokens"]] == OWN


@pytest.mark.parametrize("options", [{"include_usage": True}, {"include_usage": True, "continuous_usage_stats": False}])
def test_stream_with_include_usage_shows_and_counts_the_same_usage(options):
    router, backends = make_router([Step()])
    raw = asyncio.run(drain_reply(router, body(stream=True, stream_options=options)))
    (usage,) = usages(raw)
    assert router.metrics.tokens_used[("anonymous", "m", "b0")] == [usage["prompt_tokens"], usage["completion_tokens"]] == OWN
    assert backends[0].requests[0].payload["stream_options"] == options  # the client's own options, untouched


@pytest.mark.parametrize("options", [None, {"continuous_usage_stats": False}, {"include_usage": False}])
def test_stream_without_include_usage_is_asked_upstream_and_stripped(options):
    router, backends = make_router([Step()])
    extra = {} if options is None else {"stream_options": options}
    raw = asyncio.run(drain_reply(router, body(stream=True, **extra)))
    assert usages(raw) == [] and b"usage" not in raw  # the client sees the stream it asked for
    assert streamed_text(raw) == ANSWER and raw.endswith(SSE_DONE)
    sent = backends[0].requests[0]
    assert json.loads(sent.body)["stream_options"] == {**(options or {}), "include_usage": True}
    assert router.metrics.tokens_used[("anonymous", "m", "b0")] == OWN


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_resumed_stream_counts_the_clients_own_request_on_the_backend_that_finished(include_usage: bool):
    router, backends = make_router([Step(die_after=4)], [Step()])
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = asyncio.run(drain_reply(router, body(stream=True, **extra)))
    assert streamed_text(raw) == ANSWER and b": resumed on b1" in raw
    client_usage = usages(raw)
    if include_usage:
        assert [[u["prompt_tokens"], u["completion_tokens"]] for u in client_usage] == [OWN]
    else:
        assert client_usage == []
    assert backends[1].requests[0].payload["stream_options"] == {"include_usage": True}  # the continuation asked too
    assert router.metrics.tokens_used == {("anonymous", "m", "b1"): OWN}


def test_named_key_and_routed_model_label_the_counters(monkeypatch):
    monkeypatch.setenv("ACCOUNTED_KEY", "sk-accounted-1")
    router, _ = make_router([Step(), Step()], auth={"keys": [{"name": "team-x", "key": {"env": "ACCOUNTED_KEY"}}]})
    key = router.keys.lookup(b"Bearer sk-accounted-1")

    async def run() -> None:
        await router.generate(CHAT, body(), None, key)
        await drain(await router.generate(CHAT, body(stream=True), None, key))

    asyncio.run(run())
    assert router.metrics.tokens_used == {("team-x", "m", "b0"): [2 * OWN[0], 2 * OWN[1]]}


async def drain_reply(router, raw_body: bytes) -> bytes:
    reply = await router.generate(CHAT, raw_body, None)
    assert reply.status == 200
    return await drain(reply)


def chunk(choices: list, **extra) -> bytes:
    return sse_event({"id": "c", "object": "chat.completion.chunk", "choices": choices, **extra})


def test_tap_passes_blocks_without_a_usage_object_through_as_the_same_bytes():
    tap = UsageTap(strip=True)
    block = chunk([{"index": 0, "delta": {"content": "the word \"usage\": {"}}], usage=None)  # null usage, quoted text
    assert tap.scan(block) is block and tap.usage is None


def test_tap_strips_a_usage_chunk_and_a_usage_field_from_several_events_in_one_block():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    content = chunk([{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}], usage=usage)
    block = content + chunk([], usage={**usage, "completion_tokens": 4}) + SSE_DONE
    tap = UsageTap(strip=True)
    out = tap.scan(block)
    assert tap.usage == (3, 4)  # the last (cumulative) usage counts
    assert out == chunk([{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]) + SSE_DONE
    keep = UsageTap(strip=False)
    assert keep.scan(block) is block and keep.usage == (3, 4)


def test_usage_from_body_reads_only_the_usage_object():
    answer = {"choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 99, "completion_tokens": 99}'}}],
              "usage": {"prompt_tokens": 7, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}}
    assert usage_from_body(json.dumps(answer).encode()) == (7, 5)
    assert usage_from_body(json.dumps({"choices": [], "usage": None}).encode()) is None
    assert usage_from_body(b'{"choices": []}') is None and usage_from_body(b'{"usage": {"prompt_tokens": -1, "completion_tokens": 1}}') is None


def test_ask_for_usage_splices_the_clients_bytes_when_it_can():
    raw = b'{"model": "m", "stream": true}'
    spliced, payload = ask_for_usage(raw, json.loads(raw))
    assert spliced.endswith(raw[1:]) and json.loads(spliced) == payload == {
        "model": "m", "stream": True, "stream_options": {"include_usage": True}}
    rebuilt, payload = ask_for_usage(b'{"stream_options": null}', {"stream_options": None})
    assert json.loads(rebuilt) == payload == {"stream_options": {"include_usage": True}}
