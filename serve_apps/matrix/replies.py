"""Posting answers: a reply in the asking message's thread, posted at the first tokens and edited
(``m.replace``) as tokens arrive, at most once per interval; long answers are split over messages.
A short answer that is complete within ``first_post_after`` goes out as one message: one homeserver
round trip instead of a post and an edit.

Every event the bot sends has a transaction ID derived from the command's event ID and the event's
role, so a retried send (homeserver restart, a new leader re-running a command) is deduplicated by the
homeserver instead of becoming a second reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("ray.serve")
# Set on the final version of an answer's last message, so clients (and tests) know it is complete.
DONE_KEY = "io.github.ray_serve_cai.done"
USAGE_KEY = "io.github.ray_serve_cai.usage"  # token usage of the answer, on its final version
# room_id, event type, content, transaction id -> event id (None: gave up)
SendFn = Callable[[str, str, dict[str, Any], str], Awaitable[str | None]]


def txn_id(command_event_id: str, role: str) -> str:
    return "rsc-" + hashlib.sha256(f"{command_event_id}/{role}".encode()).hexdigest()[:32]


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` chars, at a line break or space where possible."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", limit // 2, limit)
        if cut < 0:
            cut = text.rfind(" ", limit // 2, limit)
        cut = limit if cut < 0 else cut + 1
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


def thread_relation(thread_root: str, reply_to: str) -> dict[str, Any]:
    return {"rel_type": "m.thread", "event_id": thread_root, "is_falling_back": True,
            "m.in_reply_to": {"event_id": reply_to}}


@dataclass
class _Part:
    event_id: str
    sent: str
    done: bool
    edits: int = 0


@dataclass
class ReplyStream:
    """One answer to one command. ``update(text)`` as text grows, ``finish(text)`` once at the end."""

    send: SendFn
    room_id: str
    command_event_id: str
    thread_root: str
    edit_interval: float
    max_edits: int
    max_chars: int
    first_post_after: float = 0.0
    clock: Callable[[], float] = time.monotonic
    parts: list[_Part] = field(default_factory=list)
    final_fields: dict[str, Any] = field(default_factory=dict)  # added to the final version's content
    _last_edit: float = float("-inf")
    _started: float = field(init=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    @property
    def posted(self) -> bool:
        return bool(self.parts)
    sends: int = 0  # events sent for this answer (posts and edits)

    async def update(self, text: str) -> None:
        """Post once ``first_post_after`` has passed since the stream began (an answer finished by then
        goes out as one message, with no edit); after that, at most one round of changes per
        ``edit_interval``."""
        if not text.strip():
            return
        if not self.parts and self.clock() - self._started < self.first_post_after:
            return
        if self.parts and self.clock() - self._last_edit < self.edit_interval:
            return
        await self._sync(split_text(text, self.max_chars), final=False)

    async def finish(self, text: str, **final_fields: Any) -> list[str]:
        """Final edit(s); returns the event IDs of the reply's messages."""
        self.final_fields = final_fields
        await self._sync(split_text(text, self.max_chars), final=True)
        return [part.event_id for part in self.parts]

    async def _sync(self, pieces: list[str], final: bool) -> None:
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            complete = final or not last  # a piece followed by another will not change
            marked = final and last  # only the answer's very last version says it is done
            if index >= len(self.parts):
                content = {"msgtype": "m.text", "body": piece,
                           "m.relates_to": thread_relation(self.thread_root, self.command_event_id)}
                if marked:
                    content.update({DONE_KEY: True, **self.final_fields})
                self.sends += 1
                event_id = await self.send(self.room_id, "m.room.message", content,
                                           txn_id(self.command_event_id, f"part-{index}"))
                if event_id is None:
                    raise ConnectionError("could not post the reply")
                self.parts.append(_Part(event_id, piece, complete))
                self._last_edit = self.clock()
                continue
            part = self.parts[index]
            if part.sent == piece and (part.done or not complete) and not marked:
                continue
            if not complete and part.edits >= self.max_edits:
                continue
            await self._edit(part, piece, index, complete, marked)

    async def _edit(self, part: _Part, text: str, index: int, complete: bool, marked: bool) -> None:
        part.edits += 1
        self.sends += 1
        new_content: dict[str, Any] = {"msgtype": "m.text", "body": text}
        if marked:
            new_content.update({DONE_KEY: True, **self.final_fields})
        content = {"msgtype": "m.text", "body": "* " + text, "m.new_content": new_content,
                   "m.relates_to": {"rel_type": "m.replace", "event_id": part.event_id}}
        if await self.send(self.room_id, "m.room.message", content,
                           txn_id(self.command_event_id, f"part-{index}-edit-{part.edits}")) is not None:
            part.sent, part.done = text, complete
        self._last_edit = self.clock()


async def retrying(attempt: Callable[[], Awaitable[Any]], deadline: float, what: str,
                   backoff: float = 0.5, cap: float = 10.0) -> Any:
    """Run ``attempt`` until it returns a result that is not None or ``deadline`` (monotonic) passes."""
    while True:
        result = await attempt()
        if result is not None:
            return result
        if time.monotonic() + backoff > deadline:
            logger.warning("matrix bot: giving up on %s", what)
            return None
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, cap)
