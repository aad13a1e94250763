"""CrashWatch on real fatal errors: Python processes killed by SIGILL with faulthandler on, writing to
``.err`` files as Ray's workers do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launchers.crash_watch import CrashWatch, parse_fatal_errors

# a helper thread is running too: faulthandler prints its stack first, the dying thread's last
DIE = ("import faulthandler, os, signal, threading, time\n"
       "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
       "def forward():\n    os.kill(os.getpid(), signal.SIGILL)\n"
       "faulthandler.enable()\nprint('loading', flush=True)\nforward()\n")


def _crash_into(err_file: Path) -> None:
    err_file.parent.mkdir(parents=True, exist_ok=True)
    with err_file.open("ab") as stderr:
        proc = subprocess.run([sys.executable, "-c", DIE], stderr=stderr, stdout=subprocess.DEVNULL)
    assert proc.returncode == -4  # SIGILL, as vLLM's worker on an AMX CPU


def test_parse_reads_the_error_and_the_innermost_frames(tmp_path):
    err = tmp_path / "worker-1.err"
    _crash_into(err)
    (error,) = parse_fatal_errors(err.read_text(), err)
    assert error.message == "Illegal instruction"
    assert 'line 4 in forward' in error.stack[0]  # the dying thread's innermost frame, not the sleeper's
    assert len(error.stack) == 2  # forward, <module>
    assert error.log_file == err


def test_third_identical_crash_is_reported_with_its_hint(tmp_path):
    watch = CrashWatch(tmp_path, limit=3)
    assert watch.check() is None  # no logs yet
    for n in range(3):  # Serve restarts a replica in a new worker, with a new log file
        _crash_into(tmp_path / "logs" / f"worker-{n}.err")
        watch.check()  # sees the new text, holds the last error back one check
        if n < 2:
            assert watch.check() is None
    problem = watch.check()
    assert problem is not None
    assert 'died 3 times with "Fatal Python error: Illegal instruction"' in problem
    assert "in forward" in problem and "worker-2.err" in problem
    assert "ray_serve_cai_amx" in problem  # the hint for this error
    assert watch.check() == problem  # stays reported; nothing counted twice


def test_an_error_still_being_written_is_not_counted_early(tmp_path):
    err = tmp_path / "w.err"
    err.write_text("Fatal Python error: Segmentation fault\n\n")
    watch = CrashWatch(tmp_path, limit=1)
    assert watch.check() is None  # held back: faulthandler may still be writing the stack
    with err.open("a") as file:
        file.write('Thread 0x2 (most recent call first):\n  File "other.py", line 1 in wait\n\n'
                   'Current thread 0x1 (most recent call first):\n  File "x.py", line 9 in kernel\n')
    assert watch.check() is None  # grew again: still held
    problem = watch.check()  # unchanged since: complete
    assert problem is not None and 'File "x.py", line 9 in kernel' in problem and "other.py" not in problem
    assert "native extension crashed" in problem


def test_different_errors_are_counted_apart(tmp_path):
    err = tmp_path / "w.err"
    err.write_text("Fatal Python error: Aborted\n\nFatal Python error: Segmentation fault\n\n"
                   "Fatal Python error: Aborted\n\n")
    watch = CrashWatch(tmp_path, limit=3)
    watch.check()
    assert watch.check() is None  # 2 x Aborted, 1 x Segmentation fault
