"""SSE relay with invisible mid-stream resume.

Happy path cost: the backend's bytes are cut at event boundaries (``\\n\\n``) and handed on untouched --
no JSON parsing -- so the client never gets half an event, and the router knows exactly which events
the client has. Only when a stream breaks after the first byte are those events parsed, once, to learn
the text already sent; the request is then re-sent to a backend that can continue a final assistant
message (vLLM: ``continue_final_message: true`` + ``add_generation_prompt: false``; Anthropic: a
trailing assistant message is a prefill) and the continuation's events are rewritten to carry the
original ``id``/``created``/``model``, without a second role chunk, and its usage restated as the
client's own request's. The client sees one stream with no duplicated and no lost text. Where no
backend can continue, the stream ends with an OpenAI-style error event and ``[DONE]`` -- never a silent
truncation.

A resume is announced by an SSE comment line (``: resumed ...``), which SSE clients ignore by spec; it
says where the text was cut so operators (and tests) can check the seam.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve_apps.openai_format import SSE_DONE, sse_event
from serve_apps.router.backends.base import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
)

ERROR_PREFIX = b'data: {"error"'
TOKENIZE_PATH = "/tokenize"
# Streams that end with ``data: [DONE]`` (a stream ending without it broke). The Responses and Messages
# APIs end with a typed event instead, and are relayed as they come (no resume: ``resumable``).
DONE_TERMINATED = frozenset({CHAT_PATH, COMPLETIONS_PATH})


def has_stream_options(path: str) -> bool:
    """Whether ``stream_options.include_usage`` exists on this route (chat and completions only)."""
    return path in DONE_TERMINATED


@dataclass(slots=True)
class Sent:
    """What the client has received, summarised when a resume needs it."""

    text: str = ""
    pieces: int = 0  # events that carried text ~ tokens generated
    id: str | None = None
    created: int | None = None
    model: str | None = None
    finished: bool = False
    done: bool = False
    prompt_tokens: int | None = None  # the client's own prompt, counted by the continuing backend if it can


def summarise(blocks: list[bytes], path: str) -> Sent:
    sent = Sent()
    parts: list[str] = []
    for line in b"".join(blocks).split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            sent.done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if sent.id is None:
            sent.id, sent.created, sent.model = event.get("id"), event.get("created"), event.get("model")
        for choice in event.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if path == CHAT_PATH else choice.get("text")
            if piece:
                parts.append(piece)
                sent.pieces += 1
            if choice.get("finish_reason"):
                sent.finished = True
    sent.text = "".join(parts)
    return sent


def resumable(payload: dict[str, Any], path: str) -> bool:
    """Can this request be continued from text? (one choice, plain-text prompt, no echo/tools)."""
    if payload.get("n", 1) != 1 or payload.get("tools") or payload.get("echo"):
        return False
    if path == CHAT_PATH:
        messages = payload.get("messages")
        return isinstance(messages, list) and bool(messages)
    return path == COMPLETIONS_PATH and isinstance(payload.get("prompt"), str)


def resume_payload(payload: dict[str, Any], path: str, sent: Sent) -> dict[str, Any] | None:
    """The request that continues ``payload`` after ``sent.text``; None if the token budget is spent."""
    new = dict(payload)
    new.pop("backend", None)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(new.get(key), int):
            remaining = new[key] - sent.pieces
            if remaining <= 0:
                return None
            new[key] = remaining
    if path == CHAT_PATH:
        messages = list(payload["messages"])
        last = messages[-1] if messages else {}
        if payload.get("continue_final_message") and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": last["content"] + sent.text}
        else:
            messages.append({"role": "assistant", "content": sent.text})
        new.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
    else:
        new["prompt"] = payload["prompt"] + sent.text
    return new


async def event_blocks(first: bytes, response: BackendResponse, path: str = CHAT_PATH) -> AsyncIterator[bytes]:
    """Complete SSE event blocks from a backend stream; raises ``BackendUnavailable`` if the stream
    breaks, carries an error event, or (on routes that end with it) ends without ``[DONE]``."""
    buffer = first
    last = b""
    stream = response.stream.__aiter__()
    while True:
        cut = buffer.rfind(b"\n\n")
        if cut >= 0:
            block, buffer = buffer[: cut + 2], buffer[cut + 2 :]
            if ERROR_PREFIX in block:
                head, _, _ = block.partition(ERROR_PREFIX)
                if head:
                    yield head
                raise BackendUnavailable("protocol", "error event in stream")
            last = block
            yield block
        try:
            piece = await stream.__anext__()
        except StopAsyncIteration:
            break
        buffer += piece
    if path not in DONE_TERMINATED:
        if buffer.strip():
            yield buffer  # a last event without its blank line: the client gets it as the backend sent it
    elif not last.endswith(SSE_DONE):
        raise BackendUnavailable("disconnect", "stream ended without [DONE]")


def rewrite_continuation(block: bytes, sent: Sent, state: dict[str, bool]) -> bytes:
    """Make a continuation's events look like the original stream's (id, created, model; no second
    role chunk)."""
    out: list[bytes] = []
    for line in block.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            out.append(SSE_DONE)
            continue
        event = json.loads(data)
        if sent.id is not None:
            event["id"], event["created"], event["model"] = sent.id, sent.created, sent.model
        usage = event.get("usage")
        if isinstance(usage, dict):
            _restate_usage(usage, sent)
        choices = event.get("choices") or []
        if not state.get("role_skipped") and choices:
            delta = choices[0].get("delta")
            if delta is not None and delta.get("role") and not delta.get("content") and not choices[0].get("finish_reason"):
                state["role_skipped"] = True
                continue
        out.append(sse_event(event))
    return b"".join(out)




def _restate_usage(usage: dict[str, Any], sent: Sent) -> None:
    """A continuation counts the text already delivered as prompt; the client asked for its own
    request's numbers: its prompt, and every completion token it received (one per text event, the
    same count the continuation's ``max_tokens`` budget is cut by). The prompt is exact when the
    continuing backend could count it (``tokenize_request``); otherwise the delivered tokens are taken
    off the continuation's prompt, which is exact only if the text re-tokenizes the same way."""
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        usage["prompt_tokens"] = sent.prompt_tokens if sent.prompt_tokens is not None else max(0, prompt - sent.pieces)
        usage["completion_tokens"] = completion + sent.pieces
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]


def wants_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def tokenize_request(payload: dict[str, Any], path: str, model: str | None) -> BackendRequest:
    """vLLM's ``/tokenize`` for the client's original prompt (chat: rendered with its template)."""
    body: dict[str, Any] = {"model": model if model is not None else payload.get("model")}
    if path == CHAT_PATH:
        body.update(messages=payload["messages"], add_generation_prompt=payload.get("add_generation_prompt", True),
                    continue_final_message=payload.get("continue_final_message", False))
    else:
        body["prompt"] = payload["prompt"]
    return BackendRequest("POST", TOKENIZE_PATH, json.dumps(body).encode(), body, False)


def token_count(data: bytes) -> int | None:
    try:
        count = json.loads(data).get("count")
    except (ValueError, AttributeError):
        return None
    return count if isinstance(count, int) else None
