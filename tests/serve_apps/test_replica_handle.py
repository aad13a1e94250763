"""The replica's DeploymentHandle contract (``forward``), which the router's ``serve`` backend uses.

Run from a fresh driver process, as another deployment would see it: a head dict, then body bytes
identical in format to the HTTP path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.engine

SCENARIO = textwrap.dedent('''
    import asyncio, json, sys
    import ray
    from ray import serve

    async def main():
        # Inside an event loop, as in a deployment (Serve's throughput mode requires it).
        handle = serve.get_deployment_handle("engine-tiny-chat", app_name="llm").options(stream=True)

        async def call(path, body, method="POST"):
            payload = json.dumps(body).encode() if body is not None else b""
            items = [item async for item in handle.forward.remote(
                method, path, [("content-type", "application/json")], payload)]
            head, chunks = items[0], items[1:]
            assert all(isinstance(c, bytes) for c in chunks)
            return head, b"".join(chunks).decode()

        out = {}
        out["chat"] = await call("/v1/chat/completions", {"model": "tiny-chat", "max_tokens": 4,
                                 "temperature": 0, "messages": [{"role": "user", "content": "hi"}]})
        out["stream"] = await call("/v1/completions", {"model": "tiny-chat", "prompt": "x", "max_tokens": 5,
                                                        "stream": True})
        out["missing"] = await call("/v1/chat/completions", {"model": "nope", "messages": []})
        out["health"] = await call("/health", None, method="GET")
        print(json.dumps(out))

    ray.init(address=sys.argv[1], logging_level="ERROR")
    asyncio.run(main())
''')


def test_forward_yields_head_then_body(serve_stack):
    result = subprocess.run([sys.executable, "-c", SCENARIO, serve_stack.cluster.address],
                            env=serve_stack.cluster.env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    head, body = out["chat"]
    assert head["status"] == 200
    assert dict((k.lower(), v) for k, v in head["headers"])["content-type"] == "application/json"
    assert json.loads(body)["usage"]["completion_tokens"] == 4

    head, body = out["stream"]
    assert head["status"] == 200
    events = [line for line in body.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)

    head, body = out["missing"]
    assert head["status"] == 404 and json.loads(body)["error"]["param"] == "model"

    head, body = out["health"]
    assert head["status"] == 200
