"""Start and re-attach batch job actors from a router replica.

Every router replica runs one supervisor loop: it looks for unfinished batches in storage and makes sure
each has its job actor running. The actor is detached and named after the batch, so whichever replica
gets there first creates it, the others find it, and a job whose actor died (SIGKILL, node loss, a
whole new cluster) is started again from its checkpoint within ``supervise_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from serve_apps.batch.config import BatchConfig
from serve_apps.batch.models import TERMINAL
from serve_apps.batch.storage import Storage

logger = logging.getLogger("ray.serve")


class JobSupervisor:
    def __init__(self, config: BatchConfig, storage: Storage, router_app: str, router_deployment: str) -> None:
        self.config = config
        self.storage = storage
        self.router_app = router_app
        self.router_deployment = router_deployment
        self._finished: set[str] = set()  # terminal batches never change: read each once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def actor_name(self, batch_id: str) -> str:
        return f"{self.router_app}-{batch_id}"

    @staticmethod
    @functools.cache
    def _actor() -> Any:
        import ray

        from serve_apps.batch.job import BatchJob

        return ray.remote(BatchJob)

    def ensure(self, batch_id: str) -> None:
        """Create the job actor if it does not exist and make sure it is running (idempotent)."""
        actor = self._actor().options(
            name=self.actor_name(batch_id), namespace=self.config.namespace, get_if_exists=True,
            lifetime="detached", max_restarts=-1, num_cpus=0, max_concurrency=1000,
        ).remote(self.config.model_dump(), batch_id, self.router_app, self.router_deployment)
        actor.run.remote()

    def cancel(self, batch_id: str) -> None:
        """Storage already says "cancel"; tell a running job now rather than at its next tick."""
        import ray

        try:
            ray.get_actor(self.actor_name(batch_id), namespace=self.config.namespace).cancel.remote()
        except ValueError:  # no actor: the supervisor finalises it from storage
            self.ensure(batch_id)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._sweep)
            except Exception:  # storage hiccup: try again next round
                logger.exception("batch supervisor: sweep failed")
            await asyncio.sleep(self.config.supervise_seconds)

    def _sweep(self) -> None:
        for batch_id in self.storage.batch_ids():
            if batch_id in self._finished:
                continue
            batch = self.storage.get_batch(batch_id)
            if batch is None:
                continue
            if batch.status in TERMINAL:
                self._finished.add(batch_id)
                continue
            self.ensure(batch_id)
