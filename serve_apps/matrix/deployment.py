"""The ``MatrixInferenceBot`` Serve deployment: takes the lease, runs the bot while it holds it.

Every replica competes for the lease (``lease.py``); only the holder logs in and syncs, so two
replicas never answer the same command. The router is reached through its deployment handle, looked
up by name in the same application, so fallback and ``--backend`` work exactly as over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from serve_apps.logflush import start_log_flusher
from serve_apps.matrix.bot import MatrixBot
from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.inference import RouterClient
from serve_apps.matrix.lease import Lease, lease_name

logger = logging.getLogger("ray.serve")
ROUTER_DEPLOYMENT = "MultiBackendRouter"


@serve.deployment(name="MatrixInferenceBot", max_ongoing_requests=16, health_check_period_s=5)
class MatrixInferenceBot:
    async def __init__(self, config: dict[str, Any], router_deployment: str = ROUTER_DEPLOYMENT) -> None:
        start_log_flusher()  # Serve buffers this replica's log (serve_apps/logflush.py)
        self.config = MatrixConfig.model_validate(config)
        context = serve.get_replica_context()
        router = serve.get_deployment_handle(router_deployment, app_name=context.app_name)
        self.inference = RouterClient(router)
        holder = f"{context.replica_id.unique_id}@{os.getpid()}"
        self.lease = Lease(lease_name(context.app_name, self.config.user_id), holder, self.config.lease.check_every)
        self.bot: MatrixBot | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Follower: try for the lease now and then. Leader: run the bot until the lease is lost."""
        while True:
            if not await self.lease.try_acquire():
                await asyncio.sleep(self.config.lease.check_every)
                continue
            self.bot = MatrixBot(self.config, self.inference)
            bot_task = asyncio.create_task(self.bot.run())
            try:
                while await self.lease.still_held() and not bot_task.done():
                    await asyncio.sleep(self.config.lease.check_every)
            finally:
                bot_task.cancel()
                await asyncio.gather(bot_task, return_exceptions=True)
                self.bot = None
                self.lease.release()

    async def status(self) -> dict[str, Any]:
        sync = self.bot.state.as_dict() if self.bot is not None else {"phase": "follower"}
        return {"leader": self.lease.held, "pid": os.getpid(), "holder": self.lease.holder, "sync": sync}

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"matrix bot loop ended: {self._task.exception()!r}")
        bot = self.bot
        if bot is None or bot.state.last_ok is None:
            return
        stale = time.monotonic() - bot.state.last_ok
        if stale > self.config.sync.stale_after:
            raise RuntimeError(f"matrix sync loop made no progress for {stale:.0f} s ({bot.state.last_error})")

    async def __del__(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
