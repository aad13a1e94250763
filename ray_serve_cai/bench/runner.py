"""Run benchmarks one after another, each in a child process in a session of its own, with a time
budget, a memory sampler, and a sweep that kills whatever the benchmark left behind.

Why a child per benchmark: a benchmark starts Ray clusters and vLLM servers; if it hangs or the user
presses Ctrl-C, the runner can still stop it (SIGTERM, then SIGKILL to its whole session) and go on or
write what it has. Results are rewritten after every benchmark, so an interrupted run keeps its rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ray_serve_cai.bench.machine import git_commit, machine_facts
from ray_serve_cai.bench.procs import MemorySampler, kill_session
from ray_serve_cai.bench.registry import Benchmark
from ray_serve_cai.bench.results import (
    BenchmarkRecord,
    BenchOutput,
    BenchResults,
    BenchSettings,
    Status,
    read_results,
    write_results,
)

STOP_GRACE_S = 120.0
LEFTOVER_GRACE_S = 2.0  # processes SIGKILLed by the benchmark's own cleanup take a moment to be gone  # a benchmark stopping its clusters on SIGTERM needs up to a minute or two


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Runner:
    def __init__(self, root: Path, out_dir: Path, rounds: int, tiny: bool = False, haproxy: bool = False,
                 budget_s: float | None = None, log: Callable[[str], None] = print) -> None:
        self.root, self.out_dir, self.rounds, self.tiny, self.haproxy = root, out_dir, rounds, tiny, haproxy
        self.budget_s, self.log = budget_s, log
        commit, dirty = git_commit(root)
        self.results = BenchResults(started=_utcnow(), commit=commit, dirty=dirty, command=sys.argv,
                                    machine=machine_facts(root / "loadtests" / ".venv-litellm" / "bin" / "python"))
        self.interrupted = False

    def _keep_earlier(self, benchmarks: list[Benchmark]) -> None:
        """A results file of the same date and commit already there (a run split into lock-sized pieces):
        keep its benchmarks that this run does not repeat."""
        earlier_path = self.out_dir / f"{self.results.stem()}.json"
        if not earlier_path.exists():
            return
        try:
            earlier = read_results(earlier_path)
        except (ValueError, OSError) as exc:  # not ours or damaged: never silently merged, never lost
            keep = earlier_path.with_suffix(f".unreadable-{time.time_ns()}.json")
            earlier_path.rename(keep)
            self.log(f"[bench] {earlier_path} is not a valid results file ({str(exc)[:200]}); moved to {keep}")
            return
        names = {b.name for b in benchmarks}
        kept = [r for r in earlier.benchmarks if r.name not in names]
        if kept:
            self.log(f"[bench] keeping {', '.join(r.name for r in kept)} from the earlier run in {earlier_path}")
        self.results.benchmarks = kept

    def run(self, benchmarks: list[Benchmark]) -> Path:
        self._keep_earlier(benchmarks)
        write_results(self.results, self.out_dir)
        for index, bench in enumerate(benchmarks, 1):
            if self.interrupted:
                break
            self.log(f"[bench] {index}/{len(benchmarks)} {bench.name}: {bench.title}")
            record = self._one(bench)
            self.results.benchmarks.append(record)
            write_results(self.results, self.out_dir)
            extra = f": {record.error}" if record.error else ""
            self.log(f"[bench] {index}/{len(benchmarks)} {bench.name}: {record.status} in {record.seconds:.0f} s{extra}")
        self.results.finished = _utcnow()
        return write_results(self.results, self.out_dir)

    def _budget(self, bench: Benchmark) -> float:
        if self.budget_s is not None:
            return self.budget_s
        return bench.budget_s / 3 if self.tiny else bench.budget_s * max(1.0, self.rounds / 6)

    def _one(self, bench: Benchmark) -> BenchmarkRecord:
        work = Path(tempfile.mkdtemp(prefix=f"rsc-bench-{bench.name}-"))
        settings = BenchSettings(rounds=self.rounds, workdir=work, tiny=self.tiny, haproxy=self.haproxy)
        (work / "settings.json").write_text(settings.model_dump_json())
        output_path = work / "output.json"
        started, clock = _utcnow(), time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen([sys.executable, "-m", "ray_serve_cai.bench.child", bench.name, bench.target,
                                  str(work / "settings.json"), str(output_path)],
                                 cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                 start_new_session=True)  # progress on stderr: stdout holds only the table
        sampler = MemorySampler(child.pid).start()
        status: Status | None = None
        budget = self._budget(bench)
        try:
            while child.poll() is None:
                if time.monotonic() - clock > budget:
                    self.log(f"[bench] {bench.name}: over its {budget:.0f} s budget, stopping it")
                    status = "timeout"
                    self._stop(child)
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.log(f"[bench] interrupted: stopping {bench.name} and everything it started")
            self.interrupted, status = True, "interrupted"
            self._stop(child)
        finally:
            memory = sampler.stop()
            time.sleep(LEFTOVER_GRACE_S)
            leftovers = kill_session(child.pid)
        if leftovers:
            self.log(f"[bench] {bench.name}: killed {len(leftovers)} leftover process(es): {'; '.join(leftovers)}")
        record = dict(name=bench.name, title=bench.title, baseline=bench.baseline, started=started,
                      seconds=round(time.monotonic() - clock, 1), settings=settings, memory=memory,
                      leftovers_killed=leftovers)
        reply = json.loads(output_path.read_text()) if output_path.exists() else None
        if status is not None:
            return BenchmarkRecord(**record, status=status, error=f"{status} after {record['seconds']:.0f} s")
        if child.returncode == 0 and reply is not None:
            return BenchmarkRecord(**record, status="ok", output=BenchOutput.model_validate(reply))
        error = (reply or {}).get("error") or f"exited with code {child.returncode}"
        return BenchmarkRecord(**record, status="missing" if (reply or {}).get("missing") else "failed", error=error)

    def _stop(self, child: subprocess.Popen) -> None:
        """SIGTERM (the benchmark's finally blocks stop its clusters), then SIGKILL to its whole session."""
        try:
            os.kill(child.pid, signal.SIGTERM)
            child.wait(STOP_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            pass
        kill_session(child.pid)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            pass
