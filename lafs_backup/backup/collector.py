"""Memory during phase two: Python's cycle collector leaves out the objects that live through the run, and
the C allocator gives free pages back to the system as the run goes (``trimming``).

Phase two makes a few short-lived objects per entry (tasks, results,
rows) and holds tens of thousands alive at once (the window's results,
the rows waiting for their commit, the modules and configuration loaded
before).  Python's full collections walk every live object each time, on
the reactor thread: on a first backup of 38,642 real files they took
1.1 s of its 8.8 s.  Almost nothing they find is garbage (the run's
reference cycles are a few thousand objects, and the young collections,
which go on, find most of them).  So during phase two the objects alive
at its start are frozen (never walked again) and full collections are
rare; both are put back when it ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Callable, Iterator

from ..system.memory import trim

#: Young collections between two full ones during phase two (Python's default is 10).
FULL_EVERY = 100


@contextlib.contextmanager
def rare_full_collections() -> Iterator[None]:
    """Within the block: what is alive now is frozen, and full collections come
    :data:`FULL_EVERY` young ones apart.  Afterwards the thresholds are as they
    were and the frozen objects are walked again.  Nested blocks leave it to the
    outermost one."""
    before = gc.get_threshold()
    if before[2] >= FULL_EVERY:  # (an outer block, or a setting of someone else's: theirs stands)
        yield
        return
    gc.freeze()
    gc.set_threshold(before[0], before[1], FULL_EVERY)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


#: Seconds between two trims of the C allocator's heaps during phase two (``system.memory.trim``).
TRIM_EVERY = 0.25


@contextlib.contextmanager
def trimming(every: float = TRIM_EVERY, trim_fn: Callable[[], object] = trim) -> Iterator[None]:
    """Within the block, ``trim_fn`` every ``every`` seconds, in a thread of its own: the reactor thread
    is busiest when the heaps grow most (the last packs, the index), and ``malloc_trim`` takes glibc's
    own locks, not the interpreter's.  The thread is stopped, and joined, when the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            trim_fn()

    thread = threading.Thread(target=loop, name="lafs-backup heap trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
