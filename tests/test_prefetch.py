"""ordered_map: the decode-ahead pool of ingest and evaluation keeps input order and leaves no thread behind."""

from __future__ import annotations

import threading
import time

import pytest

from clip_search.prefetch import ordered_map


def _slow_square(x: int) -> int:
    time.sleep(0.02 if x % 3 == 0 else 0.0)  # later items often finish first
    return x * x


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-prefetch")]


def test_results_come_in_input_order():
    assert list(ordered_map(_slow_square, range(50), workers=4, window=8, name="test-prefetch")) == [
        x * x for x in range(50)
    ]


def test_stopping_early_runs_no_more_work_and_leaves_no_thread():
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        time.sleep(0.01)
        return x

    results = ordered_map(work, range(1000), workers=2, window=4, name="test-prefetch")
    for x in results:
        if x == 2:
            break
    results.close()
    assert len(started) <= 8  # the window, not the 1000 items
    assert not _prefetch_threads()


def test_an_error_in_the_work_reaches_the_consumer():
    def work(x: int) -> int:
        if x == 5:
            raise ValueError("bad item 5")
        return x

    with pytest.raises(ValueError, match="bad item 5"):
        list(ordered_map(work, range(20), workers=2, window=4, name="test-prefetch"))
    assert not _prefetch_threads()
