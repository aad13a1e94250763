"""``kind: openai`` -- any OpenAI-compatible server (vLLM, SGLang, LM Studio, llama.cpp server).

Pure pass-through (chat, completions, Responses, embeddings, Anthropic Messages): the request body and the response bytes (JSON or SSE) are forwarded untouched.
vLLM continues a final assistant message with ``continue_final_message``, so these backends are
mid-stream resume targets unless ``resume_on_failure: false``. Configured without ``models``, the
backend is asked for its ``GET /v1/models`` after each passing health probe, so the router's
``/v1/models`` lists what it serves.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError

from serve_apps.router.backends.base import GENERATION_ROUTES, Backend, BackendRequest, BackendResponse
from serve_apps.router.backends.http import HTTPClient, bearer_headers
from serve_apps.router.config import BackendConfig

logger = logging.getLogger("ray.serve")
MODELS_PATH = "/v1/models"


class ModelCard(BaseModel):
    id: str


class ModelListing(BaseModel):
    """What the router reads of an OpenAI ``GET /v1/models`` answer (other fields are ignored)."""

    data: list[ModelCard]


class OpenAIBackend(Backend):
    kind = "openai"
    can_resume = True
    paths = GENERATION_ROUTES  # pass-through: what the server does not serve, it answers 404 itself

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._client = HTTPClient(config)
        self._headers = bearer_headers(lambda: config.api_key.resolve() if config.api_key else None)
        self._health_url = config.url + (config.health.path or "/health")

    async def send(self, request: BackendRequest) -> BackendResponse:
        body = request.body if request.method == "POST" else None
        return await self._client.send(request.method, self.config.url + request.path, self._headers, body, request.stream)

    async def check_health(self) -> bool:
        return await self._client.get_ok(self._health_url, self._headers)

    async def refresh_models(self) -> None:
        if self.config.models:
            return  # the config says what it serves
        body = await self._client.get(self.config.url + MODELS_PATH, self._headers)
        if body is None:
            return  # keep the last answer: a missed refresh does not mean the models are gone
        try:
            listing = ModelListing.model_validate_json(body)
        except ValidationError as exc:
            logger.debug("backend %s: %s is not a model list: %s", self.name, MODELS_PATH, exc.errors()[:1])
            return
        self.discovered_models = tuple(dict.fromkeys(card.id for card in listing.data))

    async def aclose(self) -> None:
        await self._client.aclose()
