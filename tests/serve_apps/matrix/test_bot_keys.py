"""The Matrix bot acts for a configured auth key (issue #25, "the hole"): ``matrix.key`` for the bot,
``matrix.keys`` per room or user. Its requests get that key's allow-lists, limits and token account.

A real Synapse and people speaking the client-server API; the real ``MatrixBot`` and the real
``Router`` run in process (one event loop in a thread), the router's backend an in-process scripted
one (``tests/serve_apps/router/scripted.py``). Between them only Ray's deployment handle is left
out: ``RouterHandle`` answers the deployment's methods from the same router calls the deployment makes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from launchers.polling import poll_until
from loadtests.matrix_people import Person
from loadtests.matrix_synapse import Synapse
from serve_apps.matrix.bot import MatrixBot
from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.inference import RouterClient
from serve_apps.router.app import reply_frames
from serve_apps.router.config import RouterAppArgs
from serve_apps.router.router import Router
from serve_apps.validation import format_validation_error
from tests.serve_apps.matrix.conftest import People, person
from tests.serve_apps.router.scripted import PROMPT_TOKENS, TOKENS, Step
from tests.serve_apps.router.test_router_scripted import make_router

SECRETS = {"KEY_CHAT": "sk-chat-0123456789", "KEY_NARROW": "sk-narrow-0123456789"}
AUTH = {"keys": [{"name": "chat", "key": {"env": "KEY_CHAT"}, "models": ["m"]},
                 {"name": "narrow", "key": {"env": "KEY_NARROW"}, "models": ["another-model"]}]}
MATRIX = {"homeserver": "http://127.0.0.1:8008", "user_id": "@bot:example.org", "access_token": {"env": "T"},
          "store_path": "/tmp/unused"}


def router_args(**matrix: Any) -> RouterAppArgs:
    return RouterAppArgs.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}],
                                         "auth": AUTH, "matrix": {**MATRIX, **matrix}})


@pytest.mark.parametrize("matrix, where", [
    ({}, "matrix.key: the router has auth keys, so the bot must act for one of them (chat, narrow)"),
    ({"key": "nobody"}, "matrix.key: no auth key is named 'nobody' (known: chat, narrow)"),
    ({"key": "chat", "keys": [{"room": "!r:x.org", "key": "gone"}]}, "matrix.keys.0.key: no auth key is named 'gone'"),
    ({"key": "chat", "keys": [{"key": "narrow"}]}, "matrix.keys.0: Value error, give room, user or both"),
    ({"key": "chat", "keys": [{"user": "alice", "key": "narrow"}]}, "matrix.keys.0.user"),
])
def test_the_bots_keys_are_checked_at_load(matrix, where):
    with pytest.raises(ValidationError) as info:
        router_args(**matrix)
    assert where in format_validation_error(info.value)


def test_a_rule_for_a_room_or_user_picks_the_key_else_the_bots_own():
    args = router_args(key="chat", keys=[{"room": "!quiet:x.org", "user": "@bob:x.org", "key": "narrow"},
                                         {"user": "*:guests.org", "key": "narrow"}])
    matrix = args.matrix
    assert matrix is not None
    assert matrix.key_for("!quiet:x.org", "@bob:x.org") == "narrow"
    assert matrix.key_for("!quiet:x.org", "@alice:x.org") == "chat"  # both of a rule must match
    assert matrix.key_for("!any:x.org", "@eve:guests.org") == "narrow"
    assert matrix.key_for("!any:x.org", "@bob:x.org") == "chat"
    with pytest.raises(ValidationError, match="matrix.key: no auth key is named 'chat' .known: none: auth is off"):
        RouterAppArgs.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}],
                                      "matrix": {**MATRIX, "key": "chat"}})


class Method:
    """One deployment method as a handle calls it: ``.remote(*args)``."""

    def __init__(self, function: Any) -> None:
        self.remote = function


class RouterHandle:
    """``MultiBackendRouter``'s methods the bot calls, over the same router calls they make."""

    def __init__(self, router: Router) -> None:
        self.generate_stream = Method(lambda path, raw, backend, key: self._frames(router, path, raw, backend, key))
        self.backends_status = Method(lambda: self._value(router.backends()))
        self.model_list = Method(lambda key: self._value(router.models_as(key)))

    def options(self, stream: bool) -> RouterHandle:
        return self

    @staticmethod
    async def _frames(router: Router, path: str, raw: bytes, backend: str | None, key: str | None) -> AsyncIterator[Any]:
        async for frame in reply_frames(await router.generate_as(path, raw, backend, key)):
            yield frame

    @staticmethod
    async def _value(value: dict[str, Any]) -> dict[str, Any]:
        return value


@dataclass
class RunningBot:
    router: Router
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event


@pytest.fixture(scope="module")
def keybot(synapse: Synapse) -> Person:
    return person(synapse, "keybot", "keybot-password-42")


@pytest.fixture
def running(synapse: Synapse, people: People, keybot: Person, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBot]:
    """The bot acting for ``chat``, and for ``narrow`` on Bob's commands; the router in the same loop."""
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)
    token = tmp_path / "token"
    token.write_text(keybot.access_token)
    config = MatrixConfig.model_validate({
        "homeserver": synapse.url, "user_id": keybot.user_id, "access_token": {"file": str(token)},
        "store_path": str(tmp_path / "store"), "allow": {"users": [people.alice.user_id, people.bob.user_id]},
        "model": "m", "key": "chat", "keys": [{"user": people.bob.user_id, "key": "narrow"}],
        "streaming": {"first_post_after": 0}, "sync": {"timeout_ms": 1000, "backoff_initial": 0.2}})
    started: list[RunningBot] = []

    async def main() -> None:
        router, _ = make_router([Step()] * 8, auth=AUTH)
        router.start()
        started.append(RunningBot(router, asyncio.get_running_loop(), asyncio.Event()))
        bot = asyncio.create_task(MatrixBot(config, RouterClient(RouterHandle(router))).run())
        try:
            await started[0].stop.wait()
        finally:
            bot.cancel()
            await asyncio.gather(bot, return_exceptions=True)
            await router.aclose()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    poll_until(lambda: bool(started), 30, 0.05)
    try:
        yield started[0]
    finally:
        started[0].loop.call_soon_threadsafe(started[0].stop.set)
        thread.join(30)


def test_the_bot_acts_for_its_key_and_a_mapped_user_for_theirs(running, people, keybot):
    room = people.alice.create_room([keybot.user_id, people.bob.user_id])
    people.alice.wait_joined(room, keybot.user_id)
    people.bob.join(room)
    allowed = people.alice.send(room, "!infer hello there")
    refused = people.bob.send(room, "!infer hello there")
    answers = people.alice.wait_answers(room, keybot.user_id, [allowed, refused], timeout=60)
    assert answers[allowed].text == "[b0] " + "".join(TOKENS)
    # Bob's commands act for `narrow`, which may not use model m: the router's 404, in the room
    assert answers[refused].text.startswith("Sorry: The model `m` does not exist or you do not have access to it")
    assert "'narrow'" in answers[refused].text
    # Matrix traffic is accounted to the key it acted for
    assert running.router.metrics.tokens_used == {("chat", "m", "b0"): [PROMPT_TOKENS, len(TOKENS)]}
