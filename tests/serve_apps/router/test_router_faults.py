"""The router on a real Ray Serve cluster in front of real fake-backend processes with real faults.

Backends (real processes): ``a`` and ``b`` speak OpenAI (a is preferred: tier 0), ``ollama`` the
Ollama native API, ``claude`` the Anthropic Messages API. Faults are injected in the servers
(hang, 500, 429 + Retry-After, SIGKILL before/while streaming) -- nothing is mocked in the router.
Each router app below has its own breaker state, so tests don't disturb each other.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.serve_apps.router.conftest import ANTHROPIC_KEY
from tests.serve_apps.router.helpers import backends, chat_body, expected_text, stream, wait_for

# ``response`` bounds a non-streaming answer (unset by default: a long answer is not a hang); set here,
# a hung backend's non-streaming request falls back after it, as a stream's does after first_byte
FAST = {"timeouts": {"connect": 1, "first_byte": 1.5, "idle": 1.5, "response": 1.5},
        "health": {"interval": 0.5, "timeout": 0.5}}


def openai_backend(name: str, url: str, tier: int, **extra):
    return {"name": name, "kind": "openai", "url": url, "models": ["tiny-chat"], "tier": tier, **FAST, **extra}


@pytest.fixture(scope="module")
def routers(router_cluster, fakes, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "anthropic").write_text(ANTHROPIC_KEY + "\n")
    (secrets / "clients").write_text("client-key-1\nclient-key-2\n")
    a, b = fakes["a"].url, fakes["b"].url
    no_breaker = {"breaker": {"failure_threshold": 1000}}
    claude = {"name": "claude", "kind": "anthropic", "url": fakes["claude"].url, "tier": 3, **FAST,
              "models": [{"name": "claude-tiny"}], "api_key": {"file": str(secrets / "anthropic")}}
    ollama = {"name": "ollama", "kind": "ollama", "url": fakes["ollama"].url, "tier": 2, **FAST,
              "models": [{"name": "tiny-chat:latest", "aliases": ["tiny-ollama"]}]}
    return router_cluster.deploy({
        "main": {"backends": [openai_backend("a", a, 0, **no_breaker), openai_backend("b", b, 1, **no_breaker), ollama, claude]},
        "breaker": {"backends": [openai_backend("a", a, 0, breaker={"failure_threshold": 3, "open_seconds": 2}),
                                 openai_backend("b", b, 1)]},
        "ratelimit": {"backends": [openai_backend("a", a, 0), openai_backend("b", b, 1)]},
        "kill": {"backends": [openai_backend("a", a, 0), openai_backend("b", b, 1)]},
        "noresume": {"backends": [openai_backend("a", a, 0), openai_backend("b", b, 1, resume_on_failure=False)]},
        "claude": {"backends": [openai_backend("a", a, 0), {**claude, "models": [{"name": "tiny-chat"}]}]},
        "chain": {"backends": [openai_backend("a", a, 0), openai_backend("b", b, 1),
                               {**claude, "models": [{"name": "tiny-chat"}]}]},
        "secured": {"backends": [openai_backend("a", a, 0)], "auth": {"api_keys": {"file": str(secrets / "clients")}}},
    })


@pytest.fixture(autouse=True)
def healthy(fakes, routers):
    """Every fake up and fault-free, and every router seeing them healthy, before each test."""
    for fake in fakes.values():
        fake.ensure()
    for url in routers.values():
        wait_for(lambda url=url: all(b["healthy"] for b in backends(url).values()), message=f"{url} backends healthy")


def post(url: str, body: dict, headers: dict | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout)


# ------------------------------------------------------------------ routing


def test_preferred_backend_answers_and_is_named(routers):
    response = post(routers["main"], chat_body("hi", 6))
    assert response.status_code == 200
    assert response.headers["x-backend"] == "a"
    assert "x-fallback-from" not in response.headers
    payload = response.json()
    assert payload["_backend"] == "a"
    assert payload["choices"][0]["message"]["content"] == expected_text("hi", 6)


def test_explicit_backend_by_body_field_and_header(routers, fakes):
    before = fakes["a"].requests()
    by_body = post(routers["main"], {**chat_body("x", 3), "backend": "b"})
    by_header = post(routers["main"], chat_body("x", 3), headers={"X-Backend": "b"})
    assert by_body.headers["x-backend"] == by_header.headers["x-backend"] == "b"
    assert by_body.json()["_backend"] == "b"
    assert fakes["a"].requests() == before
    unknown = post(routers["main"], {**chat_body(), "backend": "nope"})
    assert unknown.status_code == 400
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}


def test_models_union_with_aliases_and_backend_status(routers):
    models = {m["id"]: m for m in httpx.get(routers["main"] + "/v1/models").json()["data"]}
    assert set(models) == {"tiny-chat", "tiny-chat:latest", "tiny-ollama", "claude-tiny"}
    assert models["tiny-chat"]["backends"] == ["a", "b"]
    assert models["tiny-ollama"]["alias_of"] == "tiny-chat:latest"
    status = backends(routers["main"])
    assert set(status) == {"a", "b", "ollama", "claude"}
    assert status["a"]["breaker"] == "closed" and status["a"]["healthy"] is True
    assert {"latency_ms", "error_rate", "outstanding", "tier"} <= set(status["a"])


def test_bad_requests_get_openai_errors(routers):
    url = routers["main"]
    bad_json = httpx.post(url + "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    unknown_model = post(url, chat_body(model="gpt-9"))
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    assert httpx.get(url + "/v1/chat/completions").status_code == 405
    assert httpx.get(url + "/v1/nothing").status_code == 404


def test_client_4xx_is_returned_not_retried(routers, fakes):
    before_b = fakes["b"].requests()
    response = post(routers["main"], chat_body(max_tokens=0))
    assert response.status_code == 400
    assert response.headers["x-backend"] == "a"
    assert "max_tokens" in response.json()["error"]["message"]
    assert fakes["b"].requests() == before_b


# ------------------------------------------------------------------ fallback per fault kind


@pytest.mark.parametrize("fault", [{"mode": "status", "status": 500}, {"mode": "status", "status": 503}, {"mode": "hang"}])
@pytest.mark.parametrize("streaming", [False, True])
def test_fallback_is_invisible(routers, fakes, fault, streaming):
    fakes["a"].control(**fault)
    started = time.monotonic()
    if streaming:
        result = stream(routers["main"], chat_body("fall", 5))
        assert result.status == 200 and result.done and not result.errors
        assert result.text == expected_text("fall", 5)
        headers = result.headers
    else:
        response = post(routers["main"], chat_body("fall", 5))
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == expected_text("fall", 5)
        headers = response.headers
    assert headers["x-backend"] == "b"
    assert headers["x-fallback-from"] == "a"
    assert time.monotonic() - started < 5  # a hang costs first_byte or response (1.5 s), not the client's patience


def test_fallback_on_connection_refused(routers, fakes):
    fakes["a"].kill()
    response = post(routers["main"], chat_body("dead", 4))  # before any health probe notices
    assert response.status_code == 200
    assert response.headers["x-backend"] == "b"
    wait_for(lambda: backends(routers["main"])["a"]["healthy"] is False, message="health probe marks a down")
    assert post(routers["main"], chat_body("dead", 4)).headers.get("x-fallback-from") is None  # skipped outright


def test_429_retry_after_keeps_backend_out(routers, fakes):
    fakes["a"].control(mode="status", status=429, retry_after=3)
    first = post(routers["ratelimit"], chat_body())
    assert first.status_code == 200 and first.headers["x-fallback-from"] == "a"
    fakes["a"].control(mode="ok")
    seen = fakes["a"].requests()
    second = post(routers["ratelimit"], chat_body())
    assert second.headers["x-backend"] == "b"
    assert fakes["a"].requests() == seen  # not even tried during Retry-After
    assert backends(routers["ratelimit"])["a"]["breaker"] == "open"
    time.sleep(3.2)
    assert post(routers["ratelimit"], chat_body()).headers["x-backend"] == "a"


def test_all_backends_failing_gives_503(routers, fakes):
    fakes["a"].control(mode="status", status=500)
    fakes["b"].control(mode="status", status=502)
    response = post(routers["ratelimit"], chat_body())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "backend_unavailable" and "a: 500" in error["message"] and "b: 502" in error["message"]


def test_breaker_opens_half_opens_and_recovers(routers, fakes):
    url = routers["breaker"]
    fakes["a"].control(mode="status", status=500)
    for _ in range(3):
        assert post(url, chat_body()).headers["x-backend"] == "b"
    assert backends(url)["a"]["breaker"] == "open"
    tried = fakes["a"].requests()
    assert post(url, chat_body()).headers["x-backend"] == "b"
    assert fakes["a"].requests() == tried  # open: not tried
    time.sleep(2.2)
    assert backends(url)["a"]["breaker"] == "half_open"
    assert post(url, chat_body()).headers["x-backend"] == "b"  # the probe fails -> open again
    assert fakes["a"].requests() == tried + 1
    assert backends(url)["a"]["breaker"] == "open"
    fakes["a"].control(mode="ok")
    time.sleep(2.2)
    response = post(url, chat_body())  # the probe succeeds -> closed
    assert response.headers["x-backend"] == "a"
    assert backends(url)["a"]["breaker"] == "closed"


# ------------------------------------------------------------------ streams that break after the first byte


def test_mid_stream_death_is_resumed_without_loss_or_duplication(routers, fakes):
    fakes["a"].control(die_after=7, delay=0.01)
    result = stream(routers["kill"], chat_body("resume me", 30))
    assert result.status == 200 and result.done and not result.errors
    assert result.headers["x-backend"] == "a"
    assert result.text == expected_text("resume me", 30)
    assert result.comments and "resumed on b" in result.comments[0]
    assert len({e["id"] for e in result.events}) == 1  # one stream, as far as the client can tell
    roles = [e for e in result.events if (e["choices"][0].get("delta") or {}).get("role")]
    assert len(roles) == 1
    assert result.events[-1]["choices"][0]["finish_reason"] == "length"


def test_mid_stream_death_resumed_on_anthropic(routers, fakes):
    fakes["a"].control(die_after=4, delay=0.01)
    result = stream(routers["claude"], chat_body("cross protocol", 12))
    assert result.status == 200 and result.done and not result.errors
    assert "resumed on claude" in result.comments[0]
    assert result.text == expected_text("cross protocol", 12)


def test_two_deaths_in_one_stream_are_both_resumed(routers, fakes):
    fakes["a"].control(die_after=4, delay=0.01)
    fakes["b"].control(die_after=3, delay=0.01)  # b dies 3 tokens into the continuation
    result = stream(routers["chain"], chat_body("twice", 20))
    assert result.status == 200 and result.done and not result.errors
    assert [c.split(" after ")[0] for c in result.comments] == [": resumed on b", ": resumed on claude"]
    assert result.text == expected_text("twice", 20)
    assert len({e["id"] for e in result.events}) == 1


def test_death_after_role_chunk_only_restarts_invisibly(routers, fakes):
    fakes["a"].control(die_after=0)  # sends the role chunk, then dies before any text
    result = stream(routers["noresume"], chat_body("restart", 6))  # b cannot resume, but may start over
    assert result.status == 200 and result.done and not result.errors
    assert result.text == expected_text("restart", 6)
    assert result.comments == [": resumed on b after 0 chars"]


def test_mid_stream_death_without_resume_ends_with_error_event(routers, fakes):
    fakes["a"].control(die_after=3, delay=0.01)
    result = stream(routers["noresume"], chat_body("no resume", 10))
    assert result.status == 200 and result.done
    assert result.text == expected_text("no resume", 3)
    assert len(result.errors) == 1 and result.errors[0]["error"]["type"] == "backend_error"


def test_sigkill_under_concurrent_load_has_zero_client_errors(routers, fakes):
    url = routers["kill"]
    fakes["a"].control(delay=0.02)  # ~0.3 s per 16-token answer: many requests in flight at the kill

    async def worker(index: int) -> list[str]:
        problems = []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for round_ in range(6):
                prompt = f"load {index} {round_}"
                body = chat_body(prompt, 16, stream=round_ % 2 == 0)
                if body["stream"]:
                    text, done = "", False
                    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        if response.status_code != 200:
                            problems.append(f"{prompt}: status {response.status_code}")
                            continue
                        async for line in response.aiter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                event = httpx.Response(200, content=line[6:]).json()
                                if "error" in event:
                                    problems.append(f"{prompt}: error event")
                                else:
                                    text += event["choices"][0]["delta"].get("content") or ""
                    if not done or text != expected_text(prompt, 16):
                        problems.append(f"{prompt}: stream text mismatch or no [DONE]")
                else:
                    response = await client.post("/v1/chat/completions", json=body)
                    if response.status_code != 200 or response.json()["choices"][0]["message"]["content"] != expected_text(prompt, 16):
                        problems.append(f"{prompt}: {response.status_code}")
        return problems

    async def run() -> list[str]:
        tasks = [asyncio.create_task(worker(i)) for i in range(12)]
        await asyncio.sleep(0.6)
        fakes["a"].kill()
        return [p for result in await asyncio.gather(*tasks) for p in result]

    before_b = fakes["b"].requests()
    assert asyncio.run(run()) == []
    assert fakes["b"].requests() > before_b  # b really took over


# ------------------------------------------------------------------ auth


def test_api_keys(routers):
    url = routers["secured"]
    missing = post(url, chat_body())
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert post(url, chat_body(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/v1/models").status_code == 401
    assert post(url, chat_body(), headers={"Authorization": "Bearer client-key-2"}).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # liveness stays open
    assert "client-key" not in missing.text


# ------------------------------------------------------------------ translation


def test_anthropic_translation(routers):
    text = expected_text("translate", 6)
    stop = text.split()[3]
    body = {"model": "claude-tiny", "max_tokens": 6, "stop": [stop],
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "translate"}]}
    response = post(routers["main"], body)
    assert response.status_code == 200 and response.headers["x-backend"] == "claude"
    payload = response.json()
    assert payload["object"] == "chat.completion"
    assert payload["choices"][0]["message"] == {"role": "assistant", "content": " " + " ".join(text.split()[:3])}
    assert payload["choices"][0]["finish_reason"] == "stop"
    assert payload["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}  # system counted
    long = post(routers["main"], {**body, "stop": None, "max_tokens": 4}).json()
    assert long["choices"][0]["finish_reason"] == "length"
    result = stream(routers["main"], {**body, "stop": None, "max_tokens": 4, "stream_options": {"include_usage": True}})
    assert result.done and result.text == expected_text("translate", 4)
    assert result.events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finishes = [c["finish_reason"] for e in result.events for c in e["choices"] if c.get("finish_reason")]
    assert finishes == ["length"]
    assert result.events[-1]["usage"]["completion_tokens"] == 4


def test_anthropic_refuses_untranslatable_requests(routers):
    response = post(routers["main"], {"model": "claude-tiny", "n": 2, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert "not translated" in response.json()["error"]["message"]


def test_ollama_translation(routers):
    text = expected_text("llama", 8)
    stop = text.split()[5]
    body = chat_body("llama", 8, model="tiny-ollama", stop=stop, temperature=0)
    response = post(routers["main"], body)
    assert response.status_code == 200 and response.headers["x-backend"] == "ollama"
    payload = response.json()
    assert payload["model"] == "tiny-chat:latest"
    assert payload["choices"][0]["message"]["content"] == " " + " ".join(text.split()[:5])
    assert payload["choices"][0]["finish_reason"] == "stop"
    assert payload["usage"]["completion_tokens"] == 5
    result = stream(routers["main"], {**body, "stop": None})
    assert result.done and not result.errors and result.text == text
    assert result.events[-1]["choices"][0]["finish_reason"] == "length"
