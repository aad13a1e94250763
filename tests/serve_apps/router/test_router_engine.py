"""The router in front of the session's real vLLM engine replica (``serve_stack``: one engine shared
with the replica tests): the ``serve`` kind through a DeploymentHandle, the ``openai`` kind over HTTP,
and a mid-stream kill resumed with vLLM's ``continue_final_message`` -- checked token-exact against
the same engine asked directly (temperature 0)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from launchers.local import free_port
from tests.conftest import MODEL, write_serve_config
from tests.serve_apps.router.helpers import StreamResult, chat_body

pytestmark = pytest.mark.engine
PROXY = Path(__file__).with_name("tcp_proxy.py")
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def proxy(serve_stack):
    """A killable TCP proxy in front of the engine's HTTP endpoint (throttled: ~25 ms per chunk)."""
    port = free_port()
    target = serve_stack.base_url.split("://")[1]
    process = subprocess.Popen([sys.executable, str(PROXY), str(port), target, "--delay", "0.025"])
    time.sleep(1.0)
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()


@pytest.fixture(scope="module")
def router(serve_stack, proxy, tmp_path_factory):
    """The router app added next to the session's apps (same config for them: Serve keeps them running)."""
    tmp = tmp_path_factory.mktemp("router-engine")
    port = int(serve_stack.base_url.rsplit(":", 1)[1])
    config = yaml.safe_load(write_serve_config(tmp / "base.yaml", port, serve_stack.ready_file).read_text())
    fast = {"timeouts": {"connect": 2, "first_byte": 60, "idle": 5}, "health": {"interval": 1, "timeout": 5}}
    backends = [
        {"name": "proxied", "kind": "openai", "url": proxy[1], "models": [MODEL], "tier": 0, **fast},
        {"name": "replica", "kind": "serve", "app": "llm", "deployment": f"engine-{MODEL}", "models": [MODEL], "tier": 1, **fast},
    ]
    config["applications"].append({"name": "router", "route_prefix": "/router",
                                   "import_path": "serve_apps.router.app:build_router_app", "args": {"backends": backends}})
    path = tmp / "with-router.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_stack.cluster.deploy(path)
    url = f"{serve_stack.base_url}/router"
    serve_stack.cluster.wait_ready(f"{url}/health", timeout_s=180)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = httpx.get(url + "/v1/backends", timeout=10).json()["data"]
        if all(s["healthy"] for s in states):
            break
        time.sleep(0.5)
    return url


def request(**extra):
    return chat_body("Once upon a time", MAX_TOKENS, temperature=0, seed=11, ignore_eos=True, **extra)


def test_serve_kind_through_deployment_handle(router):
    response = httpx.post(router + "/v1/chat/completions", json=request(backend="replica"), timeout=120)
    assert response.status_code == 200
    assert response.headers["x-backend"] == "replica"
    payload = response.json()
    assert payload["_backend"] == "replica"
    assert payload["usage"]["completion_tokens"] == MAX_TOKENS
    with httpx.stream("POST", router + "/v1/chat/completions", json=request(backend="replica", stream=True), timeout=120) as r:
        assert r.headers["x-backend"] == "replica"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_client_error_from_engine_is_passed_through(router):
    body = {**request(backend="replica"), "continue_final_message": True, "add_generation_prompt": True}
    response = httpx.post(router + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.headers["x-backend"] == "replica"
    assert "error" in response.json()


def test_engine_killed_mid_stream_is_resumed_token_exact(router, proxy, serve_stack):
    process, _ = proxy
    result = StreamResult(0, httpx.Headers())
    pieces_before_cut = 0
    streamed = request(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", router + "/v1/chat/completions", json=streamed, timeout=120) as response:
        result.status, result.headers = response.status_code, response.headers
        for line in response.iter_lines():
            if line.startswith(":"):
                result.comments.append(line)
            elif line == "data: [DONE]":
                result.done = True
            elif line.startswith("data: "):
                result.events.append(httpx.Response(200, content=line[6:]).json())
                has_text = bool(result.events[-1]["choices"] and result.events[-1]["choices"][0]["delta"].get("content"))
                if not result.comments and has_text:
                    pieces_before_cut += 1
                    if pieces_before_cut == 8 and process.poll() is None:
                        process.send_signal(signal.SIGKILL)  # the backend dies mid-generation
    assert result.status == 200 and result.done and not result.errors
    assert result.headers["x-backend"] == "proxied"
    assert len(result.comments) == 1 and "resumed on replica" in result.comments[0]
    cut = int(result.comments[0].split(" after ")[1].split()[0])
    text = result.text
    prefix, rest = text[:cut], text[cut:]
    assert rest, "the resumed part is empty: the kill came too late to test anything"

    direct = httpx.post(serve_stack.base_url + "/v1/chat/completions", json=request(), timeout=120).json()
    reference = direct["choices"][0]["message"]["content"]
    assert reference.startswith(prefix)  # what the client got before the kill is the engine's own output
    assert len(prefix_pieces(result, cut)) >= 8
    continuation = httpx.post(serve_stack.base_url + "/v1/chat/completions", timeout=120, json={
        **request(), "max_tokens": MAX_TOKENS - len(prefix_pieces(result, cut)),
        "messages": request()["messages"] + [{"role": "assistant", "content": prefix}],
        "continue_final_message": True, "add_generation_prompt": False,
    }).json()["choices"][0]["message"]["content"]
    assert rest == continuation  # the seam: nothing lost, nothing repeated
    assert len({e["id"] for e in result.events}) == 1
    # the client's own numbers, as if nothing had happened: its prompt, and every token it received
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    usage = [{k: e["usage"][k] for k in keys} for e in result.events if e.get("usage")]
    assert usage == [{k: direct["usage"][k] for k in keys}] and usage[0]["completion_tokens"] == MAX_TOKENS


def prefix_pieces(result: StreamResult, cut: int) -> list[str]:
    """Text pieces (~tokens) the client had before the cut."""
    pieces, size = [], 0
    for event in result.events:
        piece = event["choices"][0]["delta"].get("content") if event["choices"] else None
        if piece and size < cut:
            pieces.append(piece)
            size += len(piece)
    return pieces
