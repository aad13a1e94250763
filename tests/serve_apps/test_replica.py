"""The engine replica on a real Ray Serve cluster with a real vLLM engine, through the openai SDK."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def client(serve_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serve_stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_completion(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content
    assert response.usage.completion_tokens == 8
    assert response.choices[0].finish_reason == "length"


def test_text_completion_with_n_and_logprobs(client):
    response = client.completions.create(model=MODEL, prompt="def main():", max_tokens=5, n=2, logprobs=2,
                                         temperature=1.0, seed=7)
    assert len(response.choices) == 2
    for choice in response.choices:
        assert len(choice.logprobs.tokens) == 5
        assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs)
    assert response.usage.completion_tokens == 10


def test_seed_makes_sampling_repeatable(client):
    kwargs = dict(model=MODEL, prompt="import os", max_tokens=12, temperature=1.0, seed=1234)
    first = client.completions.create(**kwargs).choices[0].text
    second = client.completions.create(**kwargs).choices[0].text
    assert first == second


def test_streamed_chunks_concatenate_to_non_streamed_text(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "tell me"}], max_tokens=24,
                  temperature=0, seed=3)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == whole
    assert usage is not None and usage.completion_tokens == 24


def test_stream_is_vllm_sse_format(serve_stack):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{serve_stack.base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)


def test_stop_sequence_ends_generation(client):
    free = client.completions.create(model=MODEL, prompt="a", max_tokens=20, temperature=0).choices[0].text
    stop = free[5:8] if len(free) >= 8 else free[-2:]
    stopped = client.completions.create(model=MODEL, prompt="a", max_tokens=20, temperature=0, stop=[stop])
    assert stop not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    assert free.startswith(stopped.choices[0].text)


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_health_is_ready(serve_stack):
    response = httpx.get(f"{serve_stack.base_url}/health", timeout=10)
    assert response.status_code == 200


def _error(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc_info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "no-such-model" in _error(exc_info)["message"]


def test_missing_field_names_it(client):
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.post("/chat/completions", body={"model": MODEL}, cast_to=object)
    assert "messages" in json.dumps(_error(exc_info))


def test_wrong_type_names_the_field(serve_stack):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}
    response = httpx.post(f"{serve_stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code in (400, 422)
    assert "max_tokens" in json.dumps(response.json()["error"])


def test_malformed_json_is_400(serve_stack):
    response = httpx.post(f"{serve_stack.base_url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "Traceback" not in response.text


def test_prompt_plus_max_tokens_over_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.completions.create(model=MODEL, prompt="hello " * 1500, max_tokens=1500)
    assert "max" in _error(exc_info)["message"].lower()


def test_body_over_limit_is_413(serve_stack):
    big = {"model": MODEL, "prompt": "a" * 1_200_000, "max_tokens": 1}
    response = httpx.post(f"{serve_stack.base_url}/v1/completions", json=big, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


def test_32_concurrent_requests_all_succeed(serve_stack):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{serve_stack.base_url}/v1", api_key="unused", max_retries=0,
                                    timeout=120)
        async def one(i: int) -> str:
            response = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"request {i}"}], max_tokens=16)
            return response.choices[0].finish_reason
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await client.close()

    reasons = asyncio.run(run())
    assert len(reasons) == 32
    assert all(reason in ("length", "stop") for reason in reasons)
