"""The offline batch pipeline on Ray Data: a JSONL file of OpenAI batch requests in, OpenAI output
lines out, through an actor pool of vLLM engines (``predictor.Predictor``).

Resumable: the output file is appended to and flushed block by block, each line whole; a run killed
at any point leaves at most one partial last line, which the next ``resume`` run cuts off before
skipping every custom_id already written. Every custom_id ends up in the output exactly once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from serve_apps.batch.lines import scan

MAX_BLOCKS = 10_000  # past this, blocks hold several engine calls' worth: fewer, larger writes


class OfflineError(Exception):
    """A problem with the input or options, reported as one line."""


@dataclass
class OfflineJob:
    input: str  # a path, or an fsspec URI that every node of the cluster can read (s3://, a shared mount)
    output: Path
    model: str
    served_name: str | None = None
    replicas: int = 1
    batch_size: int = 256
    resume: bool = False
    address: str | None = None
    kv_cache_gb: float = 1.0
    cpus_per_replica: float = 1.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    cpu_threads: int | None = None  # per engine on CPU; None: see engine_threads

    def engine_threads(self) -> int:
        """Compute threads per engine on CPU: ``cpu_threads``, else this machine's cores shared by the
        replicas of a private instance, else (``address``) the CPUs Ray reserves for each replica."""
        if self.cpu_threads is not None:
            return self.cpu_threads
        if self.address is None:
            return max(1, len(os.sched_getaffinity(0)) // self.replicas)
        return max(1, int(self.cpus_per_replica))


@dataclass
class Summary:
    requests: int  # lines in the input
    skipped: int  # already in the output (resume)
    written: int
    failed: int
    output_tokens: int
    seconds: float
    # From the moment the first engine began its first batch (it was up) to the last line written: the
    # generation rate without the engines' start-up and Ray's shut-down, comparable with a timed
    # ``LLM.generate`` call.
    steady_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    @property
    def steady_tokens_per_second(self) -> float:
        return self.output_tokens / self.steady_seconds if self.steady_seconds else 0.0


def check_input(job: OfflineJob) -> int:
    """Validate every line before any engine starts (streamed); returns the request count."""
    try:
        with fsspec.open(job.input, "rb") as stream:
            result = scan(stream, None, max_line_bytes=64 * 1024 * 1024, max_requests=10**9)
    except FileNotFoundError:
        raise OfflineError(f"input file {job.input} does not exist") from None
    if result.errors:
        shown = "; ".join(f"line {e.line}: {e.message}" if e.line else str(e.message) for e in result.errors[:5])
        more = f" (and {result.error_count - 5} more)" if result.error_count > 5 else ""
        raise OfflineError(f"{job.input}: {shown}{more}")
    return result.total


def written_ids(output: Path) -> set[str]:
    """custom_ids already in ``output``, after cutting off a partial last line left by a kill."""
    if not output.exists():
        return set()
    with output.open("rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            handle.truncate(end)
    return {json.loads(line)["custom_id"] for line in data[:end].splitlines() if line.strip()}


def resolve_model(model: str, served_name: str | None) -> tuple[str, str]:
    """(path the engine loads, the name requests must use)."""
    from serve_apps.config import EngineConfig

    name = served_name or (model.split(":", 1)[1] if model.startswith("builtin:") else Path(model).name or model)
    return EngineConfig(name=name, model=model).resolve_model_path(), name


def run(job: OfflineJob, on_progress: Callable[[int, int], None] | None = None) -> Summary:
    """Run ``job``; ``on_progress(lines, tokens)`` after every written block."""
    total = check_input(job)
    if job.output.exists() and job.output.stat().st_size and not job.resume:
        raise OfflineError(f"{job.output} exists; pass --resume to continue it, or remove it")
    done = written_ids(job.output) if job.resume else set()
    model_path, served_name = resolve_model(job.model, job.served_name)
    todo = total - len(done)
    started = time.time()  # wall clock: the engines' start times come from other processes
    written = failed = tokens = 0
    first_batch_at = last_block_at = None
    if todo > 0:
        import ray

        from serve_apps.batch.predictor import Predictor

        own_cluster = not ray.is_initialized()
        if own_cluster:
            ray.init(address=job.address, include_dashboard=False, log_to_driver=False,
                     **({} if job.address else {"_node_ip_address": "127.0.0.1"}))
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.execution_options.preserve_order = False
            skip = frozenset(done)
            source = job.input if "://" in job.input else str(Path(job.input).resolve())
            # One block per engine call: a block is what the actor hands back and the CLI writes (and a
            # resumed run skips) in one piece. Left to Ray Data, a small file is a few large blocks, so
            # the output came in bursts of hundreds of lines and a kill threw away a whole block's answers.
            blocks = min(MAX_BLOCKS, -(-total // job.batch_size))
            dataset = ray.data.read_text(source, override_num_blocks=blocks).filter(
                lambda row: bool(row["text"].strip()) and json.loads(row["text"])["custom_id"] not in skip)
            results = dataset.map_batches(
                Predictor, batch_size=job.batch_size, num_cpus=job.cpus_per_replica,
                compute=ray.data.ActorPoolStrategy(size=job.replicas),
                fn_constructor_kwargs={"model_path": model_path, "served_name": served_name,
                                       "engine_kwargs": job.engine_kwargs, "kv_cache_gb": job.kv_cache_gb},
                # Ray would set OMP_NUM_THREADS to the actor's logical CPUs. It must be right from the
                # process's start: OpenMP gives every thread the start-up value, and vLLM's CPU attention
                # checks that the thread that plans a step and the one that runs it agree.
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(job.engine_threads())}})
            with job.output.open("ab") as out:
                for block in results.iter_batches(batch_size=None, batch_format="numpy"):
                    out.write("".join(f"{line}\n" for line in block["line"]).encode())
                    out.flush()
                    os.fsync(out.fileno())
                    block_tokens = int(block["tokens"].sum())
                    written += len(block["line"])
                    failed += int((~block["ok"]).sum())
                    tokens += block_tokens
                    last_block_at, batch_at = time.time(), float(block["started"].min())
                    first_batch_at = batch_at if first_batch_at is None else min(first_batch_at, batch_at)
                    if on_progress:
                        on_progress(len(block["line"]), block_tokens)
        finally:
            if own_cluster:
                ray.shutdown()
    ended = time.time()
    return Summary(total, len(done), written, failed, tokens, ended - started,
                   last_block_at - first_batch_at if first_batch_at is not None else 0.0)
