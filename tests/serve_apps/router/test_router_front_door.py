"""Production semantics at the front door, on a router deployed next to the session's real vLLM engine
(``serve_stack``), through both doors (the router's listener and Serve's ingress) and both backend
transports (``serve``: the engine worker's own port; ``openai``: the engine app over Serve's HTTP):

- a non-streaming answer that takes longer than ``first_byte`` succeeds, identical to the engine asked
  directly, and the breaker stays closed;
- a client that goes away stops its generation: on ``up``'s own topology (the router's listener, then
  the engine worker's port; an engine that runs one sequence at a time, so a generation left running
  would hold the next request for seconds), the next request is answered at idle latency, streaming or
  not, directly, through an ``openai`` backend in front of it, over a Serve handle (``transport:
  handle``) and through Serve's HTTP proxy door;
- ``/ready`` is 503 while a configured model has no backend that can generate, ``/health`` stays 200;
- every error the router makes itself says so (``x-backend: router``);
- the Responses and Anthropic Messages APIs (and embeddings) answer through the router as the engine's
  own server answers them, with the ``openai`` and ``anthropic`` SDKs.
"""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest
import yaml

from launchers.local import free_port
from tests.conftest import MODEL, write_serve_config
from tests.serve_apps.router.helpers import backends, chat_body, wait_for

pytestmark = pytest.mark.engine
GATED = "tiny-gate"  # an engine of its own that runs one sequence at a time (max_num_seqs 1)
FIRST_BYTE = 1.5  # far below the long answers below: a non-streaming answer must not be bound by it
LONG = {"max_tokens": 2000, "temperature": 0, "ignore_eos": True}  # seconds on 2 cores (greedy needs n=1)


@pytest.fixture(scope="module")
def door(serve_stack, tmp_path_factory) -> dict[str, str]:
    """App ``door``: backend ``replica`` (kind serve); app ``doorhttp``: backend ``engine-http`` (kind
    openai, the engine app over Serve's HTTP); app ``doordown``: beside the replica's model, a model whose
    only backend is a closed port, and an ollama backend. Listener URLs under ``listener``/``http``/``down``, Serve's ingress
    of ``door`` under ``serve``, the engine's own app (what stock vLLM answers) under ``engine``."""
    tmp = tmp_path_factory.mktemp("front-door")
    port = int(serve_stack.base_url.rsplit(":", 1)[1])
    config = yaml.safe_load(write_serve_config(tmp / "base.yaml", port, serve_stack.ready_file).read_text())
    timeouts = {"timeouts": {"connect": 2, "first_byte": FIRST_BYTE, "idle": 30}, "health": {"interval": 0.5, "timeout": 5}}
    replica = {"name": "replica", "kind": "serve", "app": "llm", "deployment": f"engine-{MODEL}", "models": [MODEL], **timeouts}
    over_http = {"name": "engine-http", "kind": "openai", "url": serve_stack.base_url, "models": [MODEL], **timeouts}
    closed = {"name": "nowhere", "kind": "openai", "url": f"http://127.0.0.1:{free_port()}", "models": ["absent"], **timeouts}
    # kind ollama has no Responses API: its route is refused before any request is sent (the port is closed)
    ollama = {"name": "ollama", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}", "models": ["llama"]}
    # a budget for non-streaming answers, and a breaker that one charge would open
    gated_engine = {"name": GATED, "model": "builtin:tiny-chat", "kv_cache_gb": 1, "num_cpus": 0,
                    "engine_kwargs": {"max_num_seqs": 1}}
    gated = {"name": "gated", "kind": "serve", "engine": GATED, **timeouts}
    # the gated engine over a Serve handle (not its worker's port), from another app's router
    gated_by_handle = {"name": "gated-handle", "kind": "serve", "app": "doorgate", "deployment": f"engine-{GATED}",
                       "models": [GATED], "transport": "handle", **timeouts}
    ports = {name: free_port() for name in ("door", "doorhttp", "doordown", "doorbudget", "doorgate", "doorchain",
                                            "doorhandle")}
    bounded = {"name": "bounded", "kind": "serve", "app": "doorgate", "deployment": f"engine-{GATED}", "models": [GATED],
               "timeouts": {"first_byte": FIRST_BYTE, "response": 1.0}, "health": {"interval": 0.5},
               "breaker": {"failure_threshold": 1}}
    chained = {"name": "chained", "kind": "openai", "url": f"http://127.0.0.1:{ports['doorgate']}", "models": [GATED],
               **timeouts}
    apps = {"door": [replica], "doorhttp": [over_http], "doordown": [replica, closed, ollama], "doorbudget": [bounded],
            "doorgate": [gated], "doorchain": [chained], "doorhandle": [gated_by_handle]}
    for name, listed in apps.items():
        config["applications"].append({
            "name": name, "route_prefix": f"/{name}", "import_path": "serve_apps.router.app:build_router_app",
            "args": {"backends": listed, "batch": {"enabled": False}, **({"engines": [gated_engine]} if name == "doorgate" else {}),
                     "router": {"listen": {"host": "127.0.0.1", "port": ports[name]}}},
            # the disconnect tests' apps run as every shipped serve config does
            **({"runtime_env": {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}}
               if name in ("doorgate", "doorchain", "doorhandle") else {})})
    path = tmp / "with-door.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_stack.cluster.deploy(path)
    urls = {"listener": f"http://127.0.0.1:{ports['door']}", "http": f"http://127.0.0.1:{ports['doorhttp']}",
            "down": f"http://127.0.0.1:{ports['doordown']}", "budget": f"http://127.0.0.1:{ports['doorbudget']}",
            "gate": f"http://127.0.0.1:{ports['doorgate']}", "chain": f"http://127.0.0.1:{ports['doorchain']}",
            "handle": f"http://127.0.0.1:{ports['doorhandle']}", "gate-serve": f"{serve_stack.base_url}/doorgate",
            "serve": f"{serve_stack.base_url}/door",
            "engine": serve_stack.base_url}
    for name in ("listener", "http", "down", "budget", "gate", "chain", "handle", "serve", "gate-serve"):
        serve_stack.cluster.wait_ready(f"{urls[name]}/health", timeout_s=300)
    for name in ("listener", "http", "gate", "chain", "handle", "budget"):
        serve_stack.cluster.wait_ready(f"{urls[name]}/ready", timeout_s=300)
    return urls
    return urls


