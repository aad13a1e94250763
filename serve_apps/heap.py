"""Take what a replica built while starting out of the garbage collector's sight.

A Ray worker's heap is large once Ray, Serve, an engine and its libraries are loaded, and every
full collection walks all of it: on the request path that is CPU (and pauses) spent on objects that
live as long as the process. vLLM's own server freezes its heap once it is up (its app's lifespan
calls ``vllm.utils.gc_utils.freeze_gc_heap``); an app mounted in a Serve replica never runs that
lifespan, so replicas call this once they are up. Measured with loadtests/bench_frontdoor.py
(docs/router.md, "The front door").
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what is garbage now, then exclude every surviving object from future collections."""
    gc.collect()
    gc.freeze()
