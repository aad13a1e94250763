"""SGLang engine: same protocol, ``sglang`` imported lazily (optional extra, GPU only in practice).

SGLang's CUDA kernels do not run on CPU-only machines; ``start()`` fails there with a clear error.
Responses are built here from ``sglang.Engine.async_generate``: streams are forwarded chunk by chunk
as SGLang yields them, and ``health()`` is a real one-token generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.config import EngineConfig
from serve_apps.engines.base import ASGIApp, EngineResponse
from serve_apps.openai_format import SSE_DONE, error_body, error_event, sse_event

# OpenAI request fields -> sglang SamplingParams fields (same meaning, other names or same names).
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "stop": "stop", "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
             "repetition_penalty": "repetition_penalty", "seed": "sampling_seed", "ignore_eos": "ignore_eos",
             "logit_bias": "logit_bias"}
_COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions API's default; chat has none


def build_sglang_kwargs(config: EngineConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``sglang.Engine`` (ServerArgs), built without importing sglang."""
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "served_model_name": config.name,
        "tp_size": config.tensor_parallel_size,
        "device": "cuda" if config.device == "gpu" else "cpu",
    }
    if config.engine_dtype() != "auto":
        kwargs["dtype"] = config.engine_dtype()
    if config.max_model_len:
        kwargs["context_length"] = config.max_model_len
    if config.enforce_eager:
        kwargs["disable_cuda_graph"] = True
    kwargs.update(config.engine_kwargs)
    return kwargs


def build_sampling_params(request: dict[str, Any], kind: str) -> dict[str, Any]:
    """``SamplingParams`` fields for an OpenAI chat or completion request."""
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    if max_tokens is None and kind == "completion":
        max_tokens = _COMPLETION_DEFAULT_MAX_TOKENS
    params = {"max_new_tokens": max_tokens}
    params |= {ours: request[theirs] for theirs, ours in _SAMPLING.items() if theirs in request}
    return {k: v for k, v in params.items() if v is not None}


def _import_sglang() -> Any:
    try:
        import sglang
    except ImportError as exc:
        raise RuntimeError(
            "the sglang engine needs the optional extra: pip install 'ray-serve-cai[sglang]' "
            f"(import failed: {exc})"
        ) from exc
    return sglang


def _usage(meta: dict[str, Any]) -> dict[str, int]:
    prompt, completion = meta.get("prompt_tokens", 0), meta.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _abort(finish: dict[str, Any] | None) -> tuple[int, str] | None:
    """(status, message) when SGLang ended the request with an abort instead of an answer."""
    if finish and finish.get("type") == "abort":
        return int(finish.get("status_code") or 500), str(finish.get("message") or "generation aborted")
    return None


def _finish_reason(finish: dict[str, Any] | None) -> str | None:
    return None if finish is None else "length" if finish.get("type") == "length" else "stop"


