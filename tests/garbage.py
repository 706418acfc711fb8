"""What only the garbage collector could free: for tests that failures do not leave reference cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def left_for_the_collector() -> Iterator[list[object]]:
    """Run the block with the collector off; the list it gets then holds what only a collection frees (found by
    collecting with ``gc.DEBUG_SAVEALL``). Whatever reference counting freed is not in it."""
    gc.collect()
    gc.disable()
    found: list[object] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