def next_request_seconds(url: str) -> float:
    """Seconds for a 4-token answer of the gated engine: about its idle latency if nothing else runs,
    the rest of a running generation otherwise (it runs one sequence at a time)."""
    started = time.monotonic()
    answer = httpx.post(url + "/v1/chat/completions", json=chat_body("hi", 4, model=GATED), timeout=60)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


# ---------------------------------------------------------------- 1. long non-streaming answers

@pytest.mark.parametrize("name", ["listener", "http"])
def test_long_non_streaming_answer_outlives_first_byte(door, name):
    body = chat_body("Tell me a long story", **LONG)
    started = time.monotonic()
    routed = httpx.post(door[name] + "/v1/chat/completions", json=body, timeout=300)
    took = time.monotonic() - started
    assert routed.status_code == 200, routed.text
    assert took > 2 * FIRST_BYTE, f"the answer took {took:.1f} s: too short to prove anything"
    backend = routed.headers["x-backend"]
    direct = httpx.post(door["engine"] + "/v1/chat/completions", json=body, timeout=300).json()
    assert [c["message"]["content"] for c in routed.json()["choices"]] == [c["message"]["content"] for c in direct["choices"]]
    assert routed.json()["usage"] == direct["usage"]
    state = backends(door[name])[backend]
    assert state["breaker"] == "closed" and state["last_error"] is None


def test_a_set_response_budget_is_a_504_without_breaker_charge(door):
    """``timeouts.response`` bounds a non-streaming answer: over it (on its only backend) the client gets
    504, the breaker is not charged, and the engine stops generating."""
    url = door["budget"]
    answer = httpx.post(url + "/v1/chat/completions", json=chat_body("Tell me a long story", model=GATED, **LONG),
                        timeout=120)
    assert answer.status_code == 504 and answer.headers["x-backend"] == "router"
    assert answer.json()["error"]["type"] == "timeout" and "bounded: deadline" in answer.json()["error"]["message"]
    assert backends(url)["bounded"]["breaker"] == "closed"  # threshold 1: one charge would have opened it
    assert next_request_seconds(url) < 1.0  # the abandoned generation was aborted


# ---------------------------------------------------------------- 2. a client that goes away

def _give_up(url: str, body: dict, after: float) -> None:
    """Send ``body`` and drop the connection after ``after`` seconds (as a client timeout does)."""
    try:
        if body.get("stream"):
            deadline = time.monotonic() + after
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=after) as response:
                for _ in response.iter_bytes():
                    if time.monotonic() > deadline:
                        return  # leaving the block closes the half-read response: the connection drops
        else:
            httpx.post(url + "/v1/chat/completions", json=body, timeout=after)
    except httpx.TimeoutException:
        return
    raise AssertionError("the request finished before the client gave up: make it longer")


@pytest.mark.parametrize("name", ["gate", "chain", "handle", "gate-serve"])
@pytest.mark.parametrize("streamed", [False, True], ids=["non-streaming", "streaming"])
def test_client_disconnect_frees_the_engine_within_a_second(door, name, streamed):
    idle = min(next_request_seconds(door[name]) for _ in range(3))
    body = chat_body("Tell me a long story", model=GATED, **{**LONG, "stream": streamed})
    _give_up(door[name], body, after=2.0)
    time.sleep(1.0)  # the bound: the engine is free within a second of the client leaving
    after = next_request_seconds(door[name])
    assert after < idle + 0.5, f"next request took {after:.2f} s (idle {idle:.2f} s): the generation still ran"
    for url in {door[name], door["gate"]}:
        state = next(iter(backends(url).values()))
        assert state["breaker"] == "closed" and state["last_error"] is None  # nothing charged to the backend


