"""``routing: prefix_affinity`` on a real Serve cluster: a router app with two vLLM engine replicas of
the tiny model. Conversations stay on one replica (counted by the engines themselves), a burst of one
prefix spills over to the other replica past the margin (and the Prometheus counter says so), and a
SIGKILLed replica's conversations move to the survivor with no client error.

Two backends on the same engine replicas: ``sticky`` (margin too large to spill) and ``spilly``
(margin 1); every request names its backend and every answer must come from it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import urllib.request
from typing import Any

import httpx
import pytest

from launchers.procs import descendants
from loadtests.engine_workers import vllm_counters, worker_endpoints
from tests.serve_apps.router.helpers import backends, wait_for

pytestmark = pytest.mark.engine
MODEL = "tiny-chat"
ENGINE = {"name": MODEL, "model": "builtin:tiny-chat", "kv_cache_gb": 1, "num_replicas": 2, "max_ongoing_requests": 256}
COMMON = {"kind": "serve", "engine": MODEL, "routing": "prefix_affinity",
          "timeouts": {"connect": 2, "first_byte": 60, "idle": 30},
          "health": {"interval": 1, "timeout": 5, "unhealthy_after": 3}}
BACKENDS = [
    {"name": "sticky", **COMMON, "affinity": {"block_size": 64, "spill_margin": 1000}},
    {"name": "spilly", **COMMON, "affinity": {"block_size": 64, "spill_margin": 1}},
]


@pytest.fixture(scope="module")
def stack(router_cluster):
    url = router_cluster.deploy({"affinity": {"engines": [ENGINE], "backends": BACKENDS}})["affinity"]

    def both_ready() -> bool:
        status = backends(url)
        return all(status[b["name"]]["healthy"] and len(status[b["name"]]["endpoints"]) == 2 for b in BACKENDS)

    wait_for(both_ready, timeout=900, interval=2, message="two engine replicas published to both backends")
    tokens = worker_endpoints(router_cluster.cluster.env(), "affinity", f"engine-{MODEL}")
    assert len(tokens) == 2
    wait_for(lambda: all(sorted(backends(url)[b["name"]]["endpoints"]) == sorted(tokens) for b in BACKENDS),
             timeout=30, message="both backends know both workers")
    yield url, tokens, router_cluster
    router_cluster.deploy({})  # frees the engines for the next tests


def ask(url: str, backend: str, messages: list[dict[str, str]], max_tokens: int = 8, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = httpx.post(url + "/v1/chat/completions", json=body, headers={"x-backend": backend}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == backend and "x-fallback-from" not in response.headers
    return response


def turn(url: str, backend: str, history: list[dict[str, str]], text: str) -> None:
    history.append({"role": "user", "content": text})
    answer = ask(url, backend, history).json()["choices"][0]["message"]["content"]
    history.append({"role": "assistant", "content": answer})


def system_prompt(name: str) -> dict[str, str]:
    return {"role": "system", "content": f"[{name}] You are a careful assistant for team {name}. " * 8}


def engine_counts(tokens: dict[str, str]) -> dict[str, dict[str, float]]:
    return {url: vllm_counters(url, token) for url, token in tokens.items()}


def test_a_conversation_stays_on_one_replica(stack):
    url, tokens, _ = stack
    before_all = backends(url)["sticky"]["affinity"]
    homes = []
    for name in ("ada", "bob", "cy", "dee", "eve", "fay"):
        before = engine_counts(tokens)
        history = [system_prompt(name)]
        for text in ("hello", "tell me more", "and then?", "thanks"):
            turn(url, "sticky", history, text)
        after = engine_counts(tokens)
        served = {u: after[u]["vllm:request_success"] - before[u]["vllm:request_success"] for u in tokens}
        assert sorted(served.values()) == [0, 4], served  # the engines count: all four turns on one replica
        home = max(served, key=served.get)
        homes.append(home)
        # ... which found the earlier turns in its prefix cache
        assert after[home]["vllm:prefix_cache_hits"] > before[home]["vllm:prefix_cache_hits"]
    outcomes = backends(url)["sticky"]["affinity"]
    assert outcomes["hit"] - before_all["hit"] == 18 and outcomes["spill"] == before_all["spill"] == 0
    assert outcomes["miss"] - before_all["miss"] == 6


def test_burst_of_one_prefix_spills_to_the_other_replica(stack):
    url, tokens, cluster = stack
    before = backends(url)["spilly"]
    engines_before = engine_counts(tokens)
    shared = [system_prompt("burst"), {"role": "user", "content": "write a long story"}]
    errors: list[BaseException] = []

    def one() -> None:
        try:
            ask(url, "spilly", shared, max_tokens=160, ignore_eos=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    after = backends(url)["spilly"]
    assert after["affinity"]["spill"] > before["affinity"]["spill"]
    grown = {u: after["endpoint_load"][u]["requests"] - before["endpoint_load"][u]["requests"] for u in tokens}
    assert all(n > 0 for n in grown.values()) and sum(grown.values()) == 8, grown
    engines_after = engine_counts(tokens)
    assert all(engines_after[u]["vllm:request_success"] > engines_before[u]["vllm:request_success"] for u in tokens)
    # the Prometheus series, as the node's metrics agent exports it
    port = cluster.metrics_port()

    def exported() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        return any(line.startswith("ray_backend_affinity_count_total{") and 'backend="spilly"' in line
                   and 'outcome="spill"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in lines)

    wait_for(exported, timeout=60, interval=2, message="ray_backend_affinity_count_total spill series")


def test_killed_replica_moves_its_prefixes_with_no_client_error(stack):
    url, tokens, _ = stack
    histories = {name: [system_prompt(name)] for name in ("gus", "hal", "ivy", "jo", "kai", "lu", "max", "ned")}
    for history in histories.values():
        for text in ("hi", "go on"):
            turn(url, "sticky", history, text)
    load = backends(url)["sticky"]["endpoint_load"]
    victim = max(load, key=lambda u: load[u]["prefix_blocks"])
    survivor = next(u for u in load if u != victim)
    assert load[victim]["prefix_blocks"] > 0
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{victim.rsplit(':', 1)[1]}"], capture_output=True, text=True, check=True).stdout
    pid = int(re.search(r"pid=(\d+)", out).group(1))
    for process in [pid, *descendants(pid)]:  # the replica actor and its engine processes
        os.kill(process, signal.SIGKILL)
    survivor_before = vllm_counters(survivor, tokens[survivor])["vllm:request_success"]
    for history in histories.values():
        for text in ("and now?", "bye"):
            turn(url, "sticky", history, text)  # asserts 200 from sticky, no fallback
    status = backends(url)["sticky"]
    assert victim not in status["endpoints"] and victim not in status["endpoint_load"]
    assert status["endpoint_load"][survivor]["prefix_blocks"] > load[survivor]["prefix_blocks"]
    assert vllm_counters(survivor, tokens[survivor])["vllm:request_success"] - survivor_before == 16
