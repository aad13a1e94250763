"""A custom engine living outside the package, as a user's own would.

It loads no model: ``start()`` waits until ``engine_kwargs.ready_file`` exists (if given), then
answers by echoing the last user message. Used to test custom registration, the generic OpenAI app
and the 503-while-starting behaviour without paying for a second vLLM engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from serve_apps.config import EngineConfig
from serve_apps.engines.base import EngineResponse


class EchoEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.ready_file = config.engine_kwargs.get("ready_file")
        self.started = False

    async def start(self) -> None:
        while self.ready_file and not Path(self.ready_file).exists():
            await asyncio.sleep(0.2)
        self.started = True

    def asgi_app(self):
        return None

    def _reply(self, text: str, kind: str, request: dict[str, Any]) -> EngineResponse:
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(text.split()),
                 "total_tokens": 2 * len(text.split())}
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            body = {"id": "echo-1", "object": "chat.completion", "created": int(time.time()),
                    "model": self.config.name, "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            body = {"id": "echo-1", "object": "text_completion", "created": int(time.time()),
                    "model": self.config.name, "choices": [choice], "usage": usage}
        return EngineResponse.complete(200, "application/json", json.dumps(body).encode())

    async def chat(self, request: dict[str, Any]) -> EngineResponse:
        return self._reply(str(request["messages"][-1]["content"]), "chat", request)

    async def completion(self, request: dict[str, Any]) -> EngineResponse:
        return self._reply(str(request["prompt"]), "completion", request)

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "echo"}
                                           for n in self.config.served_names]}

    async def health(self) -> bool:
        return self.started

    async def shutdown(self) -> None:
        self.started = False
