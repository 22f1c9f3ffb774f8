"""What runs beside the model during an ingest: committing the last batch, and threads that yield to the model.

On a small CPU the model's forward pass is the ingest's work and everything else (reading, decoding, resizing,
storing, committing) is overhead. The overhead runs on helper threads at a lower scheduling priority, so the
model's threads get the cores whenever they want them and the helpers use what the model leaves (between its
operators, while it waits on memory); the queues between them are short, so a starved helper only ever makes
the model wait for as long as the queued work lasts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from clip_search.engine import AddResult, PreparedImage, SearchEngine

log = logging.getLogger(__name__)

HELPER_NICE = 10  # how much lower than the model the helper threads run (Linux nice steps; 0 = the same)


def lower_thread_priority(steps: int | None = None) -> None:
    """Lower the calling thread's priority by ``steps`` nice levels (Linux, where each thread has its own; a
    no-op elsewhere, where the call would renice the whole process)."""
    steps = HELPER_NICE if steps is None else steps
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + steps)
    except OSError as exc:  # a sandbox may refuse it: the ingest still works, only less smoothly
        log.debug("could not lower a helper thread's priority: %s", exc)


class BackgroundCommits:
    """Store and commit each embedded batch on a helper thread while the model embeds the next one.

    Batches commit one at a time, in order, each on its own (an interrupted run keeps every batch it finished),
    and at most one waits, so the model never runs more than one batch ahead of the collection.
    ``on_committed(results)`` runs in the caller's thread once a batch is in.
    """

    def __init__(self, engine: SearchEngine, on_committed: Callable[[list[AddResult]], None]) -> None:
        self._engine = engine
        self._on_committed = on_committed
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="commit", initializer=lower_thread_priority)
        self._pending: Future[list[AddResult]] | None = None

    def submit(self, items: Sequence[PreparedImage], vectors: np.ndarray) -> None:
        """Commit ``items`` with their ``vectors`` once the batch before them is in."""
        self.wait()
        self._pending = self._pool.submit(self._engine.commit, list(items), vectors)

    def wait(self) -> None:
        """Until the batch in flight is committed (its error, if any, is raised here)."""
        if self._pending is None:
            return
        results = self._pending.result()  # interrupted here (Ctrl-C), the batch stays pending for close()
        self._pending = None
        self._on_committed(results)

    def close(self) -> None:
        """Finish the batch in flight, then stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