# ---------------------------------------------------------------- 3. readiness

def test_ready_means_every_configured_model_can_generate(door):
    assert httpx.get(door["listener"] + "/ready", timeout=10).status_code == 200
    wait_for(lambda: backends(door["down"])["nowhere"]["healthy"] is False, timeout=30, message="nowhere probed")
    down = httpx.get(door["down"] + "/ready", timeout=10)
    assert down.status_code == 503 and down.headers["retry-after"]
    payload = down.json()
    assert payload["status"] == "not_ready" and payload["models_waiting"] == ["absent", "llama"]
    assert payload["models"][MODEL] == ["replica"]
    assert httpx.get(door["down"] + "/health", timeout=10).status_code == 200  # liveness: the process serves
    assert httpx.get(door["serve"] + "/ready", timeout=10).json()["status"] == "ready"


# ---------------------------------------------------------------- 4. router-made errors say so

ROUTER_ERRORS = [
    ("POST", "/v1/chat/completions", {"json": chat_body(model="no-such-model")}, 404),
    ("POST", "/v1/chat/completions", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ("POST", "/v1/chat/completions", {"json": chat_body(backend="no-such-backend")}, 400),
    ("POST", "/v1/chat/completions", {"json": {"model": MODEL, "messages": "not a list"}}, 400),
    ("GET", "/v1/chat/completions", {}, 405),
    ("GET", "/v1/no-such-route", {}, 404),
    ("POST", "/v1/chat/completions", {"content": b"{" + b" " * (5 * 1024 * 1024) + b"}",
                                      "headers": {"content-type": "application/json"}}, 413),
    ("POST", "/v1/responses", {"json": {"model": "absent", "input": "hi"}}, 503),  # its only backend is down
]


@pytest.mark.parametrize("method,path,extra,status", ROUTER_ERRORS, ids=[f"{e[3]}-{i}" for i, e in enumerate(ROUTER_ERRORS)])
def test_router_made_errors_are_tagged(door, method, path, extra, status):
    for name in ("down",) if status == 503 else ("down", "serve"):  # "absent" is a model of app doordown only
        response = httpx.request(method, door[name] + path, timeout=30, **extra)
        assert response.status_code == status, response.text
        assert response.headers["x-backend"] == "router"
        assert set(response.json()["error"]) >= {"message", "type", "code"}


# ---------------------------------------------------------------- 5. the APIs clients call today

def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("name", ["listener", "serve", "http"])
def test_responses_api_is_greedy_identical_to_the_engine(door, name):
    ask = {"model": MODEL, "input": "Write about the sea", "max_output_tokens": 24, "temperature": 0}
    direct = _client(door["engine"]).responses.create(**ask)
    raw = _client(door[name]).responses.with_raw_response.create(**ask)
    routed = raw.parse()
    assert raw.headers["x-backend"] in ("replica", "engine-http")
    assert routed.output_text == direct.output_text and routed.output_text
    assert routed.usage.output_tokens == direct.usage.output_tokens
    with _client(door[name]).responses.stream(**ask) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == direct.output_text


@pytest.mark.parametrize("name", ["listener", "http"])
def test_anthropic_messages_api_matches_the_engine(door, name):
    ask = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hello there"}],
           "extra_body": {"temperature": 0}}
    direct = anthropic.Anthropic(base_url=door["engine"], api_key="unused", max_retries=0).messages.create(**ask)
    client = anthropic.Anthropic(base_url=door[name], api_key="unused", max_retries=0)
    routed = client.messages.create(**ask)
    assert [b.text for b in routed.content] == [b.text for b in direct.content] and routed.content
    assert routed.usage.output_tokens == direct.usage.output_tokens
    with client.messages.stream(**ask) as events:
        text = "".join(events.text_stream)
    assert text == direct.content[0].text


def test_embeddings_answer_as_the_engine_does(door):
    """The tiny model is a generation model: its engine does not serve embeddings. The router answers
    the engine's status, tagged with the backend that said it, in OpenAI's error shape (vLLM's own
    server answers its framework's ``{"detail": "Not Found"}``), the engine's words in the message."""
    body = {"model": MODEL, "input": "hello"}
    direct = httpx.post(door["engine"] + "/v1/embeddings", json=body, timeout=30)
    routed = httpx.post(door["listener"] + "/v1/embeddings", json=body, timeout=30)
    assert routed.status_code == direct.status_code and 400 <= routed.status_code < 500
    assert routed.headers["x-backend"] == "replica"
    error = routed.json()["error"]
    assert error["code"] == direct.status_code and direct.text[:300] in error["message"]


def test_a_backend_kind_without_the_route_gets_a_clear_4xx(door):
    """Ollama does not serve the Responses API: a 404 naming the route, not a 5xx or a silent 200."""
    response = httpx.post(door["down"] + "/v1/responses", json={"model": "llama", "input": "hi"}, timeout=30)
    assert response.status_code == 404 and "/v1/responses" in response.json()["error"]["message"]
    assert response.headers["x-backend"] == "router"
