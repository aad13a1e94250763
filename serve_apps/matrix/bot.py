"""The sync loop: read events from the homeserver, join allowed invites, hand commands to tasks.

Rules that keep it alive and exact:
- the loop never awaits inference: each command runs in its own task (``CommandHandler``);
- nothing raised while handling one event stops the loop;
- the sync token is stored after each batch; the very first start skips the history it finds;
- commands are recorded as pending before the token moves past them, so a crash or a leader change
  re-runs them (the homeserver deduplicates re-sent replies by transaction ID) instead of losing them;
- homeserver errors back off exponentially up to ``sync.backoff_max``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from nio import AsyncClient, InviteMemberEvent, MegolmEvent, RoomMessageText, SyncResponse

from serve_apps.matrix import client as matrix_client
from serve_apps.matrix.commands import Command, CommandError, parse
from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.handlers import CommandHandler, Origin
from serve_apps.matrix.inference import Inference
from serve_apps.matrix.policy import RateLimiter
from serve_apps.matrix.store import BotStore

logger = logging.getLogger("ray.serve")
TIMELINE_LIMIT = 200  # events per room and sync: commands sent while the bot was away must fit


def sync_filter(bot_user: str) -> dict[str, Any]:
    """What the bot reads: room messages from others (its own answers would only wake its sync),
    full member state, no presence, typing or receipts."""
    return {"room": {"timeline": {"limit": TIMELINE_LIMIT, "not_senders": [bot_user]},
                     "state": {"lazy_load_members": False}, "ephemeral": {"types": []}},
            "presence": {"types": []}}


@dataclass
class SyncState:
    phase: str = "starting"  # starting, syncing, backoff, stopped
    last_ok: float | None = None  # monotonic time of the last successful sync
    failures: int = 0
    last_error: str | None = None
    commands: int = 0

    def as_dict(self) -> dict[str, Any]:
        age = None if self.last_ok is None else round(time.monotonic() - self.last_ok, 1)
        return {"phase": self.phase, "seconds_since_sync": age, "failures": self.failures,
                "last_error": self.last_error, "commands": self.commands}


class MatrixBot:
    def __init__(self, config: MatrixConfig, inference: Inference, store: BotStore | None = None) -> None:
        self.config = config
        self.inference = inference
        self.store = store or BotStore(config.store_path)
        self.state = SyncState()
        self.limiter = RateLimiter(config.rate_limit.requests, config.rate_limit.per_seconds)
        self.client: AsyncClient | None = None
        self.handler: CommandHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()  # command event IDs being answered by this process
        self._started = False
        self._filter = sync_filter(config.user_id)
        if not config.allow.users:
            logger.warning("matrix bot: allow.users is empty, so nobody can use the bot until it is configured")

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        backoff = self.config.sync.backoff_initial
        try:
            while True:
                try:
                    await self._sync_once()
                    backoff = self.config.sync.backoff_initial
                except asyncio.CancelledError:
                    raise
                except matrix_client.LoginFailed as exc:
                    self._failed(str(exc))
                    await self._reset_client()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.config.sync.backoff_max)
                except Exception as exc:  # homeserver down, bad gateway, ...: back off and reconnect
                    self._failed(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.config.sync.backoff_max)
        finally:
            self.state.phase = "stopped"
            await self.aclose()

    def _failed(self, error: str) -> None:
        self.state.phase = "backoff"
        self.state.failures += 1
        self.state.last_error = error
        logger.warning("matrix bot: sync failed (%s); retrying", error)

    async def _sync_once(self) -> None:
        client = await self._ensure_client()
        first = not self._started
        response = await client.sync(timeout=self.config.sync.timeout_ms, since=self.store.sync_token,
                                     full_state=first, sync_filter=self._filter)
        if not isinstance(response, SyncResponse):
            status = getattr(response, "status_code", None)
            if status == "M_UNKNOWN_TOKEN":
                await self._reset_client(forget=True)
            raise ConnectionError(f"sync refused: {status} {getattr(response, 'message', '')}".strip())
        history = self.store.sync_token is None  # the very first start: what is there is history
        self._started = True
        self._handle(response, skip_timeline=history)
        # one write per sync: the commands just recorded as pending, the answers and turns finished
        # since the last one, and the token that moves past them
        self.store.sync_token = response.next_batch
        await self.store.save_in_thread()
        self.state.phase, self.state.last_ok, self.state.last_error = "syncing", time.monotonic(), None
        if first:
            self._resume_pending()
        await self._maintain_keys(client)

    async def _ensure_client(self) -> AsyncClient:
        if self.client is None:
            client = matrix_client.new_client(self.config, self.store)
            try:
                await matrix_client.login(client, self.config, self.store)
            except BaseException:
                await client.close()
                raise
            self.client = client
            self._started = False
            sender = matrix_client.Sender(client)
            self.handler = CommandHandler(self.config, self.inference, self.store, sender, self._busy)
            logger.info("matrix bot: logged in as %s (device %s)", client.user_id, client.device_id)
        return self.client

    async def _reset_client(self, forget: bool = False) -> None:
        if forget and self.config.password is not None:
            matrix_client.forget_session(self.store)
        if self.client is not None:
            await self.client.close()
        self.client = None

    async def _maintain_keys(self, client: AsyncClient) -> None:
        if not self.config.encryption or client.olm is None:
            return
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        await client.send_to_device_messages()

    async def _busy(self, room_id: str, event_id: str, on: bool) -> None:
        """What people see while a long answer is generated: a read receipt for the command, typing."""
        if self.client is None:
            return
        if on:
            await asyncio.gather(self.client.room_read_markers(room_id, event_id, event_id),
                                 self.client.room_typing(room_id, True, timeout=30000))
        else:
            await self.client.room_typing(room_id, False)

    # ---------------------------------------------------------------- events

    def _handle(self, response: SyncResponse, skip_timeline: bool) -> None:
        for room_id, info in response.rooms.invite.items():
            self._guard(self._invited, room_id, info.invite_state)
        if skip_timeline:
            return
        for room_id, info in response.rooms.join.items():
            if info.timeline.limited:
                logger.warning("matrix bot: more than %d events in %s since the last sync; older ones are skipped",
                               TIMELINE_LIMIT, room_id)
            for event in info.timeline.events:
                self._guard(self._event, room_id, event)

    def _guard(self, handler: Any, *args: Any) -> None:
        try:
            handler(*args)
        except Exception:  # one bad event must not stop the loop
            logger.exception("matrix bot: failed to handle an event (%s)", args[0])

    def _invited(self, room_id: str, invite_state: list[Any]) -> None:
        inviter = next((e.sender for e in invite_state if isinstance(e, InviteMemberEvent)
                        and e.state_key == self.config.user_id and e.membership == "invite"), None)
        allowed = inviter is not None and self.config.allow.user_allowed(inviter) and self.config.allow.room_allowed(room_id)
        logger.info("matrix bot: invited to %s by %s: %s", room_id, inviter, "joining" if allowed else "declining")
        if self.client is None:
            return
        self._spawn(self.client.join(room_id) if allowed else self.client.room_leave(room_id))

    def _event(self, room_id: str, event: Any) -> None:
        if isinstance(event, MegolmEvent):
            logger.warning("matrix bot: cannot decrypt event %s in %s (no session key)", event.event_id, room_id)
            return
        if not isinstance(event, RoomMessageText) or event.sender == self.config.user_id:
            return
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace":
            return  # an edited command is not a new command
        if not (self.config.allow.user_allowed(event.sender) and self.config.allow.room_allowed(room_id)):
            return
        root = relates["event_id"] if relates.get("rel_type") == "m.thread" else event.event_id
        delivered = time.time() * 1000 - event.server_timestamp
        self._command(Origin(room_id, event.event_id, event.sender, root, delivered), event.body)

    def _command(self, origin: Origin, body: str, resumed: bool = False) -> None:
        assert self.handler is not None
        if self.store.answered(origin.event_id) or origin.event_id in self._inflight:
            return
        try:
            command = parse(body, self.config.command_prefix, self.config.max_tokens_limit)
        except CommandError as exc:
            self._spawn(self.handler.say(origin, f"{exc}", role="error"))
            return
        if command is None:
            return
        if not resumed:
            wait = self.limiter.check(origin.sender)
            if wait:
                if self.limiter.should_warn(origin.sender):
                    self._spawn(self.handler.say(origin, f"Slow down a little: try again in {wait:.0f} s.", role="rate"))
                return
            self.store.add_pending(origin.event_id, {"room_id": origin.room_id, "sender": origin.sender,
                                                     "thread_root": origin.thread_root, "body": body})
        self.state.commands += 1
        self._inflight.add(origin.event_id)
        self._spawn(self._answer(command, origin))

    async def _answer(self, command: Command, origin: Origin) -> None:
        assert self.handler is not None
        try:
            await self.handler.handle(command, origin)
        finally:
            self._inflight.discard(origin.event_id)

    def _resume_pending(self) -> None:
        """Commands taken but not answered before a crash or a leader change."""
        for event_id, record in self.store.pending().items():
            logger.info("matrix bot: resuming unanswered command %s", event_id)
            origin = Origin(record["room_id"], event_id, record["sender"], record["thread_root"])
            self._guard(self._resume, origin, record["body"])

    def _resume(self, origin: Origin, body: str) -> None:
        self._command(origin, body, resumed=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("matrix bot: background task failed: %r", task.exception())

    # ---------------------------------------------------------------- shutdown

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reset_client()
        self.store.save()