class SGLangEngine:
    """An ``Engine`` backed by ``sglang.Engine`` (offline engine API, OpenAI responses built here)."""

    health_timeout_s = 30.0  # a one-token generation; longer means the scheduler is wedged

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._engine: Any = None
        # SGLang streams the whole text so far unless started with incremental output.
        self._incremental = bool(config.engine_kwargs.get("incremental_streaming_output", False))

    async def start(self) -> None:
        sglang = _import_sglang()
        self._engine = sglang.Engine(**build_sglang_kwargs(self.config, self.config.resolve_model_path()))
        if not await self.health():
            raise RuntimeError("sglang engine started but its first generation failed")

    def asgi_app(self) -> ASGIApp | None:
        return None

    def _tokenizer(self) -> Any:
        return self._engine.tokenizer_manager.tokenizer

    def _body(self, kind: str, rid: str, choice: dict[str, Any] | None, *, stream: bool,
              usage: dict[str, int] | None = None) -> dict[str, Any]:
        """A response or chunk object; a stream's usage chunk has no choice."""
        chat = kind == "chat"
        body = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}", "created": int(time.time()),
                "object": ("chat.completion" if chat else "text_completion") + (".chunk" if stream else ""),
                "model": self.config.name, "choices": [{"index": 0, **choice}] if choice else []}
        if usage is not None:
            body["usage"] = usage
        return body

    async def _generate(self, prompt: str, request: dict[str, Any], kind: str) -> EngineResponse:
        sampling = build_sampling_params(request, kind)
        stream = bool(request.get("stream"))
        try:
            if not stream:
                out = await self._engine.async_generate(prompt=prompt, sampling_params=sampling)
                return self._complete(out, kind)
            chunks = await self._engine.async_generate(prompt=prompt, sampling_params=sampling, stream=True)
            first = await chunks.__anext__()  # SGLang checks the request here: errors become a 400
        except (ValueError, TypeError) as exc:
            return EngineResponse.complete(400, "application/json", error_body(400, str(exc)))
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        body = self._stream(first, chunks, kind, include_usage)
        return EngineResponse(200, [("content-type", "text/event-stream")], body)

    def _complete(self, out: dict[str, Any], kind: str) -> EngineResponse:
        meta = out.get("meta_info", {})
        if aborted := _abort(meta.get("finish_reason")):
            return EngineResponse.complete(aborted[0], "application/json", error_body(*aborted))
        text, finish = out.get("text", ""), _finish_reason(meta.get("finish_reason"))
        choice = {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
        body = self._body(kind, meta.get("id", ""), {**choice, "finish_reason": finish}, stream=False,
                          usage=_usage(meta))
        return EngineResponse.complete(200, "application/json", json.dumps(body).encode())

    async def _stream(self, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], kind: str,
                      include_usage: bool) -> AsyncIterator[bytes]:
        """One SSE event per SGLang chunk, carrying only the new text."""
        meta = first.get("meta_info", {})
        rid, sent, finished = meta.get("id", ""), "", False
        try:
            if kind == "chat":
                opening = {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield sse_event(self._body(kind, rid, opening, stream=True))
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                meta = chunk.get("meta_info", {})
                text = chunk.get("text") or ""
                delta = text if self._incremental else text[len(sent):] if text.startswith(sent) else ""
                sent = sent + delta if self._incremental else max(text, sent, key=len)
                finish = meta.get("finish_reason")
                finished = finish is not None
                if aborted := _abort(finish):
                    yield error_event(aborted[1], aborted[0])  # ends the stream with [DONE]
                    return
                if delta or finished:
                    piece = {"delta": {"content": delta} if delta else {}} if kind == "chat" else {"text": delta}
                    yield sse_event(self._body(kind, rid, {**piece, "finish_reason": _finish_reason(finish)}, stream=True))
                chunk = None if finished else await anext(chunks, None)
            if include_usage and finished:
                yield sse_event(self._body(kind, rid, None, stream=True, usage=_usage(meta)))
            yield SSE_DONE
        finally:
            if not finished:  # the client went away: free SGLang's slot
                self._engine.tokenizer_manager.abort_request(rid)
            await chunks.aclose()

    async def chat(self, request: dict[str, Any]) -> EngineResponse:
        prompt = self._tokenizer().apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        return await self._generate(prompt, request, "chat")

    async def completion(self, request: dict[str, Any]) -> EngineResponse:
        return await self._generate(str(request["prompt"]), request, "completion")

    async def models(self) -> dict[str, Any]:
        names = self.config.served_names
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "sglang"} for n in names]}

    async def health(self) -> bool:
        """True when a one-token generation comes back in time (a live object is not a live scheduler)."""
        if self._engine is None:
            return False
        try:
            async with asyncio.timeout(self.health_timeout_s):
                out = await self._engine.async_generate(prompt="ping", sampling_params={"max_new_tokens": 1})
        except Exception:  # a dead or wedged scheduler raises or never answers
            return False
        return _abort(out.get("meta_info", {}).get("finish_reason")) is None

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
