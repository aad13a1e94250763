"""The bot's Matrix connection: a matrix-nio ``AsyncClient`` logged in from the configured secret,
with bounded retries (nio retries 429s and connection errors forever by default) and a send that
retries with the same transaction ID until a deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    RoomSendResponse,
    WhoamiResponse,
)
from nio.exceptions import LocalProtocolError

from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.replies import retrying
from serve_apps.matrix.store import BotStore

logger = logging.getLogger("ray.serve")
# Seconds a reply keeps being retried while the homeserver is unreachable (the homeserver
# deduplicates the retries by transaction ID).
SEND_DEADLINE = 300.0
NETWORK_ERRORS = (OSError, TimeoutError, aiohttp.ClientError)


class LoginFailed(RuntimeError):
    """Credentials missing or refused; the message never contains a secret."""


def new_client(config: MatrixConfig, store: BotStore) -> AsyncClient:
    client_config = AsyncClientConfig(
        max_limit_exceeded=config.sync.max_rate_limited,
        max_timeouts=config.sync.max_timeouts,
        max_timeout_retry_wait_time=config.sync.backoff_max,
        encryption_enabled=config.encryption,
        store_sync_tokens=False,  # the bot persists its own token (see store.py)
        request_timeout=30,
    )
    return AsyncClient(config.homeserver, config.user_id, store_path=str(store.crypto_dir), config=client_config)


async def login(client: AsyncClient, config: MatrixConfig, store: BotStore) -> None:
    """Log ``client`` in: the access token from its secret, else the stored session of an earlier
    password login, else a password login whose session is then stored."""
    if config.access_token is not None:
        token = config.access_token.resolve()
        if not token:
            raise LoginFailed(f"matrix.access_token: no token found in {_where(config.access_token)}")
        device_id = config.device_id
        if device_id is None:
            client.access_token = token
            who = await client.whoami()
            if not isinstance(who, WhoamiResponse) or not who.device_id:
                raise LoginFailed(f"matrix: the homeserver refused the access token ({getattr(who, 'status_code', '?')})")
            device_id = who.device_id
        client.restore_login(config.user_id, device_id, token)
        return
    session = store.session(config.user_id)
    if session is not None:
        client.restore_login(config.user_id, session["device_id"], session["access_token"])
        return
    password = config.password.resolve() if config.password is not None else None
    if not password:
        raise LoginFailed(f"matrix.password: no password found in {_where(config.password)}")
    response = await client.login(password, device_name=config.device_name)
    if not isinstance(response, LoginResponse):
        raise LoginFailed(f"matrix: password login refused ({getattr(response, 'status_code', '?')})")
    store.save_session(config.user_id, response.device_id, response.access_token)
    client.restore_login(config.user_id, response.device_id, response.access_token)


def forget_session(store: BotStore) -> None:
    """A stored session the homeserver no longer accepts: log in again next time."""
    (store.root / "session.json").unlink(missing_ok=True)


def _where(ref: Any) -> str:
    places = []
    if ref.env:
        places.append(f"env {ref.env}")
    if ref.file is not None:
        places.append(f"file {ref.file}")
    return " or ".join(places)


class Sender:
    """``room_send`` that survives a homeserver restart: same transaction ID on every retry."""

    def __init__(self, client: AsyncClient, deadline: float = SEND_DEADLINE) -> None:
        self.client = client
        self.deadline = deadline

    async def __call__(self, room_id: str, event_type: str, content: dict[str, Any], txn: str) -> str | None:
        async def attempt() -> str | None:
            try:
                response = await self.client.room_send(room_id, event_type, content, tx_id=txn,
                                                       ignore_unverified_devices=True)
            except NETWORK_ERRORS as exc:
                logger.info("matrix bot: send to %s failed (%s); retrying", room_id, type(exc).__name__)
                return None
            except LocalProtocolError as exc:  # e.g. an encrypted room not synced yet
                logger.info("matrix bot: send to %s not possible yet: %s", room_id, exc)
                return None
            if isinstance(response, RoomSendResponse):
                return response.event_id
            status = str(getattr(response, "status_code", ""))
            if status.startswith("M_") and status not in ("M_LIMIT_EXCEEDED", "M_UNKNOWN"):
                logger.warning("matrix bot: send to %s refused: %s", room_id, status)
                return ""  # permanent: do not retry
            return None

        event_id = await retrying(attempt, time.monotonic() + self.deadline, f"send to {room_id}")
        return event_id or None
