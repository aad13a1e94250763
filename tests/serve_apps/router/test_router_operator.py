"""What an operator looks for, on a router deployed on a real Ray Serve cluster in front of real
fake-backend processes (no engine): ``/metrics`` on the router's own listener (and behind the key when
the app has keys), ``/v1/models`` of an HA pair of stock OpenAI servers configured without ``models``,
and the contract where stock vLLM is strict (JSON content type, ``limit`` of the list routes, 405 with
``Allow``) on both doors."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from launchers.local import free_port
from tests.serve_apps.router.helpers import backends, chat_body, wait_for

FAST = {"timeouts": {"connect": 1, "first_byte": 1.5, "idle": 1.5}, "health": {"interval": 0.5, "timeout": 0.5}}
KEY = "operator-key-1"
JSON_ONLY = "Unsupported Media Type: Only 'application/json' is allowed"


@pytest.fixture(scope="module")
def doors(router_cluster, fakes, tmp_path_factory) -> dict[str, str]:
    """``listener`` and ``serve``: the two doors of app ``ops`` (stock OpenAI pair, no ``models``);
    ``keyed``: the listener of app ``opskeyed`` (the same pair, with client keys)."""
    tmp = tmp_path_factory.mktemp("operator")
    (tmp / "keys").write_text(KEY + "\n")
    pair = [{"name": name, "kind": "openai", "url": fakes[name].url, **FAST} for name in ("a", "b")]
    listen, keyed = free_port(), free_port()
    urls = router_cluster.deploy({
        "ops": {"backends": pair, "router": {"listen": {"host": "127.0.0.1", "port": listen}},
                "batch": {"storage": str(tmp / "batch")}},
        "opskeyed": {"backends": pair, "router": {"listen": {"host": "127.0.0.1", "port": keyed}},
                     "batch": {"enabled": False}, "auth": {"api_keys": {"file": str(tmp / "keys")}}},
    })
    found = {"listener": f"http://127.0.0.1:{listen}", "serve": urls["ops"], "keyed": f"http://127.0.0.1:{keyed}"}
    wait_for(lambda: _answers(found["listener"]) and _answers(found["keyed"]), timeout=60, message="listeners up")
    return found


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(autouse=True)
def healthy(fakes, doors):
    for fake in fakes.values():
        fake.ensure()
    wait_for(lambda: all(b["healthy"] for b in backends(doors["listener"]).values()), message="backends healthy")


def series(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A Prometheus text exposition as ``{sample name: [(labels, value), ...]}``."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_on_the_listener_are_the_routers_series(doors):
    url = doors["listener"]
    answer = httpx.post(url + "/v1/chat/completions", json=chat_body("metrics please", 4), timeout=30)
    assert answer.status_code == 200
    usage = answer.json()["usage"]
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = series(response.text)
    # as Ray's export labels them: this app, the router deployment, this replica
    health = {labels["backend"]: value for labels, value in found["ray_backend_health_status"]}
    assert health == {"a": 1.0, "b": 1.0}
    labels = found["ray_backend_health_status"][0][0]
    assert labels["application"] == "ops" and labels["deployment"] == "MultiBackendRouter" and labels["replica"]
    assert {labels["backend"]: value for labels, value in found["ray_backend_breaker_state"]} == {"a": 0.0, "b": 0.0}
    answered = sum(value for labels, value in found["ray_backend_request_count_total"] if labels["status"] == "200")
    assert answered >= 1
    # the one answer of this app so far (the other tests here send nothing a backend answers)
    tokens = [(labels["key"], labels["model"], labels["backend"], value)
              for labels, value in found["ray_router_prompt_tokens_total"]]
    assert tokens == [("anonymous", "tiny-chat", answer.headers["x-backend"], usage["prompt_tokens"])]
    assert "/metrics" in httpx.get(url + "/openapi.json", timeout=10).json()["paths"]


def test_metrics_need_the_key_when_the_app_has_keys(doors):
    url = doors["keyed"]
    refused = httpx.get(url + "/metrics", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    allowed = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert allowed.status_code == 200
    assert {labels["application"] for labels, _ in series(allowed.text)["ray_backend_health_status"]} == {"opskeyed"}


@pytest.mark.parametrize("door", ["listener", "serve"])
def test_models_of_openai_backends_without_a_models_list_are_asked_for(doors, door):
    """Two stock OpenAI servers configured without ``models`` (an HA pair): the union of what they
    serve, with the backends serving each."""
    listing = httpx.get(doors[door] + "/v1/models", timeout=10).json()
    assert [(card["id"], card["backends"], card["object"]) for card in listing["data"]] == [("tiny-chat", ["a", "b"], "model")]


@pytest.mark.parametrize("door", ["listener", "serve"])
@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_a_chat_not_sent_as_json_is_a_400_as_on_stock_vllm(doors, fakes, door, content_type):
    before = fakes["a"].requests() + fakes["b"].requests()
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(doors[door] + "/v1/chat/completions", content=json.dumps(chat_body()).encode(),
                          headers=headers, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["message"] == JSON_ONLY
    assert fakes["a"].requests() + fakes["b"].requests() == before  # refused at the door


@pytest.mark.parametrize("door", ["listener", "serve"])
@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches"])
def test_list_limit_is_the_documented_1_to_100(doors, door, path):
    url = doors[door] + path
    assert httpx.get(url, params={"limit": 100}, timeout=10).status_code == 200
    for bad in ("101", ""):
        response = httpx.get(f"{url}?limit={bad}", timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit", (bad, response.text)
    maximum = httpx.get(doors[door] + "/openapi.json", timeout=10).json()["paths"][path]["get"]["parameters"][1]
    assert maximum["schema"]["maximum"] == 100


@pytest.mark.parametrize("door", ["listener", "serve"])
def test_trace_is_a_405_with_allow(doors, door):
    for path, allowed in {"/v1/chat/completions": "POST", "/v1/models": "GET", "/metrics": "GET",
                          "/health": "GET, HEAD", "/v1/files": "GET, POST", "/v1/batches/batch_x/cancel": "POST"}.items():
        response = httpx.request("TRACE", doors[door] + path, timeout=10)
        assert response.status_code == 405 and response.headers.get("allow") == allowed, (path, response.headers)
        assert response.json()["error"]["type"] == "invalid_request_error"
