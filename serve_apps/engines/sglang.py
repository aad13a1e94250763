"""SGLang engine: same protocol, ``sglang`` imported lazily (optional extra, GPU only in practice).

SGLang's CUDA kernels do not run on CPU-only machines; ``start()`` fails there with a clear error.
"""

from __future__ import annotations

import json
from typing import Any

from serve_apps.config import EngineConfig
from serve_apps.engines.base import ASGIApp, EngineResponse


def build_sglang_kwargs(config: EngineConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``sglang.Engine`` (ServerArgs), built without importing sglang."""
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "served_model_name": config.name,
        "tp_size": config.tensor_parallel_size,
        "device": "cuda" if config.device == "gpu" else "cpu",
    }
    if config.dtype != "auto":
        kwargs["dtype"] = config.dtype
    if config.max_model_len:
        kwargs["context_length"] = config.max_model_len
    if config.enforce_eager:
        kwargs["disable_cuda_graph"] = True
    kwargs.update(config.engine_kwargs)
    return kwargs


def _import_sglang() -> Any:
    try:
        import sglang
    except ImportError as exc:
        raise RuntimeError(
            "the sglang engine needs the optional extra: pip install 'ray-serve-cai[sglang]' "
            f"(import failed: {exc})"
        ) from exc
    return sglang


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class SGLangEngine:
    """An ``Engine`` backed by ``sglang.Engine`` (offline engine API, OpenAI responses built here)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._engine: Any = None

    async def start(self) -> None:
        sglang = _import_sglang()
        self._engine = sglang.Engine(**build_sglang_kwargs(self.config, self.config.resolve_model_path()))

    def asgi_app(self) -> ASGIApp | None:
        return None

    def _tokenizer(self) -> Any:
        return self._engine.tokenizer_manager.tokenizer

    async def _generate(self, prompt: str, request: dict[str, Any], kind: str) -> EngineResponse:
        sampling = {
            "max_new_tokens": request.get("max_tokens") or 16,
            "temperature": request.get("temperature", 1.0),
            "top_p": request.get("top_p", 1.0),
            "stop": request.get("stop"),
        }
        out = await self._engine.async_generate(prompt=prompt, sampling_params=sampling)
        text = out["text"]
        meta = out.get("meta_info", {})
        usage = {"prompt_tokens": meta.get("prompt_tokens", 0), "completion_tokens": meta.get("completion_tokens", 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = (meta.get("finish_reason") or {}).get("type", "stop")
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            body = {"object": "chat.completion", "model": self.config.name, "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            body = {"object": "text_completion", "model": self.config.name, "choices": [choice], "usage": usage}
        if request.get("stream"):
            delta = {"content": text} if kind == "chat" else None
            chunk_choice = {"index": 0, "delta": delta, "finish_reason": finish} if delta else choice
            payload = _sse([{**body, "object": f"{body['object']}.chunk", "choices": [chunk_choice]}])
            return EngineResponse.complete(200, "text/event-stream", payload)
        return EngineResponse.complete(200, "application/json", json.dumps(body).encode())

    async def chat(self, request: dict[str, Any]) -> EngineResponse:
        prompt = self._tokenizer().apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        return await self._generate(prompt, request, "chat")

    async def completion(self, request: dict[str, Any]) -> EngineResponse:
        return await self._generate(str(request["prompt"]), request, "completion")

    async def models(self) -> dict[str, Any]:
        names = self.config.served_names
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "sglang"} for n in names]}

    async def health(self) -> bool:
        return self._engine is not None

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
