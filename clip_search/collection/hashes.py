"""The content hashes the collection holds, in memory, so an upload's exact-copy check rarely reads the table.

Every row carries the sha256 of its stored bytes and of the original bytes. Asking the table whether a hash is
there costs 10-30 ms once a few hundred small upload fragments have piled up between two compactions (1M rows,
212 fragments: 19 ms; ``benchmarks/bench_collection.py``), on each upload. :class:`KnownHashes` keeps the first
8 bytes of each hash as a sorted numpy array (16 bytes a row, 16 MB at 1M) plus a set of those added since: a
hash whose prefix is absent is certainly not in the collection, so only a copy (or 1 chance in ~10^19 per row)
is looked up in the table. Deleted rows may leave their prefix behind; that only costs a lookup.

Loaded in the background after the open (1M rows: ~1 s); until then :meth:`KnownHashes.may_contain` answers
True and every check reads the table, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

_HEX64 = "^[0-9a-f]{64}$"


def prefixes(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 8 bytes (uint64) of each valid lower-case hex sha256 in ``hashes`` (nulls and others skipped)."""
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    valid = pc.fill_null(pc.match_substring_regex(hashes, _HEX64), False)
    heads = pc.utf8_slice_codeunits(pc.filter(hashes, valid), 0, 16)
    if not len(heads):
        return np.zeros(0, dtype=np.uint64)
    return np.frombuffer(bytes.fromhex("".join(heads.to_pylist())), dtype=">u8").astype(np.uint64)


def _prefix(sha: str) -> int | None:
    try:
        return int(sha[:16], 16) if len(sha) == 64 else None
    except ValueError:
        return None


class KnownHashes:
    """Thread-safe: the collection adds hashes as rows arrive; uploads ask :meth:`may_contain`."""

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._lock = threading.Lock()
        self.ready = False

    def load(self, table: pa.Table) -> None:
        """Every row's ``sha256`` and ``source_sha256`` (a table read of those two columns), merged with what was
        added meanwhile."""
        started = time.perf_counter()
        found = np.unique(np.concatenate([prefixes(table.column(name)) for name in ("sha256", "source_sha256")]))
        with self._lock:
            self._sorted = found
            self.ready = True
        log.info("content hashes of %d rows in memory in %.1f s", table.num_rows, time.perf_counter() - started)

    def start_empty(self) -> None:
        """No table yet: every hash the collection will hold arrives through :meth:`add`."""
        with self._lock:
            self.ready = True

    def add(self, hashes: Iterable[str | None]) -> None:
        """Hashes of rows just committed or seen arriving from another process."""
        heads = {p for p in (_prefix(h) for h in hashes if h) if p is not None}
        with self._lock:
            self._recent.update(heads)

    def may_contain(self, *hashes: str | None) -> bool:
        """False only when none of ``hashes`` can be in the collection (so the table need not be read)."""
        if not self.ready:
            return True
        heads = [p for p in (_prefix(h) for h in hashes if h) if p is not None]
        if len(heads) < len([h for h in hashes if h]):
            return True  # a hash this filter cannot read: ask the table
        with self._lock:
            held = self._sorted
            if any(p in self._recent for p in heads):
                return True
        if not len(held):
            return False
        wanted = np.array(heads, dtype=np.uint64)
        pos = np.minimum(np.searchsorted(held, wanted), len(held) - 1)
        return bool(np.any(held[pos] == wanted))
