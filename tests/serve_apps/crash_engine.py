"""A custom engine whose process dies of SIGILL on its first generation, as vLLM's worker did on Intel
CPUs with AMX before this package requested tile permission (``serve_apps/vllm_plugin.py``).

It starts at once (no model) so that a crash loop costs seconds, not an engine load per cycle. The
death is real: faulthandler writes ``Fatal Python error: Illegal instruction`` and the stack to the
replica's stderr, and the kernel delivers the signal.
"""

from __future__ import annotations

import faulthandler
import signal
import threading
from typing import Any

from tests.serve_apps.echo_engine import EchoEngine


def _die_of_sigill() -> None:
    faulthandler.enable()
    # to this thread, as a faulting instruction's SIGILL is: faulthandler names it "Current thread"
    signal.pthread_kill(threading.get_ident(), signal.SIGILL)


class CrashEngine(EchoEngine):
    async def chat(self, request: dict[str, Any]):
        _die_of_sigill()

    async def completion(self, request: dict[str, Any]):
        _die_of_sigill()
