"""One batch job: validate the input file, send every line through the router, checkpoint, finalise.

Jobs run in ``BatchJobs``, a detached, named Ray actor per router app (``jobs.py`` keeps it running),
so they outlive the router replica that created them; every router replica re-attaches unfinished
jobs. The job's
only state that matters is in storage (the batch object and its checkpoint parts), so a job killed at
any instant and started again continues where the parts end, sending nothing twice that was recorded
and losing nothing that was not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve_apps.batch.config import BatchConfig
from serve_apps.batch.lines import numbered_lines, parse_line, scan
from serve_apps.batch.models import Batch, BatchError, BatchErrors, FileObject, RequestLine, now, output_line
from serve_apps.batch.sender import Call, GroupedSender
from serve_apps.batch.storage import ERROR, OUTPUT, Storage
from serve_apps.batch.waiting import Answer, Gate

logger = logging.getLogger("ray.serve")
# (path, raw JSON body, the name of the key it acts for) -> (HTTP status, response body). Raises when
# the router cannot be reached.
Send = Callable[[str, bytes, str | None], Awaitable[tuple[int, bytes]]]
# A router gone this long (its app deleted?) ends the run; the batch stays resumable in storage and the
# next router replica that comes up with the same storage picks it up again. A router that answers
# "no backend can serve" is waited for until the batch's window ends (``waiting``).
GIVE_UP_AFTER_S = 600.0
EXPIRED_ERROR = {"code": "batch_expired",
                 "message": "This request could not be executed before the completion window expired."}


def _parsed(answer: Answer) -> tuple[int | None, Any, dict[str, Any] | None]:
    """(status, JSON body, error) of an output or error line."""
    try:
        return answer.status, json.loads(answer.body), None
    except ValueError:
        return None, None, {"code": "invalid_response", "message": f"HTTP {answer.status} with a non-JSON body"}


class JobRunner:
    """The job's logic, free of Ray: ``send`` reaches the router, ``storage`` holds everything."""

    def __init__(self, config: BatchConfig, storage: Storage, batch_id: str, send: Send) -> None:
        self.config = config
        self.storage = storage
        self.batch_id = batch_id
        self.send = send
        self.cancelled = False
        self._buffer: list[tuple[int, str, str]] = []
        self._seq = 0
        self._counts = {OUTPUT: 0, ERROR: 0}
        self._last_flush = time.monotonic()
        self._lock = asyncio.Lock()
        self.batch: Batch | None = None
        self._first_result_at: float | None = None
        self.gate = Gate(config.retries)  # why the job waits, shown in the batch's metadata (WAITING_KEY)

    def _load(self) -> Batch:
        batch = self.storage.get_batch(self.batch_id)
        if batch is None:
            raise LookupError(f"batch {self.batch_id} is not in storage")
        return batch

    async def run(self) -> str:
        started = time.monotonic()
        marks: dict[str, float] = {}
        batch = self._load()
        if batch.status == "validating":
            batch = await asyncio.to_thread(self._validate, batch)
            marks["validated"] = time.monotonic()
        if batch.status in ("in_progress", "cancelling"):
            batch = await self._process(batch)
            if self._first_result_at is not None:
                marks["first result"] = self._first_result_at
            marks["processed"] = time.monotonic()
        if batch.status in ("finalizing", "cancelling"):
            batch = await asyncio.to_thread(self._finalise, batch)
            marks["finalised"] = time.monotonic()
        if marks:
            logger.info("batch %s: %s after %.2f s (%s)", self.batch_id, batch.status, time.monotonic() - started,
                        ", ".join(f"{name} at {at - started:.2f}" for name, at in marks.items()))
        return batch.status

    # ------------------------------------------------------------------ validating

    def _validate(self, batch: Batch) -> Batch:
        if self.storage.get_file(batch.input_file_id) is None:
            return self._fail(batch, "file_not_found", f"The input file {batch.input_file_id} was deleted.")
        with self.storage.open_file(batch.input_file_id) as stream:
            result = scan(stream, batch.endpoint, self.config.max_line_bytes, self.config.max_requests)
        counts = batch.request_counts.model_copy(update={"total": result.total})
        if result.errors:
            batch = batch.model_copy(update={"errors": BatchErrors(data=result.errors), "request_counts": counts})
            batch = batch.moved_to("failed")
        else:
            batch = batch.model_copy(update={"request_counts": counts}).moved_to("in_progress")
        if self.storage.cancel_requested(batch.id) and batch.status == "in_progress":
            batch = batch.moved_to("cancelling")
        self.storage.save_batch(batch)
        return batch

    def _fail(self, batch: Batch, code: str, message: str) -> Batch:
        batch = batch.model_copy(update={"errors": BatchErrors(data=[BatchError(code=code, message=message)])})
        batch = batch.moved_to("failed")
        self.storage.save_batch(batch)
        return batch

    # ------------------------------------------------------------------ in progress

    def _recorded(self) -> set[int]:
        done: set[int] = set()
        paths = self.storage.part_paths(self.batch_id)
        for path in paths:
            for index, kind, _ in self.storage.read_part(path):
                done.add(index)
                self._counts[kind] += 1
        self._seq = max((int(p.rsplit("/", 1)[-1].split(".")[0]) for p in paths), default=0)
        return done

    async def _process(self, batch: Batch) -> Batch:
        self.batch = batch
        self.cancelled = self.cancelled or batch.status == "cancelling"
        done = await asyncio.to_thread(self._recorded)
        limit = asyncio.Semaphore(self.config.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        ticker = asyncio.create_task(self._tick())
        expired = False
        try:
            with self.storage.open_file(batch.input_file_id) as stream:
                for number, raw in numbered_lines(stream):
                    if self.cancelled:
                        break
                    if number in done:
                        continue
                    expired = expired or (batch.expires_at is not None and time.time() > batch.expires_at)
                    parsed = parse_line(raw, number, batch.endpoint, self.config.max_line_bytes)
                    assert isinstance(parsed, RequestLine), "validated files hold only valid lines"
                    if expired:
                        self._record(number, ERROR, output_line(parsed.custom_id, None, None, EXPIRED_ERROR))
                    else:
                        await limit.acquire()
                        task = asyncio.create_task(self._one(number, parsed, limit))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    await self._flush(force=False)
            if self.cancelled:
                for task in tasks:
                    task.cancel()  # stop new work; what finished is already buffered
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            ticker.cancel()
        await self._flush(force=True)
        if self.cancelled:
            return await self._save_status("cancelling")
        return await self._save_status("finalizing")  # past expires_at, finalising makes it "expired"

    async def _tick(self) -> None:
        """Flush on time as well as on size, and notice a cancel requested through storage."""
        while True:
            await asyncio.sleep(self.config.flush_seconds)
            if not self.cancelled and await asyncio.to_thread(self.storage.cancel_requested, self.batch_id):
                self.cancelled = True
            await self._flush(force=False)
            if self.batch is not None and self.batch.noted(self.gate.note()) != self.batch:
                await self._save_status(self.batch.status)

    async def _one(self, number: int, request: RequestLine, limit: asyncio.Semaphore) -> None:
        try:
            payload = dict(request.body)
            if payload.pop("stream", None):  # results are whole responses; a stream has nowhere to go
                payload.pop("stream_options", None)
            raw = json.dumps(payload).encode()
            expires_at = self.batch.expires_at if self.batch is not None else None
            owner = self.batch.owner if self.batch is not None else None  # every line acts for its creator
            answer = await self.gate.send(lambda: self.send(request.url, raw, owner), expires_at, GIVE_UP_AFTER_S)
            if answer.expired:
                self._record(number, ERROR, output_line(request.custom_id, None, None, EXPIRED_ERROR))
                return
            status, body, error = _parsed(answer)
            kind = OUTPUT if status is not None and 200 <= status < 300 else ERROR
            self._record(number, kind, output_line(request.custom_id, status, body, error))
        finally:
            limit.release()

    # ------------------------------------------------------------------ checkpoint

    def _record(self, number: int, kind: str, line: dict[str, Any]) -> None:
        self._first_result_at = self._first_result_at or time.monotonic()
        self._buffer.append((number, kind, json.dumps(line, separators=(",", ":"))))
        self._counts[kind] += 1

    async def _flush(self, force: bool) -> None:
        """Write buffered results as the next part. One writer at a time: parts and counts stay in step."""
        due = force or len(self._buffer) >= self.config.flush_lines or (
            time.monotonic() - self._last_flush >= self.config.flush_seconds)
        if not self._buffer or not due:
            return
        async with self._lock:
            rows, self._buffer = self._buffer, []
            if not rows:
                return
            self._seq += 1
            await asyncio.to_thread(self.storage.write_part, self.batch_id, self._seq, rows)
            self._last_flush = time.monotonic()
            await self._save_status(self.batch.status, locked=True)

    async def _save_status(self, status: str, locked: bool = False) -> Batch:
        if not locked:
            async with self._lock:
                return await self._save_status(status, locked=True)
        batch = self.batch
        counts = batch.request_counts.model_copy(update={"completed": self._counts[OUTPUT], "failed": self._counts[ERROR]})
        batch = batch.model_copy(update={"request_counts": counts})
        batch = batch.noted(self.gate.note() if status in ("in_progress", "cancelling") else None)
        if status != batch.status:
            batch = batch.moved_to(status)  # type: ignore[arg-type]
        self.batch = batch
        await asyncio.to_thread(self.storage.save_batch, batch)
        return batch

    # ------------------------------------------------------------------ finalising

    def _finalise(self, batch: Batch) -> Batch:
        """Merge the parts into the output and error files (deterministic ids: a rerun overwrites)."""
        final = "cancelled" if batch.status == "cancelling" else "completed"
        if final == "completed" and batch.expires_at is not None and (batch.finalizing_at or 0) >= batch.expires_at:
            final = "expired"  # lines past the window went to the error file as batch_expired
        suffix = batch.id.removeprefix("batch_")
        names = {OUTPUT: (f"file-{suffix}-output", f"{batch.id}_output.jsonl"),
                 ERROR: (f"file-{suffix}-error", f"{batch.id}_error.jsonl")}
        writers: dict[str, Any] = {}
        sizes = {OUTPUT: 0, ERROR: 0}
        counts = {OUTPUT: 0, ERROR: 0}
        try:
            for _, kind, line in self.storage.merged_results(batch.id):
                if kind not in writers:
                    writers[kind] = self.storage.file_writer(names[kind][0])
                data = (line + "\n").encode()
                writers[kind].write(data)
                sizes[kind] += len(data)
                counts[kind] += 1
        finally:
            for writer in writers.values():
                writer.close()
        ids: dict[str, str | None] = {OUTPUT: None, ERROR: None}
        for kind in writers:
            file_id, filename = names[kind]
            self.storage.save_file(FileObject(id=file_id, bytes=sizes[kind], created_at=now(), filename=filename,
                                              purpose="batch_output", owner=batch.owner))
            ids[kind] = file_id
        request_counts = batch.request_counts.model_copy(update={"completed": counts[OUTPUT], "failed": counts[ERROR]})
        batch = batch.model_copy(update={"output_file_id": ids[OUTPUT], "error_file_id": ids[ERROR],
                                         "request_counts": request_counts}).moved_to(final)  # type: ignore[arg-type]
        self.storage.save_batch(batch)
        return batch


class BatchJobs:
    """The Ray actor that runs the batch jobs of one router app, each as a ``JobRunner`` task.

    Kept running and warm by the router replicas' supervisors (``jobs.py``), so a new batch starts at
    once instead of waiting seconds for a worker process, its imports and a first router handle. Every
    job's state is in storage: when this actor is killed, Ray restarts it and the next supervisor
    round starts every unfinished job again from its checkpoint. A host nobody touches for
    ``IDLE_EXIT_S`` (its router app was deleted or now uses another configuration) and that runs no
    job exits for good.
    """

    IDLE_EXIT_S = 120.0  # at least; ten supervisor rounds when those are slower

    def __init__(self, config: dict[str, Any], router_app: str, router_deployment: str) -> None:
        self.config = BatchConfig.model_validate(config)
        self.router_app = router_app
        self.router_deployment = router_deployment
        self.storage = Storage(self.config.storage)
        self._runners: dict[str, JobRunner] = {}
        self._tasks: dict[str, asyncio.Task[str]] = {}
        self._handle: Any = None
        self._streaming: Any = None
        self._send = GroupedSender(self._group_call)  # one for all jobs: their requests share groups
        self._touched = time.monotonic()
        self._reaper: asyncio.Task[None] | None = None
        self._idle_exit = max(self.IDLE_EXIT_S, 10 * self.config.supervise_seconds)

    def _group_call(self, requests: list[Call]) -> AsyncIterator[list[tuple[int, int, bytes]]]:
        if self._streaming is None:
            self._streaming = self._router().options(stream=True)
        return self._streaming.batch_calls.remote(requests)

    def _router(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self.router_deployment, app_name=self.router_app)
        return self._handle

    async def touch(self) -> None:
        """The supervisor's keep-alive; the first one also opens the router handle, so the first
        request of the first batch does not pay for it."""
        self._touched = time.monotonic()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._exit_when_idle())
            try:
                await self._router().backends_status.remote()
            except Exception:  # the router is still starting: the first batch opens it then
                logger.info("batch jobs: router %s not reachable yet", self.router_app)

    async def run(self, batch_id: str) -> str:
        """Start the job unless it is running (idempotent: every router replica calls it, often at
        the same moment, so nothing may be awaited between the check and the task's creation)."""
        self._touched = time.monotonic()
        task = self._tasks.get(batch_id)
        if task is not None and not task.done():
            return "running"
        self._runners[batch_id] = runner = JobRunner(self.config, self.storage, batch_id, self._send)
        self._tasks[batch_id] = asyncio.create_task(self._run(batch_id, runner))
        return "started"

    async def _run(self, batch_id: str, runner: JobRunner) -> str:
        try:
            return await runner.run()  # a finished batch returns its status at once
        except LookupError:
            return "missing"
        except Exception:
            logger.exception("batch %s: job failed; it resumes from its checkpoint at the next supervisor round",
                             batch_id)
            raise
        finally:
            self._runners.pop(batch_id, None)
            self._touched = time.monotonic()

    async def cancel(self, batch_id: str) -> None:
        runner = self._runners.get(batch_id)
        if runner is not None:
            runner.cancelled = True

    async def _exit_when_idle(self) -> None:
        while True:
            await asyncio.sleep(self._idle_exit / 4)
            busy = any(not task.done() for task in self._tasks.values())
            if not busy and time.monotonic() - self._touched > self._idle_exit:
                import ray

                logger.info("batch jobs: %s idle, exiting", self.router_app)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
