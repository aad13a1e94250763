"""A stand-in for ``sglang.Engine``: SGLang's kernels need CUDA, so its engine cannot run here.

It follows the contract of ``sglang.Engine`` as of sglang 0.5 (``srt/entrypoints/engine.py`` and the
tokenizer manager's output processing), not what our engine would like:

- ``await engine.async_generate(prompt=..., sampling_params=..., stream=False)`` returns one dict;
  with ``stream=True`` it returns an async generator of dicts (the await only builds it; work and
  errors start at the first ``__anext__``).
- Every dict is ``{"text", "output_ids", "meta_info"}``. While streaming, ``text`` and ``output_ids``
  are *cumulative* (the whole output so far) unless the engine was started with
  ``incremental_streaming_output=True``, then they hold only what is new. Chunks may be coalesced:
  one chunk can carry several tokens, so chunk count is not token count.
- ``meta_info``: ``id`` (the request id), ``finish_reason`` (``None`` until the last chunk, then
  ``{"type": "length", "length": n}``, ``{"type": "stop", "matched": <str or token id>}`` or
  ``{"type": "abort", "message", "status_code"}``), ``prompt_tokens``, ``completion_tokens``
  (cumulative), ``cached_tokens``.
- Sampling parameters are ``SamplingParams`` fields: an unknown one is a ``TypeError``, an
  out-of-range one a ``ValueError`` (raised by the await, or by the first ``__anext__`` of a stream).
- ``tokenizer_manager.tokenizer`` (a HF tokenizer: ``apply_chat_template``) and
  ``tokenizer_manager.abort_request(rid)``; ``shutdown()``.

Generation is deterministic: token ``i`` is ``" w<i>"``; an end-of-sequence token (id 2) comes after
``eos_after`` tokens if set. ``pause_after`` holds the stream after that many tokens until
``resume`` is set, so a test can see chunks arrive before the generation ends; ``hang`` never answers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

SAMPLING_FIELDS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema",
    "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
    "no_stop_trim", "custom_params", "stream_interval", "logit_bias", "sampling_seed",
}
EOS_ID = 2


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict], *, tokenize: bool = True,
                            add_generation_prompt: bool = False) -> str:
        assert tokenize is False
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


class FakeTokenizerManager:
    def __init__(self) -> None:
        self.tokenizer = FakeTokenizer()
        self.aborted: list[str] = []

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)


def _check_sampling(params: dict[str, Any]) -> None:
    unknown = set(params) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
    temperature, top_p = params.get("temperature", 1.0), params.get("top_p", 1.0)
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be a non-negative finite number, got {temperature}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if (params.get("max_new_tokens") or 0) < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {params['max_new_tokens']}.")


class FakeSGLangEngine:
    def __init__(self, **server_args: Any) -> None:
        if "model_path" not in server_args:
            raise TypeError("ServerArgs.__init__() missing 1 required argument: 'model_path'")
        self.server_args = server_args
        self.incremental = bool(server_args.get("incremental_streaming_output", False))
        self.tokenizer_manager = FakeTokenizerManager()
        self.eos_after: int | None = None
        self.pause_after: int | None = None
        self.resume = asyncio.Event()
        self.hang = False
        self.generating = 0  # requests in flight
        self.prompts: list[str] = []
        self.is_shutdown = False
        self._rids = itertools.count()

    async def async_generate(self, prompt: str | None = None, sampling_params: dict | None = None,
                             stream: bool = False, **_: Any) -> dict | AsyncIterator[dict]:
        generator = self._generate(prompt or "", dict(sampling_params or {}), stream)
        if stream is True:
            return generator
        return await generator.__anext__()

    async def _generate(self, prompt: str, params: dict[str, Any], stream: bool) -> AsyncIterator[dict]:
        _check_sampling(params)
        if self.hang:
            await asyncio.Event().wait()
        self.prompts.append(prompt)
        rid = f"fake-{next(self._rids)}"
        limit = 128 if params.get("max_new_tokens", 128) is None else params.get("max_new_tokens", 128)
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        prompt_tokens = len(prompt.split())
        text, ids, sent_text, sent_ids = "", [], 0, 0
        self.generating += 1
        try:
            for i in itertools.count():
                finish: dict[str, Any] | None = None
                if i == limit:
                    finish = {"type": "length", "length": limit}
                elif self.eos_after is not None and i == self.eos_after:
                    finish = {"type": "stop", "matched": EOS_ID}
                else:
                    text, ids = text + f" w{i}", ids + [100 + i]
                    hit = next((s for s in stops if s in text), None)
                    if hit is not None:
                        text = text[:text.index(hit)]
                        finish = {"type": "stop", "matched": hit}
                if self.pause_after is not None and i == self.pause_after:
                    await self.resume.wait()
                await asyncio.sleep(0)
                meta = {"id": rid, "finish_reason": finish, "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(ids), "cached_tokens": 0}
                # Coalescing: the tokenizer manager delivers only the latest state when it falls behind.
                if finish is None and (not stream or i % 3 == 1):
                    continue
                if stream and self.incremental:
                    yield {"text": text[sent_text:], "output_ids": ids[sent_ids:], "meta_info": meta}
                    sent_text, sent_ids = len(text), len(ids)
                else:
                    yield {"text": text, "output_ids": list(ids), "meta_info": meta}
                if finish is not None:
                    return
        finally:
            self.generating -= 1

    def shutdown(self) -> None:
        self.is_shutdown = True
