"""Keep the processes around a vLLM CPU engine off the cores its worker computes on.

On CPU, vLLM binds its worker's OpenMP threads to every core but one (per worker), which it keeps
free for "the scheduler process" (``reserve_cpu_num`` in vllm/utils/ompmultiprocessing.py; its log
line "OpenMP thread binding info" shows both lists). Nothing keeps anything *else* off the bound
cores: on a private Ray instance, Ray's daemons, Ray Data's helper actors and the driver run there
whenever the scheduler finds the reserved core busy, and each OpenMP step then waits for the thread
that lost its core.

Once the engine is up, ``keep_off_engine_cores`` moves every process of the given trees that is not
bound yet -- all of its threads -- onto the cores the engine's workers leave free. The engine's own
processes (its front end and core, below ``engine_owner``) are left to the OS, as in a stock vLLM
process; so are processes already bound to a subset of the machine's cores (the workers, a process a
user placed with ``taskset``). Children started later inherit the mask of the thread that starts them.
Measured with loadtests/bench_batch.py (docs/batch.md, "Offline, 30 Nov").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from serve_apps.procs import descendants

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pinning:
    engine_cpus: frozenset[int]  # the cores the engine's workers are bound to
    free_cpus: frozenset[int]  # where everything else now runs
    moved: int  # processes moved onto free_cpus


def affinity(pid: int) -> frozenset[int] | None:
    """The CPUs ``pid``'s main thread may run on, or None once it is gone."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return None


def pin_process(pid: int, cpus: frozenset[int]) -> bool:
    """Bind every thread of ``pid`` to ``cpus`` (sched_setaffinity binds one thread); False if it is gone."""
    try:
        threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    for thread in threads:
        try:
            os.sched_setaffinity(thread, cpus)
        except OSError:  # the thread ended meanwhile
            pass
    return True


def engine_cpus(engine_owner: int, machine: frozenset[int]) -> frozenset[int]:
    """The cores bound by processes below ``engine_owner`` (its engine's workers): a proper subset of
    ``machine`` each. Empty when nothing is bound (a GPU engine, ``VLLM_CPU_OMP_THREADS_BIND=nobind``)."""
    bound: set[int] = set()
    for pid in descendants(engine_owner):
        mask = affinity(pid)
        if mask is not None and mask < machine:
            bound |= mask
    return frozenset(bound)


def keep_off_engine_cores(engine_owner: int, roots: list[int]) -> Pinning | None:
    """Move the unbound processes of ``roots``' trees (roots included), except ``engine_owner`` and its
    tree, off the cores bound by the engine workers below ``engine_owner``. None, changing nothing,
    when there is no such core or no core is left for the others."""
    machine = affinity(engine_owner)
    if machine is None:
        return None
    cores = engine_cpus(engine_owner, machine)
    free = machine - cores
    if not cores or not free:
        logger.info("CPU pinning skipped: engine cores %s, free cores %s", sorted(cores), sorted(free))
        return None
    engine = {engine_owner, *descendants(engine_owner)}
    moved = 0
    for root in roots:
        for pid in [root, *descendants(root)]:
            if pid not in engine and affinity(pid) == machine and pin_process(pid, free):
                moved += 1
    logger.info("CPU pinning: engine workers on cores %s; %d other processes moved to %s",
                sorted(cores), moved, sorted(free))
    return Pinning(engine_cpus=cores, free_cpus=free, moved=moved)
