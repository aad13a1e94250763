"""The one polling loop: ask until there is an answer or the time is up, with progress lines.

Every "wait until X" in the launchers, the CLI and the load tests goes through ``poll_until`` so the
deadline arithmetic, the sleep and the "never look hung" status lines are written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(TimeoutError):
    """``check`` found nothing within the time allowed; ``elapsed`` seconds were spent."""

    def __init__(self, elapsed: float) -> None:
        super().__init__(f"nothing after {elapsed:.0f}s")
        self.elapsed = elapsed


def poll_until(
    check: Callable[[], T | None],
    timeout_s: float,
    interval_s: float,
    *,
    status: Callable[[float], str] | None = None,
    progress: Callable[[str], None] | None = None,
    every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``check()`` every ``interval_s`` until it returns something other than None (or False),
    and return that. ``check`` fails early by raising. After ``timeout_s`` raise ``PollTimeout``.

    With ``status`` and ``progress``, ``progress(status(elapsed))`` is called when the status line
    changes and at least every ``every_s`` seconds, so a long wait always shows it is alive.
    """
    start = clock()
    last_line, last_shown = None, float("-inf")
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        elapsed = clock() - start
        if status is not None and progress is not None:
            line = status(elapsed)
            if line != last_line or elapsed - last_shown >= every_s:
                progress(line)
                last_line, last_shown = line, elapsed
        if elapsed >= timeout_s:
            raise PollTimeout(elapsed)
        sleep(min(interval_s, timeout_s - elapsed))
