"""A user's own engine, named in a serve config by import path, served by the generic OpenAI app.

Also the replica's behaviour while an engine is still starting: 503 with Retry-After, never a hang.
"""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.engine


def test_starting_engine_answers_503_then_serves(serve_stack):
    url = serve_stack.echo_url
    body = {"model": "echo", "messages": [{"role": "user", "content": "ping"}]}
    if not serve_stack.ready_file.exists():
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        serve_stack.ready_file.touch()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "echo engine never became ready"
        time.sleep(0.3)
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ping"


def test_generic_app_errors_are_openai_style(serve_stack):
    serve_stack.ready_file.touch()
    url = serve_stack.echo_url
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    bad_json = httpx.post(f"{url}/v1/chat/completions", content=b"{", timeout=10)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    unknown = httpx.post(f"{url}/v1/chat/completions", json={"model": "x", "messages": []}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    missing = httpx.post(f"{url}/v1/completions", json={"model": "echo"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["echo"]
