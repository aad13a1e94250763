"""A small real HTTP server speaking the OpenAI, Ollama (native) or Anthropic Messages protocol, with
scriptable faults. Run as a process: ``python fake_backend.py --protocol anthropic --port N``.

Why a fake at all: Anthropic and Ollama cannot run here, and timing faults (hang, 429, death after
exactly N tokens) are not scriptable in vLLM. The fake enforces each protocol's contract (required
headers and fields, event order, error shapes) so the router's translation is checked against it.

Generation is deterministic: token ``i`` of the answer to prompt ``p`` is `` w<(crc32(p) + 7*i) % 997>``.
A trailing assistant message that is a prefix of that answer is continued from where it stops (vLLM's
``continue_final_message`` / Anthropic's prefill), so a resumed stream can be checked exactly.

Faults (``POST /_control`` with JSON): ``{"mode": "ok"|"hang"|"status", "status": 500,
"retry_after": 2, "die_after": N, "delay": 0.01, "healthy": false}``; ``GET /_stats`` counts requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import zlib

from aiohttp import web

STATE = {"mode": "ok", "status": 500, "retry_after": None, "die_after": None, "delay": 0.0, "healthy": True}
STATS = {"requests": 0}
MODEL = "tiny-chat"
API_KEY_ENV = "FAKE_ANTHROPIC_KEY"


def token(seed: int, i: int) -> str:
    return f" w{(seed + 7 * i) % 997}"


def plan(prompt: str, prefix: str, max_tokens: int) -> tuple[list[str], str]:
    """Tokens to generate after ``prefix`` (the partial assistant message) and the finish reason."""
    seed = zlib.crc32(prompt.encode())
    start = 0
    if prefix:
        text = ""
        while len(text) < len(prefix):
            text += token(seed, start)
            start += 1
        if text != prefix:  # not our own output: continue deterministically from the prefix instead
            seed, start = zlib.crc32(prefix.encode()), 0
    return [token(seed, start + i) for i in range(max_tokens)], "length"


def openai_error(status: int, message: str, type_: str = "BadRequestError") -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": status}}, status=status)


async def faults(request: web.Request) -> web.StreamResponse | None:
    STATS["requests"] += 1
    if STATE["mode"] == "hang":
        await asyncio.sleep(3600)
    if STATE["mode"] == "status":
        headers = {"retry-after": str(STATE["retry_after"])} if STATE["retry_after"] is not None else {}
        return web.json_response({"error": {"message": "injected fault", "type": "server_error", "param": None,
                                            "code": STATE["status"]}}, status=STATE["status"], headers=headers)
    return None


async def emit(response: web.StreamResponse, payload: bytes, index: int) -> None:
    if STATE["die_after"] is not None and index >= STATE["die_after"]:
        os.kill(os.getpid(), signal.SIGKILL)  # die like a crashed server: no FIN handshake courtesy
    await response.write(payload)
    if STATE["delay"]:
        await asyncio.sleep(STATE["delay"])


# ------------------------------------------------------------------ OpenAI


def chat_prompt(messages: list[dict], continue_final: bool) -> tuple[str, str]:
    prefix = ""
    if continue_final and messages and messages[-1].get("role") == "assistant":
        prefix = messages[-1]["content"]
        messages = messages[:-1]
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return (users[-1] if users else ""), prefix


async def openai_generate(request: web.Request) -> web.StreamResponse:
    fault = await faults(request)
    if fault is not None:
        return fault
    try:
        body = await request.json()
    except ValueError:
        return openai_error(400, "invalid JSON")
    chat = request.path.endswith("/chat/completions")
    if body.get("model", MODEL) != MODEL:
        return openai_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return openai_error(400, "max_tokens must be at least 1")
    if chat:
        if body.get("continue_final_message") and body.get("add_generation_prompt", True):
            return openai_error(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return openai_error(400, "messages must be a non-empty list")
        prompt, prefix = chat_prompt(body["messages"], bool(body.get("continue_final_message")))
    else:
        prompt, prefix = body.get("prompt", ""), ""
    tokens, finish = plan(prompt, prefix, max_tokens)
    ident, created = f"cmpl-{time.time_ns()}", int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens),
             "total_tokens": len(prompt.split()) + len(tokens)}
    if not body.get("stream"):
        text = "".join(tokens)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if chat else {"index": 0, "text": text, "finish_reason": finish})
        return web.json_response({"id": ident, "object": obj, "created": created, "model": MODEL,
                                  "choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)

    def event(choice: dict) -> bytes:
        return b"data: " + json.dumps({"id": ident, "object": obj + ".chunk" if chat else obj, "created": created,
                                       "model": MODEL, "choices": [choice]}).encode() + b"\n\n"

    if chat:
        await response.write(event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        choice = ({"index": 0, "delta": {"content": tok}, "finish_reason": finish if last else None}
                  if chat else {"index": 0, "text": tok, "finish_reason": finish if last else None})
        await emit(response, event(choice), i)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200 if STATE["healthy"] else 503)


async def openai_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


# ------------------------------------------------------------------ Ollama (native API)


async def ollama_tags(request: web.Request) -> web.Response:
    if not STATE["healthy"]:
        return web.Response(status=503)
    return web.json_response({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest", "size": 1}]})


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    fault = await faults(request)
    if fault is not None:
        return web.json_response({"error": "injected fault"}, status=fault.status, headers=fault.headers)
    body = await request.json()
    if body.get("model") not in (MODEL, f"{MODEL}:latest"):
        return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
    options = body.get("options") or {}
    if "max_tokens" in body or "stop" in body:
        return web.json_response({"error": "use options.num_predict / options.stop"}, status=400)
    messages = body.get("messages") or []
    prompt, prefix = chat_prompt(messages, bool(messages) and messages[-1].get("role") == "assistant")
    tokens, _ = plan(prompt, prefix, int(options.get("num_predict", 16)))
    stops = options.get("stop") or []
    reason = "length"
    for i, tok in enumerate(tokens):
        if tok.strip() in stops:
            tokens, reason = tokens[:i], "stop"
            break
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    final = {"model": body["model"], "created_at": created, "message": {"role": "assistant", "content": ""},
             "done": True, "done_reason": reason, "total_duration": 1000, "prompt_eval_count": len(prompt.split()),
             "eval_count": len(tokens)}
    if body.get("stream", True) is False:
        final["message"]["content"] = "".join(tokens)
        return web.json_response(final)
    response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
    await response.prepare(request)
    for i, tok in enumerate(tokens):
        line = {"model": body["model"], "created_at": created, "message": {"role": "assistant", "content": tok}, "done": False}
        await emit(response, json.dumps(line).encode() + b"\n", i)
    await response.write(json.dumps(final).encode() + b"\n")
    await response.write_eof()
    return response


# ------------------------------------------------------------------ Anthropic Messages API


def anthropic_error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": type_, "message": message}}, status=status)


def anthropic_auth(request: web.Request) -> web.Response | None:
    if request.headers.get("x-api-key") != os.environ.get(API_KEY_ENV):
        return anthropic_error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
    return None


async def anthropic_models(request: web.Request) -> web.Response:
    denied = anthropic_auth(request)
    if denied is not None:
        return denied
    if not STATE["healthy"]:
        return anthropic_error(529, "overloaded_error", "Overloaded")
    return web.json_response({"data": [{"type": "model", "id": MODEL, "display_name": MODEL}], "has_more": False})


def validate_messages(body: dict) -> str | None:
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, (str, list)):
            return f"messages.{i}.content: Input should be a valid string or list"
    if messages[0]["role"] != "user":
        return "messages: first message must use the \"user\" role"
    for key in ("stop", "n", "messages.system"):
        if key in body:
            return f"{key}: Extra inputs are not permitted"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: Input should be a valid string or list"
    return None


def text_of(content: str | list) -> str:
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content if b.get("type") == "text")


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    denied = anthropic_auth(request)
    if denied is not None:
        return denied
    fault = await faults(request)
    if fault is not None:
        kind = "rate_limit_error" if fault.status == 429 else "api_error"
        response = anthropic_error(fault.status, kind, "injected fault")
        response.headers.update({k: v for k, v in fault.headers.items() if k.lower() == "retry-after"})
        return response
    body = await request.json()
    problem = validate_messages(body)
    if problem:
        return anthropic_error(400, "invalid_request_error", problem)
    messages = body["messages"]
    prefix = text_of(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else ""
    users = [text_of(m["content"]) for m in messages if m["role"] == "user"]
    tokens, _ = plan(users[-1], prefix, body["max_tokens"])
    stop_reason, stop_sequence = "max_tokens", None
    for i, tok in enumerate(tokens):
        if tok.strip() in (body.get("stop_sequences") or []):
            tokens, stop_reason, stop_sequence = tokens[:i], "stop_sequence", tok.strip()
            break
    ident = f"msg_{time.time_ns()}"
    usage_in = sum(len(u.split()) for u in users) + len(text_of(body.get("system") or "").split())
    message = {"id": ident, "type": "message", "role": "assistant", "model": body["model"], "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": usage_in, "output_tokens": 1}}
    if not body.get("stream"):
        message.update(content=[{"type": "text", "text": "".join(tokens)}], stop_reason=stop_reason,
                       stop_sequence=stop_sequence, usage={"input_tokens": usage_in, "output_tokens": len(tokens)})
        return web.json_response(message)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)

    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    await response.write(event("message_start", {"type": "message_start", "message": message}))
    await response.write(event("content_block_start", {"type": "content_block_start", "index": 0,
                                                       "content_block": {"type": "text", "text": ""}}))
    await response.write(event("ping", {"type": "ping"}))
    for i, tok in enumerate(tokens):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}}
        await emit(response, event("content_block_delta", delta), i)
    await response.write(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    await response.write(event("message_delta", {"type": "message_delta",
                                                 "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                                 "usage": {"output_tokens": len(tokens)}}))
    await response.write(event("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response


# ------------------------------------------------------------------ control


async def control(request: web.Request) -> web.Response:
    STATE.update(await request.json())
    return web.json_response(STATE)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(STATS)


def build(protocol: str) -> web.Application:
    app = web.Application()
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    if protocol == "openai":
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", openai_models)
        app.router.add_post("/v1/chat/completions", openai_generate)
        app.router.add_post("/v1/completions", openai_generate)
    elif protocol == "ollama":
        app.router.add_get("/api/tags", ollama_tags)
        app.router.add_post("/api/chat", ollama_chat)
    else:
        app.router.add_get("/v1/models", anthropic_models)
        app.router.add_post("/v1/messages", anthropic_messages)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["openai", "ollama", "anthropic"], required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build(args.protocol), host="127.0.0.1", port=args.port, print=None, access_log=None)
