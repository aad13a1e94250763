"""Freezing the start-up heap: garbage is collected first, what survives leaves the collector's sight."""

from __future__ import annotations

import gc
import weakref

from serve_apps.heap import freeze_startup_heap


class Node:
    pass


def test_garbage_is_collected_and_survivors_are_frozen():
    cycle = Node()
    cycle.itself = cycle  # only a collection frees a cycle
    gone = weakref.ref(cycle)
    del cycle
    survivor = [Node()]
    try:
        freeze_startup_heap()
        assert gone() is None, "garbage from start-up was frozen instead of collected"
        assert gc.get_freeze_count() > 0
        assert not any(obj is survivor for obj in gc.get_objects()), "a start-up object is still collected"
        after = [Node()]
        assert any(obj is after for obj in gc.get_objects()), "objects made later must still be collected"
    finally:
        gc.unfreeze()
