"""Notice a process that keeps dying with the same fatal error, from the logs Ray keeps for its workers.

Why: when an engine's process dies of a fatal signal (SIGILL on a CPU the build does not support,
SIGSEGV in a kernel), Serve restarts the replica and it dies again, forever; the app never fails,
so a launcher waiting for readiness would wait out its whole timeout in silence. Python's
faulthandler (on in every Ray worker and the engine processes they spawn, which share the worker's
stderr) writes ``Fatal Python error: <what>`` and the dying thread's stack to the worker's ``.err``
file; the same error seen ``limit`` times is a crash loop worth stopping for.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FATAL_PREFIX = "Fatal Python error: "
# Hints for the fatal errors users meet; the key is matched against the start of the error text.
HINTS = {
    "Illegal instruction": (
        "the CPU lacks an instruction the engine used. On Intel CPUs with AMX, vLLM needs AMX tile "
        "permission, which this package's vLLM plugin `ray_serve_cai_amx` requests: reinstall the package "
        "(scripts/setup.sh) and, if VLLM_PLUGINS is set, include ray_serve_cai_amx in it. Otherwise compare "
        "the build's requirements with `lscpu` flags"
    ),
    "Segmentation fault": "a native extension crashed; the stack above says where",
}
STACK_LINES = 4  # the innermost frames of the dying thread: where it died


@dataclass(frozen=True)
class FatalError:
    message: str  # e.g. "Illegal instruction"
    stack: tuple[str, ...]  # innermost frames first, as faulthandler prints them
    log_file: Path

    def describe(self, times: int) -> str:
        where = "".join(f"\n    {line}" for line in self.stack)
        hint = next((text for key, text in HINTS.items() if self.message.startswith(key)), None)
        return (f"an engine process died {times} times with \"Fatal Python error: {self.message}\"{where}\n"
                f"  log: {self.log_file}" + (f"\n  hint: {hint}" if hint else ""))


def parse_fatal_errors(text: str, log_file: Path) -> list[FatalError]:
    """Every ``Fatal Python error`` in ``text`` with the innermost frames of the thread that died
    (faulthandler's "Current thread" block; it prints the other threads' stacks first)."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith(FATAL_PREFIX):
            continue
        report = []
        for following in lines[index + 1:]:
            if following.startswith(FATAL_PREFIX):
                break
            report.append(following)
        start = next((i for i, row in enumerate(report) if row.startswith("Current thread")), 0)
        stack = []
        for row in report[start + 1:]:
            if not row.strip().startswith("File ") or len(stack) == STACK_LINES:
                break
            stack.append(row.strip())
        found.append(FatalError(line[len(FATAL_PREFIX):].strip(), tuple(stack), log_file))
    return found


@dataclass
class CrashWatch:
    """Reads the new part of every ``*.err`` file under ``log_dir`` on each ``check()``."""

    log_dir: Path
    limit: int = 3
    _offsets: dict[Path, int] = field(default_factory=dict)
    _pending: dict[Path, str] = field(default_factory=dict)
    _seen: Counter[str] = field(default_factory=Counter)
    _last: dict[str, FatalError] = field(default_factory=dict)

    def check(self) -> str | None:
        """A description of the fatal error seen ``limit`` times so far, else None."""
        for path in self._err_files():
            for error in parse_fatal_errors(self._complete_text(path), path):
                self._seen[error.message] += 1
                self._last[error.message] = error
        for message, times in self._seen.items():
            if times >= self.limit:
                return self._last[message].describe(times)
        return None

    def _err_files(self) -> list[Path]:
        """Every ``*.err`` below the log directory. ``os.walk`` rather than ``Path.glob``: Ray removes
        directories of its session logs (``events``) while we look, and glob then raises."""
        found = [Path(root) / name for root, _, names in os.walk(self.log_dir) for name in names if name.endswith(".err")]
        return sorted(found)

    def _complete_text(self, path: Path) -> str:
        """New text of ``path`` since the last call. The last fatal error in a chunk is held back until
        a check finds the file unchanged: faulthandler may still be writing its stack."""
        try:
            with path.open("rb") as file:
                file.seek(self._offsets.get(path, 0))
                chunk = file.read()
        except OSError:
            return ""
        self._offsets[path] = self._offsets.get(path, 0) + len(chunk)
        text = self._pending.pop(path, "") + chunk.decode(errors="replace")
        if chunk and FATAL_PREFIX in text:
            tail_start = text.rfind(FATAL_PREFIX)
            self._pending[path] = text[tail_start:]
            return text[:tail_start]
        return text
