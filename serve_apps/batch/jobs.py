"""Run batch jobs from a router replica.

Every router replica runs one supervisor loop. Each round it touches the router app's job host (one
detached, named ``BatchJobs`` actor per app and batch configuration: whichever replica gets there
first creates it, the others find it) and asks it to run every unfinished batch in storage. So the
host stays warm for the next batch, and a job whose host died (SIGKILL, node loss, a whole new
cluster) is started again from its checkpoint within ``supervise_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
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

    @property
    def host_name(self) -> str:
        # A changed configuration (another storage, say) gets a host of its own; the old one runs
        # out its jobs and exits once nobody touches it.
        digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:8]
        return f"{self.router_app}-batch-jobs-{digest}"

    @staticmethod
    @functools.cache
    def _actor() -> Any:
        import ray

        from serve_apps.batch.job import BatchJobs

        return ray.remote(BatchJobs)

    def host(self) -> Any:
        """The app's job host, created if it does not exist (idempotent, from any replica)."""
        return self._actor().options(
            name=self.host_name, namespace=self.config.namespace, get_if_exists=True, lifetime="detached",
            max_restarts=-1, num_cpus=0, max_concurrency=1000,
        ).remote(self.config.model_dump(), self.router_app, self.router_deployment)

    def ensure(self, batch_id: str) -> None:
        """Make sure the batch's job is running (idempotent)."""
        self.host().run.remote(batch_id)

    def cancel(self, batch_id: str) -> None:
        """Storage already says "cancel"; tell a running job now rather than at its next tick."""
        self.host().cancel.remote(batch_id)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._sweep)
            except Exception:  # storage hiccup: try again next round
                logger.exception("batch supervisor: sweep failed")
            await asyncio.sleep(self.config.supervise_seconds)

    def _sweep(self) -> None:
        host = self.host()
        host.touch.remote()
        for batch_id in self.storage.batch_ids():
            if batch_id in self._finished:
                continue
            batch = self.storage.get_batch(batch_id)
            if batch is None:
                continue
            if batch.status in TERMINAL:
                self._finished.add(batch_id)
                continue
            host.run.remote(batch_id)
