"""Token accounting from the backends' own ``usage``: what each key used, per model and backend.

Non-streamed answers carry ``usage`` at the end of the JSON body: it is found from the end and only
that object is decoded. Streams carry it in a last chunk only when the request asked
(``stream_options.include_usage``); when the client did not, the router asks upstream anyway
(``ask_for_usage``) and removes that chunk from what the client receives (``UsageTap``), so the client
sees exactly the stream it asked for. The relay stays a pass-through: a block of events is decoded only
if it holds a ``"usage": {`` object, which happens once per stream.
"""

from __future__ import annotations

import json
import re
from typing import Any

from serve_apps.openai_format import sse_event

USAGE_KEY = b'"usage"'
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_DECODER = json.JSONDecoder()
Usage = tuple[int, int]  # (prompt tokens, completion tokens)


def insert_member(data: bytes, member: bytes) -> bytes:
    """Insert an encoded member (``b'"name":value'``) first into a JSON object, without parsing it."""
    rest = data.lstrip()[1:]
    separator = b"" if rest.lstrip()[:1] == b"}" else b","
    return b"{" + member + separator + rest


_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


def ask_for_usage(raw: bytes, payload: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The request with ``stream_options.include_usage`` on: spliced into the client's bytes when it
    has no ``stream_options`` (the common case), re-serialized otherwise."""
    options = payload.get("stream_options")
    new = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
    if "stream_options" not in payload:
        return insert_member(raw, _INCLUDE_USAGE), new
    return json.dumps(new).encode(), new


def counts(usage: Any) -> Usage | None:
    """(prompt, completion) tokens of a ``usage`` object: chat and completions name them
    ``prompt_tokens``/``completion_tokens``; the Responses and Messages APIs ``input_tokens``/
    ``output_tokens``; embeddings have only ``prompt_tokens``."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0 if "total_tokens" in usage else None))
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        return prompt, completion
    return None


def event_usage(event: dict[str, Any]) -> Usage | None:
    """Usage carried by a stream event: on the chunk itself (chat, completions, Messages' last
    ``message_delta``), or on the finished response (Responses' ``response.completed``)."""
    found = counts(event.get("usage"))
    if found is None:
        inner = event.get("response")
        found = counts(inner.get("usage")) if isinstance(inner, dict) else None
    return found


def usage_from_body(data: bytes) -> Usage | None:
    """``usage`` of a non-streamed answer; engines put it last, so it is searched from the end (a
    ``"usage"`` inside generated text is escaped, ``\\"usage\\"``, and never matches)."""
    start = data.rfind(USAGE_KEY)
    if start < 0:
        return None
    match = _USAGE_OBJECT.match(data, start)
    if match is None:
        return None
    try:
        usage, _ = _DECODER.raw_decode(data[match.end() - 1:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return counts(usage)


class UsageTap:
    """Watches one stream's event blocks for usage; with ``strip``, removes it from them (the client
    did not ask for it). Call ``scan`` only on blocks containing ``b'"usage"'`` (a cheap check the relay
    does inline)."""

    __slots__ = ("strip", "usage")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: Usage | None = None

    def scan(self, block: bytes) -> bytes:
        if _USAGE_OBJECT.search(block) is None:  # e.g. ``"usage": null`` on every chunk
            return block
        out: list[bytes] = []
        changed = False
        for event in block.split(b"\n\n")[:-1]:  # a block is whole events, each ending in a blank line
            if not event.startswith(b"data:") or _USAGE_OBJECT.search(event) is None:
                out.append(event + b"\n\n")
                continue
            try:
                payload = json.loads(event[5:])
            except ValueError:
                out.append(event + b"\n\n")
                continue
            found = event_usage(payload) if isinstance(payload, dict) else None
            if found is None:
                out.append(event + b"\n\n")
                continue
            self.usage = found  # the last one counts (continuous usage stats are cumulative)
            if not self.strip:
                out.append(event + b"\n\n")
                continue
            changed = True
            if payload.get("choices"):  # usage on a content chunk: keep the chunk, drop the field
                del payload["usage"]
                out.append(sse_event(payload))
        return b"".join(out) if changed else block
