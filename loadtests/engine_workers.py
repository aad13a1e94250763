"""The engine workers behind a router's ``serve`` backends: their own ports and tokens, and the vLLM
counters on their ``/metrics``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from launchers.local import LocalCluster


def worker_endpoints(env: dict[str, str], app: str, deployment: str, attempts: int = 20) -> dict[str, str]:
    """``{url: token}`` of the engine workers' own ports, asked through the deployment handle (as the
    router does; Serve spreads the calls over replicas) from a separate driver process, so this process
    never joins the cluster. ``env`` is the cluster's (``LocalCluster.env()``)."""
    # inside an event loop: with RAY_SERVE_THROUGHPUT_OPTIMIZED (the cluster's env) handles need one
    code = ("import asyncio, json, ray; from ray import serve; ray.init(address='auto', logging_level='ERROR')\n"
            "async def main():\n"
            f"    h = serve.get_deployment_handle({deployment!r}, app_name={app!r})\n"
            f"    answers = await asyncio.gather(*(h.endpoint.remote() for _ in range({attempts})))\n"
            "    print(json.dumps({a['url']: a['token'] for a in answers if a}))\n"
            "asyncio.run(main())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"no replica of {app}/{deployment} answered: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_token(cluster: LocalCluster, app: str, deployment: str, url: str, attempts: int = 20) -> str:
    """The token the engine worker at ``url`` requires (see ``worker_endpoints``)."""
    token = worker_endpoints(cluster.env(), app, deployment, attempts).get(url)
    if token is None:
        raise RuntimeError(f"no replica of {app}/{deployment} answered for {url}")
    return token


def vllm_counters(url: str, token: str, names: tuple[str, ...] = (
        "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:request_success")) -> dict[str, float]:
    """Counters of the vLLM engine behind an engine worker's port (its ``/metrics``), summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url + "/metrics", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals
