"""Serve's buffered replica log, flushed on a clock.

With ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (every shipped serve config sets it) Ray Serve puts a
``logging.handlers.MemoryHandler`` of 1,000 records in front of each replica's log file
(``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE``, ray/serve/_private/logging_utils.py): it writes only when
the buffer is full or a record is ERROR or worse. A replica logging a few warnings an hour kept an empty
file, and a SIGKILL lost the buffer. The buffer itself is what keeps the request path cheap, so it stays;
a daemon thread flushes it every second, which bounds how late (and how much, on a SIGKILL) a line can
be without adding work per record.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading

SERVE_LOGGER = "ray.serve"  # Ray Serve's SERVE_LOGGER_NAME: the logger its replica handlers hang on
FLUSH_INTERVAL_S = 1.0

_started = threading.Event()


def flush_serve_logs() -> None:
    """Write out whatever Serve's buffering handlers hold (read each time: Serve may replace them)."""
    for handler in logging.getLogger(SERVE_LOGGER).handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.flush()


def start_log_flusher(interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Flush Serve's replica log every ``interval_s`` from a daemon thread; once per process."""
    if _started.is_set():
        return
    _started.set()
    stop = threading.Event()  # never set: the thread lives as long as the replica process

    def run() -> None:
        while not stop.wait(interval_s):
            flush_serve_logs()

    threading.Thread(target=run, name="serve-log-flusher", daemon=True).start()
