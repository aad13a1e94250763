"""The router's own data-plane listener (``router.listen``): the same router, without Serve's proxy hop.

Two router replicas on a real Serve cluster share one port through SO_REUSEPORT; requests on it must
behave exactly as on Serve's ingress: routing metadata, streaming with the OpenAI SDK, OpenAI-style
errors, and fallback when the preferred backend (a real process) is killed.
"""

from __future__ import annotations

import socket
import subprocess

import httpx
import openai
import pytest

from launchers.local import free_port
from serve_apps.listener import bind_socket
from tests.serve_apps.router.helpers import backends, chat_body, expected_text, stream, wait_for

FAST = {"timeouts": {"connect": 1, "first_byte": 1.5, "idle": 1.5}, "health": {"interval": 0.5, "timeout": 0.5}}


@pytest.fixture(scope="module")
def listener(router_cluster, fakes):
    port = free_port()
    backends_ = [{"name": name, "kind": "openai", "url": fakes[name].url, "models": ["tiny-chat"], "tier": tier, **FAST}
                 for tier, name in enumerate(("a", "b"))]
    urls = router_cluster.deploy({"fast": {"backends": backends_, "router": {
        "num_replicas": 2, "listen": {"host": "127.0.0.1", "port": port}}}})
    fast = f"http://127.0.0.1:{port}"
    wait_for(lambda: len(_listening(port)) == 2, timeout=90, message="both replicas listening")
    return {"serve": urls["fast"], "fast": fast, "port": port}


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()


@pytest.fixture(autouse=True)
def healthy(fakes, listener):
    for fake in fakes.values():
        fake.ensure()
    # each replica keeps its own health view and the kernel picks one per connection: ask several times
    for _ in range(6):
        wait_for(lambda: all(b["healthy"] for b in backends(listener["fast"]).values()), message="backends healthy")


def test_replicas_share_one_port(listener):
    sockets = _listening(listener["port"])
    assert len(sockets) == 2 and all(" 2048 " in line for line in sockets), sockets


def test_same_answer_and_metadata_as_serve_ingress(listener):
    body = chat_body("listener parity", 6)
    answers = [httpx.post(listener[path] + "/v1/chat/completions", json=body, timeout=30) for path in ("serve", "fast")]
    for response in answers:
        assert response.status_code == 200
        assert response.headers["x-backend"] == "a"
        assert response.json()["_backend"] == "a"
        assert response.json()["choices"][0]["message"]["content"] == expected_text("listener parity", 6)
    models = httpx.get(listener["fast"] + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-chat"]


def test_openai_sdk_streams_through_the_listener(listener):
    client = openai.OpenAI(base_url=listener["fast"] + "/v1", api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "sdk stream"}],
                                            max_tokens=8, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected_text("sdk stream", 8)


def test_errors_are_openai_json(listener):
    fast = listener["fast"]
    bad_json = httpx.post(fast + "/v1/chat/completions", content=b"{nope", timeout=10,
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(fast + "/v1/chat/completions", json=chat_body(model="no-such-model"), timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert httpx.get(fast + "/nowhere", timeout=10).status_code == 404


def test_killed_backend_falls_back_invisibly(listener, fakes):
    fakes["a"].kill()
    response = stream(listener["fast"], chat_body("after kill", 8))
    assert response.status == 200 and response.done
    assert response.text == expected_text("after kill", 8)
    assert response.headers["x-backend"] == "b"


def test_a_port_held_by_another_program_is_a_clear_error():
    with socket.socket() as other:  # no SO_REUSEPORT: the kernel refuses to share it
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError, match=f"listener cannot bind 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
