"""What the bot persists under ``store_path`` so a restart or a leader change neither replays old
commands nor loses context: the sync token, the IDs of answered commands, thread turns, and the login
session of a password login (mode 0600). The E2EE keys live next to them in nio's own store.

Files are small JSON documents replaced atomically (write + rename): a crash leaves the old or the
new version, never half of one. Changes are kept in memory and written together by ``save`` (the sync
loop saves once per sync, in a thread, together with the token that moves past the commands it
recorded), so answering a command never waits for the disk. A crash loses at most the marks of the
last moments; those commands stay pending and are re-run, and their re-sent replies are deduplicated
by transaction ID.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

ANSWERED_KEEP = 5000
THREADS_KEEP = 500


def _write_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class BotStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()
        # private: the session token and the E2EE keys live here
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.crypto_dir = self.root / "crypto"
        self.crypto_dir.mkdir(mode=0o700, exist_ok=True)
        self._state_path = self.root / "state.json"
        self._session_path = self.root / "session.json"
        state = _read(self._state_path)
        self.sync_token: str | None = state.get("sync_token")
        self._answered: OrderedDict[str, None] = OrderedDict((e, None) for e in state.get("answered", []))
        self._threads: OrderedDict[str, list[list[str]]] = OrderedDict(state.get("threads", {}))
        self._pending: dict[str, dict[str, str]] = dict(state.get("pending", {}))
        self._write_lock = threading.Lock()
        self._taken = self._written = 0

    # ---------------------------------------------------------------- sync position and answers

    def answered(self, event_id: str) -> bool:
        return event_id in self._answered

    def add_pending(self, event_id: str, record: dict[str, str]) -> None:
        """A command taken but not yet answered (re-run after a crash or a leader change)."""
        self._pending[event_id] = record

    def pending(self) -> dict[str, dict[str, str]]:
        return dict(self._pending)

    def mark_answered(self, event_id: str) -> None:
        self._pending.pop(event_id, None)
        self._answered[event_id] = None
        while len(self._answered) > ANSWERED_KEEP:
            self._answered.popitem(last=False)

    # ---------------------------------------------------------------- thread turns

    def turns(self, thread_id: str) -> list[tuple[str, str]]:
        return [(prompt, answer) for prompt, answer in self._threads.get(thread_id, [])]

    def add_turn(self, thread_id: str, prompt: str, answer: str, keep_chars: int) -> None:
        turns = self._threads.pop(thread_id, [])
        turns.append([prompt, answer])
        while len(turns) > 1 and sum(len(p) + len(a) for p, a in turns) > keep_chars:
            turns.pop(0)
        self._threads[thread_id] = turns
        while len(self._threads) > THREADS_KEEP:
            self._threads.popitem(last=False)

    # ---------------------------------------------------------------- writing

    def save(self) -> None:
        self._write(*self._snapshot())

    async def save_in_thread(self) -> None:
        """``save`` off the event loop; what it writes is taken now, on the loop."""
        await asyncio.to_thread(self._write, *self._snapshot())

    def _snapshot(self) -> tuple[int, dict[str, Any]]:
        self._taken += 1
        return self._taken, {"sync_token": self.sync_token, "answered": list(self._answered),
                             "threads": {thread: list(turns) for thread, turns in self._threads.items()},
                             "pending": dict(self._pending)}

    def _write(self, seq: int, data: dict[str, Any]) -> None:
        with self._write_lock:  # a slow older write never replaces a newer one
            if seq > self._written:
                _write_atomic(self._state_path, data)
                self._written = seq

    # ---------------------------------------------------------------- login session

    def session(self, user_id: str) -> dict[str, str] | None:
        session = _read(self._session_path)
        if session.get("user_id") == user_id and session.get("access_token") and session.get("device_id"):
            return session
        return None

    def save_session(self, user_id: str, device_id: str, access_token: str) -> None:
        _write_atomic(self._session_path, {"user_id": user_id, "device_id": device_id, "access_token": access_token},
                      mode=0o600)
