"""What the bot does with one parsed command. One asyncio task per command (the sync loop never
waits for inference), and nothing raised here escapes: errors become one short message in the room,
the details go to the log under a request ID."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from serve_apps.matrix.commands import Command, help_text
from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.inference import Inference, InferenceError
from serve_apps.matrix.replies import DONE_KEY, USAGE_KEY, ReplyStream, SendFn, thread_relation, txn_id
from serve_apps.matrix.store import BotStore

logger = logging.getLogger("ray.serve")
CHARS_PER_TOKEN = 4  # the bot has no tokenizer; context budgets are estimated


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a command came from."""

    room_id: str
    event_id: str
    sender: str
    thread_root: str
    delivered_ms: float | None = None  # from the homeserver accepting the command to this bot seeing it


class CommandHandler:
    def __init__(self, config: MatrixConfig, inference: Inference, store: BotStore, send: SendFn,
                 busy: Any = None) -> None:
        self.config = config
        self.inference = inference
        self.store = store
        self.send = send
        self.busy = busy  # async (room_id, command event_id, on: bool) -> None: receipt and typing, best effort
        self._default_model: str | None = config.model
        self._notices: set[asyncio.Task[None]] = set()

    async def handle(self, command: Command, origin: Origin) -> None:
        request_id = uuid.uuid4().hex[:8]
        try:
            if command.name == "infer":
                await self._infer(command, origin, request_id)
            elif command.name == "backends":
                await self.say(origin, self._backends_text(await self.inference.backends()))
            elif command.name == "models":
                models = await self.inference.models(self.config.key_for(origin.room_id, origin.sender))
                await self.say(origin, "models: " + (", ".join(m["id"] for m in models) or "none"))
            else:
                await self.say(origin, help_text(self.config.command_prefix, self.config.max_tokens_limit))
        except InferenceError as exc:
            logger.warning("matrix bot [%s] %s from %s: router said %s: %s", request_id, command.name,
                           origin.sender, exc.status, exc.message)
            text = (f"Sorry: {exc.message}" if exc.status < 500
                    else f"Sorry, no backend could answer right now (request {request_id}).")
            await self.say(origin, text, role="error")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("matrix bot [%s] %s from %s failed", request_id, command.name, origin.sender)
            await self.say(origin, f"Sorry, something went wrong (request {request_id}).", role="error")
        finally:
            self.store.mark_answered(origin.event_id)

    async def say(self, origin: Origin, text: str, role: str = "part-0") -> None:
        content = {"msgtype": "m.notice", "body": text, DONE_KEY: True,
                   "m.relates_to": thread_relation(origin.thread_root, origin.event_id)}
        await self.send(origin.room_id, "m.room.message", content, txn_id(origin.event_id, role))

    async def _infer(self, command: Command, origin: Origin, request_id: str) -> None:
        key = self.config.key_for(origin.room_id, origin.sender)
        model = command.model or self._default_model or await self._first_model(key)
        body: dict[str, Any] = {**self.config.request_defaults, "model": model, "messages": self._messages(origin.thread_root, command.prompt),
                                "max_tokens": command.max_tokens or self.config.max_tokens,
                                "stream_options": {"include_usage": True}}
        logger.info("matrix bot [%s] !infer from %s in %s (model %s, backend %s, key %s)", request_id, origin.sender,
                    origin.room_id, model, command.backend or "any", key)
        streaming = self.config.streaming
        stream = ReplyStream(self.send, origin.room_id, origin.event_id, origin.thread_root, streaming.edit_interval,
                             streaming.max_edits, streaming.max_message_chars, streaming.first_post_after)
        # The read receipt and typing are shown only for answers that take longer than the
        # one-message window (a quick answer is its own receipt), and never awaited: each is one more
        # request for the homeserver, and a notice must not delay the answer.
        busy = Busy(self._notice, origin.room_id, origin.event_id)
        timer = asyncio.get_running_loop().call_later(streaming.first_post_after, busy.start)
        marks = {"start": time.perf_counter()}
        try:
            generation = await self.inference.chat(body, command.backend, key)
            marks["head"] = time.perf_counter()
            text = ""
            async for delta in generation.deltas():
                marks.setdefault("first_token", time.perf_counter())
                text += delta
                await stream.update(_tagged(generation.backend, text))
            marks["last_token"] = time.perf_counter()
            extra = {USAGE_KEY: generation.usage} if generation.usage else {}
            await stream.finish(_tagged(generation.backend, text or "(empty answer)"), **extra)
            marks["sent"] = time.perf_counter()
        finally:
            timer.cancel()
            busy.stop()
        self.store.add_turn(origin.thread_root, command.prompt, text, self.config.context_tokens * CHARS_PER_TOKEN)
        steps = f"delivered {origin.delivered_ms:.0f} " if origin.delivered_ms is not None else ""
        steps += " ".join(f"{name} {1000 * (at - marks['start']):.0f}" for name, at in marks.items() if name != "start")
        logger.info("matrix bot [%s] answered by %s (%d chars, finish %s, %d sends; ms: %s)", request_id,
                    generation.backend, len(text), generation.finish_reason, stream.sends, steps)

    def _messages(self, thread_root: str, prompt: str) -> list[dict[str, str]]:
        """The thread's earlier turns, newest kept first, within the context budget."""
        budget = self.config.context_tokens * CHARS_PER_TOKEN
        history: list[dict[str, str]] = []
        for earlier, answer in reversed(self.store.turns(thread_root)):
            cost = len(earlier) + len(answer)
            if cost > budget:
                break
            budget -= cost
            history[:0] = [{"role": "user", "content": earlier}, {"role": "assistant", "content": answer}]
        system = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        return system + history + [{"role": "user", "content": prompt}]

    async def _first_model(self, key: str | None) -> str | None:
        models = await self.inference.models(key)
        self._default_model = models[0]["id"] if models else None
        return self._default_model

    def _notice(self, room_id: str, event_id: str, on: bool) -> None:
        if self.busy is not None:
            task = asyncio.ensure_future(self._send_notice(room_id, event_id, on))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)

    async def _send_notice(self, room_id: str, event_id: str, on: bool) -> None:
        try:
            await self.busy(room_id, event_id, on)
        except Exception:  # receipts and typing are decoration; never fail an answer for them
            logger.debug("matrix bot: receipt/typing notice failed", exc_info=True)

    @staticmethod
    def _backends_text(backends: list[dict[str, Any]]) -> str:
        lines = []
        for backend in backends:
            state = "up" if backend.get("healthy") else "down"
            breaker = backend.get("breaker")
            lines.append(f"{backend.get('name')}: {state}" + (f" (breaker {breaker})" if breaker and breaker != "closed" else ""))
        return "\n".join(lines) or "no backends"


@dataclass(slots=True)
class Busy:
    """The notices of one slow answer: receipt and typing when ``start`` runs, typing off at ``stop``
    only if it was on."""

    notify: Any  # (room_id, event_id, on) -> None, fire and forget
    room_id: str
    event_id: str
    on: bool = False

    def start(self) -> None:
        self.on = True
        self.notify(self.room_id, self.event_id, True)

    def stop(self) -> None:
        if self.on:
            self.on = False
            self.notify(self.room_id, self.event_id, False)


def _tagged(backend: str, text: str) -> str:
    return f"[{backend}] {text}"
