"""Everything batch that lives in a router replica, behind one object the router deployment holds:
the routes it adds to the router's ASGI app, and ``calls`` that job actors reach through the
deployment handle. Every route acts for the caller's key (resolved once, at the router's door), and
every line of a job for the key that created its batch (carried by name)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve_apps.asgi import Receive, Reply, Scope
from serve_apps.batch.api import BatchAPI
from serve_apps.batch.config import BatchConfig
from serve_apps.batch.endpoint import PromptsEndpoint
from serve_apps.batch.jobs import JobSupervisor
from serve_apps.batch.sender import Call
from serve_apps.batch.stack import for_stack
from serve_apps.batch.storage import Storage
from serve_apps.router.keys import ApiKey
from serve_apps.router.router import Router

PREFIXES = ("/v1/batch", "/v1/batches", "/v1/files")


class BatchService:
    def __init__(self, config: BatchConfig, router: Router, router_app: str, router_deployment: str) -> None:
        self.router = router
        config = for_stack(config, router_app)  # the default storage is this stack's own
        self.config = config
        self.storage = Storage(config.storage)
        self.supervisor = JobSupervisor(config, self.storage, router_app, router_deployment)
        self.api = BatchAPI(config, self.storage, self.supervisor)
        self.endpoint = PromptsEndpoint(config, router)

    def start(self) -> None:
        """Begin re-attaching unfinished jobs (needs the running event loop)."""
        self.supervisor.start()

    async def aclose(self) -> None:
        await self.supervisor.aclose()

    async def __call__(self, method: str, path: str, scope: Scope, receive: Receive, key: ApiKey) -> Reply | None:
        """The router's route hook: a reply for batch paths, None for everything else."""
        if path == "/v1/batch":
            return await self.endpoint(method, receive, key)
        if path == "/v1/batches" or path.startswith("/v1/batches/"):
            return await self.api.batches(method, path, scope, receive, key)
        if path == "/v1/files" or path.startswith("/v1/files/"):
            return await self.api.files(method, path, scope, receive, key)
        return None

    async def calls(self, requests: list[Call]) -> AsyncIterator[list[tuple[int, int, bytes]]]:
        """A group of a batch job's requests (``sender.GroupedSender``), run concurrently. Yields, as they
        finish, lists of ``(index, status, body)``: everything finished since the last yield, since an
        engine step completes many requests at once and each yield costs a message through Ray.
        Leaving early cancels what is still running."""

        async def one(index: int, call: Call) -> tuple[int, int, bytes]:
            return (index, *await self.call(*call))

        running = {asyncio.create_task(one(index, call)) for index, call in enumerate(requests)}
        try:
            while running:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                yield [task.result() for task in finished]
        finally:
            for task in running:
                task.cancel()

    async def call(self, path: str, raw: bytes, key: str | None) -> tuple[int, bytes]:
        """One request of a batch job through the router's own routing (whole body, no stream), acting
        for the key called ``key`` (its batch's owner): a limit's 429 makes the line wait
        (``waiting``), a key no longer configured is a 401 that fails it."""
        reply = await self.router.generate_as(path, raw, None, key)
        if isinstance(reply.body, bytes):
            return reply.status, reply.body
        chunks = [chunk async for chunk in reply.body]
        return reply.status, b"".join(chunks)
