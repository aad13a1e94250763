"""A human Matrix user for the Matrix bot tests and benchmark, speaking the client-server API with plain
httpx, and the reading of the bot's answers out of a room's history (originals plus their ``m.replace`` edits)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from launchers.polling import PollTimeout, poll_until
from serve_apps.matrix.replies import DONE_KEY, USAGE_KEY

API = "/_matrix/client/v3"


@dataclass
class Answer:
    """The bot's reply to one command: its messages' final texts and every edit's arrival time (ms)."""

    event_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    edit_ts: dict[str, list[int]] = field(default_factory=dict)
    done: list[bool] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    thread_root: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)


@dataclass
class Person:
    base_url: str
    user_id: str
    access_token: str

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = httpx.request(method, self.base_url + API + path, timeout=30,
                                 headers={"authorization": f"Bearer {self.access_token}"}, **kwargs)
        response.raise_for_status()
        return response.json()

    def create_room(self, invite: list[str], encrypted: bool = False) -> str:
        body: dict[str, Any] = {"preset": "private_chat", "invite": invite}
        if encrypted:
            body["initial_state"] = [{"type": "m.room.encryption", "state_key": "",
                                      "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        return self._call("POST", "/createRoom", json=body)["room_id"]

    def joined(self, room_id: str) -> list[str]:
        return list(self._call("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"])

    def wait_joined(self, room_id: str, user_id: str, timeout: float = 60) -> None:
        poll_until(lambda: user_id in self.joined(room_id), timeout, 0.2)

    def membership(self, room_id: str, user_id: str) -> str | None:
        state = self._call("GET", f"/rooms/{quote(room_id)}/state")
        for event in state:
            if event["type"] == "m.room.member" and event["state_key"] == user_id:
                return event["content"]["membership"]
        return None

    def invite(self, room_id: str, user_id: str) -> None:
        self._call("POST", f"/rooms/{quote(room_id)}/invite", json={"user_id": user_id})

    def join(self, room_id: str) -> None:
        self._call("POST", f"/join/{quote(room_id)}", json={})

    def send(self, room_id: str, body: str, thread_root: str | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if thread_root is not None:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread_root}
        return self.send_content(room_id, content)

    def send_content(self, room_id: str, content: dict[str, Any]) -> str:
        """An ``m.room.message`` with exactly ``content``; its event ID."""
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
        return self._call("PUT", path, json=content)["event_id"]

    def sync(self, since: str | None, timeout_ms: int) -> dict[str, Any]:
        """One /sync long-poll (``since`` None: the initial sync)."""
        params = {"timeout": timeout_ms, **({"since": since} if since else {})}
        response = httpx.get(self.base_url + API + "/sync", params=params, timeout=timeout_ms / 1000 + 30,
                             headers={"authorization": f"Bearer {self.access_token}"})
        response.raise_for_status()
        return response.json()

    def history(self, room_id: str) -> list[dict[str, Any]]:
        """Every event of the room, oldest first."""
        events: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"dir": "b", "limit": 500}
            if token:
                params["from"] = token
            page = self._call("GET", f"/rooms/{quote(room_id)}/messages", params=params)
            events.extend(page.get("chunk", []))
            token = page.get("end")
            if not page.get("chunk") or not token:
                return list(reversed(events))

    def answers(self, room_id: str, bot: str) -> dict[str, Answer]:
        """The bot's answers in ``room_id`` keyed by the command's event ID."""
        answers: dict[str, Answer] = {}
        owner: dict[str, tuple[Answer, int]] = {}
        for event in self.history(room_id):
            if event["sender"] != bot or event["type"] != "m.room.message":
                continue
            content = event["content"]
            relates = content.get("m.relates_to") or {}
            if relates.get("rel_type") == "m.replace":
                answer, index = owner[relates["event_id"]]
                answer.texts[index] = content["m.new_content"]["body"]
                answer.done[index] = bool(content["m.new_content"].get(DONE_KEY))
                answer.usage = content["m.new_content"].get(USAGE_KEY) or answer.usage
                answer.edit_ts.setdefault(relates["event_id"], []).append(event["origin_server_ts"])
                continue
            command = (relates.get("m.in_reply_to") or {}).get("event_id")
            if command is None:
                continue
            answer = answers.setdefault(command, Answer(thread_root=relates.get("event_id")))
            owner[event["event_id"]] = (answer, len(answer.texts))
            answer.event_ids.append(event["event_id"])
            answer.texts.append(content["body"])
            answer.done.append(bool(content.get(DONE_KEY)))
            answer.usage = content.get(USAGE_KEY) or answer.usage
            answer.edit_ts[event["event_id"]] = [event["origin_server_ts"]]
        return answers

    def wait_answers(self, room_id: str, bot: str, commands: list[str], timeout: float = 120,
                     settle: float = 0.0) -> dict[str, Answer]:
        """Wait until every command has a final answer; ``settle``: then look again after that long
        (to see anything arriving late, e.g. a duplicate)."""
        def complete() -> dict[str, Answer] | None:
            answers = self.answers(room_id, bot)
            return answers if all(c in answers and _final(answers[c]) for c in commands) else None

        try:
            poll_until(complete, timeout, 0.3)
        except PollTimeout:
            answers = self.answers(room_id, bot)
            missing = [c for c in commands if c not in answers or not _final(answers[c])]
            raise TimeoutError(f"{len(missing)} of {len(commands)} commands without a final answer: {missing[:3]}") from None
        time.sleep(settle)
        return self.answers(room_id, bot)


def _final(answer: Answer) -> bool:
    """The bot marks only the last message's final version: everything before it is already there."""
    return bool(answer.done) and answer.done[-1]


def tag(text: str) -> str:
    """The backend in ``[backend] text``."""
    assert text.startswith("["), text
    return text[1:text.index("]")]
