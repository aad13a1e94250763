"""SGLang: argument building, streaming and health against a fake that follows ``sglang.Engine``'s
async contract (tests/serve_apps/sglang_fake.py); real generation only where a GPU exists."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from serve_apps.config import EngineConfig
from serve_apps.engines import sglang as sglang_module
from serve_apps.engines.base import EngineResponse
from serve_apps.engines.sglang import SGLangEngine, build_sglang_kwargs
from tests.serve_apps.sglang_fake import FakeSGLangEngine

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def test_kwargs_map_engine_config_fields():
    config = EngineConfig(name="m", model="/models/m", engine="sglang", device="gpu", dtype="bfloat16",
                          max_model_len=4096, tensor_parallel_size=2, engine_kwargs={"mem_fraction_static": 0.8})
    kwargs = build_sglang_kwargs(config, "/models/m")
    assert kwargs == {"model_path": "/models/m", "served_model_name": "m", "tp_size": 2, "device": "cuda",
                      "dtype": "bfloat16", "context_length": 4096, "disable_cuda_graph": True,
                      "mem_fraction_static": 0.8}


def test_auto_dtype_and_no_length_are_left_to_sglang():
    kwargs = build_sglang_kwargs(EngineConfig(engine="sglang", enforce_eager=False), "/m")
    assert "dtype" not in kwargs and "context_length" not in kwargs and "disable_cuda_graph" not in kwargs


def _has_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU: SGLang's kernels are CUDA-only")
def test_real_generation_on_gpu():
    import asyncio

    pytest.importorskip("sglang", reason="needs a GPU machine with the sglang extra installed")

    async def run() -> tuple[str, list[Any]]:
        engine = SGLangEngine(EngineConfig(engine="sglang", device="gpu"))
        await engine.start()
        try:
            assert await engine.health()
            response = await engine.chat({**CHAT, "max_tokens": 4})
            streamed = await collect(await engine.chat({**CHAT, "max_tokens": 8, "stream": True}))
            return (await response.read()).decode(), streamed
        finally:
            await engine.shutdown()

    whole, streamed = asyncio.run(run())
    assert "chat.completion" in whole
    assert streamed[-1] == "[DONE]" and streamed[-2]["choices"][0]["finish_reason"] in ("stop", "length")


# -- against the fake ------------------------------------------------------------------------------
def started(monkeypatch: pytest.MonkeyPatch, **engine_kwargs: Any) -> tuple[SGLangEngine, FakeSGLangEngine]:
    monkeypatch.setattr(sglang_module, "_import_sglang", lambda: SimpleNamespace(Engine=FakeSGLangEngine))
    engine = SGLangEngine(EngineConfig(name="m", model="/models/m", engine="sglang", engine_kwargs=engine_kwargs))
    asyncio.get_event_loop().run_until_complete(engine.start())
    return engine, engine._engine


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()


async def events(body: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """SSE ``data:`` payloads, parsed (``[DONE]`` as the string)."""
    buffer = b""
    async for chunk in body:
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.removeprefix(b"data: ").decode()
            yield data if data == "[DONE]" else json.loads(data)


async def collect(response: EngineResponse) -> list[Any]:
    return [e async for e in events(response.body)]


def content(chunks: list[Any], kind: str = "chat") -> str:
    parts = [c["choices"][0]["delta"].get("content") or "" if kind == "chat" else c["choices"][0]["text"]
             for c in chunks if isinstance(c, dict) and c.get("choices")]
    return "".join(parts)


def test_streams_tokens_while_sglang_generates(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, fake = started(monkeypatch)
    fake.pause_after = 3  # the fake holds its 4th token until told

    async def run() -> tuple[list[Any], list[Any]]:
        response = await asyncio.wait_for(engine.chat({**CHAT, "stream": True, "max_tokens": 8}), 5)
        assert response.status == 200 and ("content-type", "text/event-stream") in response.headers
        stream = events(response.body)
        early = []
        while content(early) != " w0 w1 w2":
            early.append(await asyncio.wait_for(stream.__anext__(), 5))
        assert fake.generating == 1  # chunks arrived while SGLang was still generating
        fake.resume.set()
        return early, [e async for e in stream]

    early, rest = loop.run_until_complete(run())
    chunks = early + rest
    assert early[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len([c for c in chunks if isinstance(c, dict) and content([c])]) >= 4  # one event per SGLang chunk
    assert content(chunks) == " w0 w1 w2 w3 w4 w5 w6 w7"  # cumulative SGLang text became deltas, once each
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks[:-1])
    assert len({c["id"] for c in chunks[:-1]}) == 1 and chunks[-1] == "[DONE]"


def test_incremental_sglang_output_is_not_doubled(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, _ = started(monkeypatch, incremental_streaming_output=True)
    chunks = loop.run_until_complete(collect(loop.run_until_complete(
        engine.completion({"prompt": "a b c", "stream": True, "max_tokens": 5}))))
    assert content(chunks, "completion") == " w0 w1 w2 w3 w4"
    assert chunks[-2]["object"] == "text_completion" + ".chunk" and chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_usage_and_stop_reasons(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, fake = started(monkeypatch)
    request = {**CHAT, "stream": True, "max_tokens": 50, "stop": [" w3"], "stream_options": {"include_usage": True}}
    chunks = loop.run_until_complete(collect(loop.run_until_complete(engine.chat(request))))
    assert content(chunks) == " w0 w1 w2"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    fake.eos_after = 2
    chunks = loop.run_until_complete(collect(loop.run_until_complete(engine.chat({**CHAT, "stream": True}))))
    assert content(chunks) == " w0 w1" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[-2]


def test_non_streamed_answers(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, fake = started(monkeypatch)
    response = loop.run_until_complete(engine.chat({**CHAT, "max_tokens": 3}))
    body = json.loads(loop.run_until_complete(response.read()))
    assert response.status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " w0 w1 w2"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert fake.prompts[-1] == "<|user|>hello there\n<|assistant|>"
    response = loop.run_until_complete(engine.completion({"prompt": "x"}))
    body = json.loads(loop.run_until_complete(response.read()))
    assert body["choices"][0]["text"] == "".join(f" w{i}" for i in range(16))  # OpenAI's default max_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_bad_sampling_parameters_are_a_400(monkeypatch: pytest.MonkeyPatch, loop: Any, stream: bool) -> None:
    engine, _ = started(monkeypatch)
    response = loop.run_until_complete(engine.chat({**CHAT, "temperature": -1, "stream": stream}))
    body = json.loads(loop.run_until_complete(response.read()))
    assert response.status == 400 and ("content-type", "application/json") in response.headers
    assert body["error"]["type"] == "invalid_request_error"
    assert "temperature must be a non-negative" in body["error"]["message"]


def test_closing_the_stream_aborts_the_request(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, fake = started(monkeypatch)
    fake.pause_after = 4

    async def run() -> None:
        response = await engine.chat({**CHAT, "stream": True, "max_tokens": 100})
        stream = events(response.body)
        await stream.__anext__()
        await stream.__anext__()
        await response.aclose()

    loop.run_until_complete(run())
    assert fake.tokenizer_manager.aborted == ["fake-1"] and fake.generating == 0  # fake-0: start()'s warm-up


def test_an_aborted_generation_ends_the_stream_with_an_error(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    engine, fake = started(monkeypatch)
    original = fake._generate

    async def aborting(prompt: str, params: dict, stream: bool) -> AsyncIterator[dict]:
        async for chunk in original(prompt, params, stream):
            if chunk["meta_info"]["completion_tokens"] >= 3:
                chunk["meta_info"]["finish_reason"] = {"type": "abort", "message": "scheduler overloaded",
                                                       "status_code": 503}
                yield chunk
                return
            yield chunk

    fake._generate = aborting
    chunks = loop.run_until_complete(collect(loop.run_until_complete(engine.chat({**CHAT, "stream": True}))))
    assert chunks[-2] == {"error": {"message": "scheduler overloaded", "type": "backend_error",
                                    "param": None, "code": 503}}
    assert chunks[-1] == "[DONE]"


def test_health_is_a_real_generation(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    assert loop.run_until_complete(SGLangEngine(EngineConfig(engine="sglang")).health()) is False  # not started
    engine, fake = started(monkeypatch)
    generated = len(fake.prompts)  # start() itself generated once
    assert generated == 1
    assert loop.run_until_complete(engine.health()) is True
    assert len(fake.prompts) == generated + 1
    engine.health_timeout_s = 0.3
    fake.hang = True  # a wedged scheduler: the object exists, nothing comes back
    assert loop.run_until_complete(engine.health()) is False
    fake.hang = False
    monkeypatch.setattr(fake, "async_generate", _raising)
    assert loop.run_until_complete(engine.health()) is False
    loop.run_until_complete(engine.shutdown())
    assert fake.is_shutdown and loop.run_until_complete(engine.health()) is False


async def _raising(**_: Any) -> dict:
    raise RuntimeError("scheduler died")
