"""This machine's process table, read from Linux's /proc: who is whose child, and who is still alive.

A process is named by its pid *and* its start time: a pid is reused once its process is gone, so a
pid remembered for a while only names the same process if the start time still matches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

TICKS = os.sysconf("SC_CLK_TCK")


class Proc(NamedTuple):
    name: str  # the kernel's short name (comm), for processes whose command line is empty
    state: str  # "R", "S", "D", "Z" (zombie), ...
    ppid: int
    session: int
    cpu_s: float  # user + system CPU time so far
    started: int  # clock ticks after boot (field 22 of /proc/PID/stat)


def read(pid: int | str) -> Proc | None:
    """One process, from /proc/PID/stat, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, _, rest = stat.partition(" (")[2].rpartition(")")  # the name may hold spaces and ")"
    fields = rest.split()
    return Proc(name=name, state=fields[0], ppid=int(fields[1]), session=int(fields[3]),
                cpu_s=(int(fields[11]) + int(fields[12])) / TICKS, started=int(fields[19]))


def table() -> dict[int, Proc]:
    """Every process on the machine."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := read(int(entry.name))) is not None:
            procs[int(entry.name)] = proc
    return procs


def descendants(root: int, procs: dict[int, Proc] | None = None) -> list[int]:
    """Every live process below ``root``."""
    children: dict[int, list[int]] = {}
    for pid, proc in (table() if procs is None else procs).items():
        children.setdefault(proc.ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone: only their parent can reap them)."""
    return [pid for pid in pids if (proc := read(pid)) is not None and proc.state != "Z"]
