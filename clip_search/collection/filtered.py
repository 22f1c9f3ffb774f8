"""Which images pass a filter, with the time each was added: a read of the table's small columns, cached.

The cache is keyed by the filter and the table version, so the pages of one query (and the sorts by date) read
the table once, and any commit, here or in another process, gives fresh answers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa

from clip_search.collection.table import table_io

CACHED_FILTERS = 16


class FilteredIds:
    """(ids, added_at in µs since the epoch), sorted oldest first (ties by id), of the rows passing a filter."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ds: Any, where: str | None) -> tuple[np.ndarray, np.ndarray]:
        if ds is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        key = (where or "", int(ds.version))
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        found = _read(ds, where)
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > CACHED_FILTERS:
                self._cache.popitem(last=False)
        return found


def _read(ds: Any, where: str | None) -> tuple[np.ndarray, np.ndarray]:
    with table_io("filtering images"):
        table = ds.to_table(columns=["id", "added_at"], filter=where)
    ids = table.column("id").to_numpy()
    times = table.column("added_at").cast(pa.int64()).to_numpy()
    order = np.lexsort((ids, times))
    ids, times = ids[order], times[order]
    if len(ids) > 1:  # two writers committing one photo at the same instant leave two rows of one id
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            keep = np.sort(first)
            ids, times = ids[keep], times[keep]
    return ids.astype(np.int64, copy=False), times.astype(np.int64, copy=False)
