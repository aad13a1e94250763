"""``kind: openai`` -- any OpenAI-compatible server (vLLM, SGLang, LM Studio, llama.cpp server).

Pure pass-through: the request body and the response bytes (JSON or SSE) are forwarded untouched.
vLLM continues a final assistant message with ``continue_final_message``, so these backends are
mid-stream resume targets unless ``resume_on_failure: false``.
"""

from __future__ import annotations

from serve_apps.router.backends.base import Backend, BackendRequest, BackendResponse
from serve_apps.router.backends.http import HTTPClient, bearer_headers
from serve_apps.router.config import BackendConfig


class OpenAIBackend(Backend):
    kind = "openai"
    can_resume = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._client = HTTPClient(config)
        self._headers = bearer_headers(lambda: config.api_key.resolve() if config.api_key else None)
        self._health_url = config.url + (config.health.path or "/health")

    async def send(self, request: BackendRequest) -> BackendResponse:
        body = request.body if request.method == "POST" else None
        return await self._client.send(request.method, self.config.url + request.path, self._headers, body)

    async def check_health(self) -> bool:
        return await self._client.get_ok(self._health_url, self._headers)

    async def aclose(self) -> None:
        await self._client.aclose()
