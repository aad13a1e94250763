"""RayBackend, the notebook facade, driven from a fresh Python process against the session's cluster.

A fresh process, as a notebook would be: Ray reads its environment at import time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent('''
    import asyncio, json, sys, time, urllib.request
    from ray_serve_cai import RayBackend

    address, port = sys.argv[1], int(sys.argv[2])

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    async def main():
        backend = RayBackend(http_port=port)
        await backend.initialize_ray(address=address)
        url = await backend.start_model({"name": "echo-nb", "num_cpus": 0},
                                        engine="tests.serve_apps.echo_engine:EchoEngine")
        deadline = time.monotonic() + 60
        while get(url + "/health")[0] != 200:
            assert time.monotonic() < deadline, "never healthy"
            await asyncio.sleep(0.5)
        request = urllib.request.Request(url + "/v1/completions", method="POST",
            data=json.dumps({"model": "echo-nb", "prompt": "hello"}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            text = json.loads(r.read())["choices"][0]["text"]
        running = await backend.status()
        await backend.stop_model("echo-nb")
        after = await backend.status()
        print(json.dumps({"url": url, "text": text, "running": running.get("echo-nb"),
                          "after": sorted(after)}))

    asyncio.run(main())
''')


@pytest.mark.engine
def test_start_status_stop_model(serve_stack, tmp_path):
    port = serve_stack.base_url.rsplit(":", 1)[1]
    env = serve_stack.cluster.env()
    result = subprocess.run([sys.executable, "-c", SCENARIO, serve_stack.cluster.address, port], env=env,
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["url"] == f"http://127.0.0.1:{port}/echo-nb"
    assert report["text"] == "hello"
    assert report["running"]["status"] == "RUNNING"
    assert report["running"]["route_prefix"] == "/echo-nb"
    assert "echo-nb" not in report["after"] and "llm" in report["after"]


def test_seed_spelling_vllm_config_is_validated():
    from ray_serve_cai import RayBackend
    from serve_apps.apps import ConfigError

    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        asyncio.run(RayBackend().start_model(vllm_config={"model": "m", "tensor_parallel_size": 0}))
