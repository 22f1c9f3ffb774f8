"""Work done a little ahead of its consumer: file reads and decodes in threads while the model embeds.

Why threads: reading, JPEG decoding and resizing release the GIL, so on a small machine they overlap with the
model's forward pass; a window bounds memory whatever the number of files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    window: int,
    name: str = "prefetch",
    initializer: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``fn(item)`` for each item, run in ``workers`` threads at most ``window`` items ahead, yielded in order.

    Closing the iterator early (a ``break``, an exception or Ctrl-C in the consumer) cancels the work not yet
    started and waits for what is running, so no thread outlives the loop. ``initializer`` runs once in each
    thread first (the ingest lowers the threads' priority below the model's).
    """
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
