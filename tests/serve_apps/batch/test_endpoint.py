"""``POST /v1/batch`` on the router against the real engine, with the first-tier backend down: results
in input order, fallback visible in ``_backend``, one bad item never fails the batch, limits enforced."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.engine


def post(batch_router, body, **kwargs) -> httpx.Response:
    return httpx.post(batch_router.url + "/v1/batch", timeout=120, **kwargs, **({"json": body} if body is not None else {}))


def test_results_in_order_with_fallback(batch_router):
    prompts = [f"item {i}" for i in range(12)] + [[{"role": "user", "content": "as messages"}]]
    response = post(batch_router, {"prompts": prompts, "model": MODEL, "params": {"max_tokens": 4 + 0, "temperature": 0}})
    assert response.status_code == 200
    payload = response.json()
    assert payload["count"] == 13 and payload["backend"] is None
    for result in payload["results"]:
        assert result["object"] == "chat.completion"
        assert result["_backend"] == "replica"  # tier 0 ("down") refused; the router fell back
        assert result["usage"]["completion_tokens"] <= 4
    # order: each answer is the one its own prompt gets alone
    alone = post(batch_router, {"prompts": [prompts[7]], "model": MODEL, "params": {"max_tokens": 4, "temperature": 0}})
    assert alone.json()["results"][0]["choices"] == payload["results"][7]["choices"]
    status = httpx.get(batch_router.url + "/v1/backends", timeout=10).json()["data"]
    assert {s["name"]: s["healthy"] for s in status}["down"] is False


def test_one_bad_item_does_not_fail_the_batch(batch_router):
    body = {"prompts": ["fine", [{"role": "nobody", "content": 3}], "also fine"], "model": MODEL,
            "params": {"max_tokens": 2}}
    payload = post(batch_router, body).json()
    assert payload["count"] == 3
    assert payload["results"][0]["object"] == "chat.completion"
    assert payload["results"][2]["object"] == "chat.completion"
    assert set(payload["results"][1]["error"]) >= {"message", "type", "code"}


def test_explicit_backend_and_unknown_model(batch_router):
    payload = post(batch_router, {"prompts": ["x"], "backend": "replica", "params": {"max_tokens": 2}}).json()
    assert payload["backend"] == "replica" and payload["results"][0]["_backend"] == "replica"
    payload = post(batch_router, {"prompts": ["x", "y"], "model": "no-such-model"}).json()
    assert [r["error"]["code"] for r in payload["results"]] == ["model_not_found"] * 2


@pytest.mark.parametrize("body,status", [
    ({"prompts": ["x"] * 51}, 400),                      # over endpoint_max_items
    ({"prompts": []}, 400),
    ({"prompts": "not a list"}, 400),
    ({"prompts": ["x"], "params": {"stream": True}}, 400),
    ({"prompts": ["x"], "surprise": 1}, 400),
    ({"prompts": ["x" * 300_000]}, 413),                 # over endpoint_max_bytes
])
def test_limits_and_bad_input(batch_router, body, status):
    response = post(batch_router, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_not_json(batch_router):
    response = post(batch_router, None, content=b"{nope")
    assert response.status_code == 400 and "error" in response.json()
