"""Token accounting and a token limit against the session's real vLLM engine (``serve_stack``): the
router (in process, ``openai`` kind over HTTP to the engine app) counts exactly the usage vLLM reports,
for a non-streamed answer, a stream with ``include_usage`` and a stream without it (whose client sees
no usage chunk), and a key's tokens-per-minute limit refuses the request after the window's usage
crossed it, counted in a real ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from serve_apps.asgi import call_asgi
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.backends import create_backend
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router
from tests.conftest import MODEL
from tests.serve_apps.router.helpers import chat_body
from tests.serve_apps.router.redis_server import REDIS_SERVER, RedisServer

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed: run scripts/setup-test-services.sh")]
SECRET = "sk-engine-team-0123"
MAX_TOKENS = 12


def request(**extra) -> dict:
    return chat_body("Count the tokens", MAX_TOKENS, temperature=0, ignore_eos=True, **extra)


def test_counters_match_vllms_usage_and_a_token_limit_holds(serve_stack, monkeypatch):
    direct = httpx.post(serve_stack.base_url + "/v1/chat/completions", json=request(), timeout=120).json()["usage"]
    assert direct["completion_tokens"] == MAX_TOKENS
    own = [direct["prompt_tokens"], direct["completion_tokens"]]
    monkeypatch.setenv("ENGINE_TEAM_KEY", SECRET)
    server = RedisServer().start()
    config = RouterConfig.model_validate({
        "backends": [{"name": "vllm", "kind": "openai", "url": serve_stack.base_url, "models": [MODEL],
                      "timeouts": {"first_byte": 60}, "health": {"interval": 1, "timeout": 5}}],
        # three answers fit under the limit, the fourth request is refused
        "auth": {"keys": [{"name": "team", "key": {"env": "ENGINE_TEAM_KEY"}, "tokens_per_minute": 3 * sum(own)}],
                 "redis": {"url": server.url, "prefix": f"t{uuid.uuid4().hex[:8]}"}}})

    async def post(app: RouterASGI, payload: dict) -> tuple[int, dict[str, str], bytes]:
        response = await call_asgi(app, "POST", "/v1/chat/completions",
                                   [("authorization", f"Bearer {SECRET}"), ("content-type", "application/json")],
                                   json.dumps(payload).encode())
        data = await response.read()
        await app.router.limiter.drain()
        return response.status, dict(response.headers), data

    async def run() -> None:
        router = Router(config, [create_backend(b, None) for b in config.backends])
        router.start()
        app = RouterASGI(router)
        try:
            status, _, plain = await post(app, request())
            assert status == 200 and json.loads(plain)["usage"]["prompt_tokens"] == own[0]
            status, _, with_usage = await post(app, request(stream=True, stream_options={"include_usage": True}))
            shown = [json.loads(line[6:])["usage"] for line in with_usage.split(b"\n")
                     if line.startswith(b"data: {") and json.loads(line[6:]).get("usage")]
            assert status == 200 and [[u["prompt_tokens"], u["completion_tokens"]] for u in shown] == [own]
            status, headers, without = await post(app, request(stream=True))
            assert status == 200 and b'"usage":{' not in without and without.endswith(b"data: [DONE]\n\n")
            assert headers["x-ratelimit-remaining-tokens"] == str(sum(own))  # two answers counted so far
            assert router.metrics.tokens_used == {("team", MODEL, "vllm"): [3 * own[0], 3 * own[1]]}
            status, headers, refused = await post(app, request())
            assert status == 429 and json.loads(refused)["error"]["code"] == "rate_limit_exceeded"
            assert headers["x-ratelimit-remaining-tokens"] == "0" and int(headers["retry-after"]) >= 1
        finally:
            await router.aclose()

    try:
        asyncio.run(run())
    finally:
        server.kill()
