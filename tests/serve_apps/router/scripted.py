"""An in-process ``Backend`` with the real protocol and scripted behaviour (the role of httpx's
``MockTransport``): statuses, hangs, 429 + Retry-After, streams that die after N events.

Answers are OpenAI-shaped and deterministic: the answer is ``TOKENS``; a request that continues a
final assistant message (``continue_final_message``) gets the tokens after that prefix, so a resumed
stream can be checked exactly. Every response records whether it was closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve_apps.openai_format import SSE_DONE, error_body, sse_event
from serve_apps.router.backends.base import Backend, BackendRequest, BackendResponse, BackendUnavailable, ByteStream
from serve_apps.router.config import BackendConfig

TOKENS = [f" w{i}" for i in range(8)]
ANSWER = "".join(TOKENS)
PROMPT_TOKENS = 11  # what a request's own prompt counts; a continuation adds the prefix's tokens


@dataclass
class Step:
    """What one ``send`` does. ``die_after``: a stream breaks after that many events (``None``: whole)."""

    status: int = 200
    retry_after: str | None = None
    hang: bool = False  # waits ``first_byte`` seconds, then times out as an HTTP backend would
    refuse: str | None = None  # raise BackendUnavailable(refuse) before any answer
    die_after: int | None = None


class ScriptedStream(ByteStream):
    def __init__(self, events: list[bytes], die_after: int | None) -> None:
        self.events, self.die_after, self.closed = events, die_after, False

    async def _iterate(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self.events):
            if self.die_after is not None and index >= self.die_after:
                raise BackendUnavailable("disconnect", "scripted death")
            await asyncio.sleep(0)
            yield event

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class ScriptedBackend(Backend):
    config: BackendConfig
    steps: list[Step] = field(default_factory=list)
    resumable: bool = True
    tokenize: bool = True  # answers vLLM's /tokenize with the prompt's count
    retokenized_extra: int = 0  # a continuation counts the delivered text as this many more tokens
    reports: tuple[str, ...] = ()  # the models its refresh reports where its config names none (openai's /v1/models)
    requests: list[BackendRequest] = field(default_factory=list)
    responses: list[BackendResponse] = field(default_factory=list)

    def __post_init__(self) -> None:
        Backend.__init__(self, self.config)
        self.can_resume = self.resumable

    async def send(self, request: BackendRequest) -> BackendResponse:
        if request.path == "/tokenize":
            status, answer = (200, {"count": PROMPT_TOKENS}) if self.tokenize else (404, {"detail": "Not Found"})
            return BackendResponse(status, [("content-type", "application/json")], ScriptedStream([json.dumps(answer).encode()], None))
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else Step()
        if step.refuse:
            raise BackendUnavailable(step.refuse, "scripted")  # type: ignore[arg-type]
        if step.hang:
            await asyncio.sleep(self.config.timeouts.first_byte)
            raise BackendUnavailable("timeout", "no response head within first_byte timeout")
        if step.status != 200:
            headers = [("content-type", "application/json")]
            if step.retry_after is not None:
                headers.append(("retry-after", step.retry_after))
            response = BackendResponse(step.status, headers, ScriptedStream([error_body(step.status, "scripted")], None))
        elif request.stream:
            response = BackendResponse(200, [("content-type", "text/event-stream")],
                                       ScriptedStream(_events(request.payload or {}, self.retokenized_extra), step.die_after))
        else:
            body = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(TOKENS),
                              "total_tokens": PROMPT_TOKENS + len(TOKENS)}}
            response = BackendResponse(200, [("content-type", "application/json")], ScriptedStream([json.dumps(body).encode()], None))
        self.responses.append(response)
        return response

    async def check_health(self) -> bool:
        return True

    async def refresh_models(self) -> None:
        if not self.config.models:
            self.discovered_models = self.reports


def _events(payload: dict[str, Any], retokenized_extra: int = 0) -> list[bytes]:
    prefix = ""
    messages = payload.get("messages") or []
    if payload.get("continue_final_message") and messages and messages[-1].get("role") == "assistant":
        prefix = messages[-1]["content"]
    text, done = "", 0
    while done < len(TOKENS) and len(text) < len(prefix):
        text += TOKENS[done]
        done += 1
    assert text == prefix, f"continuation of an unknown prefix {prefix!r}"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_event({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    usage: list[bytes] = []
    if (payload.get("stream_options") or {}).get("include_usage"):  # as vLLM counts: the prefix is prompt
        usage = [sse_event({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS + done + (retokenized_extra if done else 0),
                                                     "completion_tokens": len(TOKENS) - done,
                                                     "total_tokens": PROMPT_TOKENS + len(TOKENS)}})]
    return ([chunk({"role": "assistant", "content": ""})] + [chunk({"content": t}) for t in TOKENS[done:]]
            + [chunk({}, "stop"), *usage, SSE_DONE])
