"""The in-memory search index: top-k by cosine over L2-normalised float32 vectors, keyed by int64 image ids.

Two kinds behind one interface, :class:`VectorIndex`:

* :class:`FlatIndex` scans every vector: exact, and fast enough up to a few hundred thousand vectors. FAISS's
  ``IndexFlatIP`` owns the only copy of the vectors; room for them is reserved up front (:meth:`~VectorIndex.reserve`)
  and otherwise grown by 1/8, so filling it from a stream of batches never holds the vectors twice.
* :class:`IVFIndex` (``IndexIVFFlat``) sends each vector to the nearest of ``nlist`` k-means centroids and a query
  scans only the ``nprobe`` nearest lists. IVFFlat keeps the raw vectors, so every score it returns is the exact
  cosine; only recall is approximate. New vectors go to their list without retraining; once the collection has
  grown a few-fold since training (:meth:`IVFIndex.needs_retrain`) the caller builds and trains a new one.

Threads: :meth:`~VectorIndex.search` only reads and may run on many threads at once (FAISS and numpy release the
GIL). ``add``, ``remove``, ``reserve``, ``train`` and setting ``nprobe`` change memory that a running search reads
(``add`` may move the whole array), so the caller must serialise them against searches, with a readers-writer lock
for instance. This module has no lock of its own: the collection already holds one around its table and index.

Files: :meth:`~VectorIndex.save` writes one self-checking file atomically: a magic string, a JSON header (kind, dim,
count, nlist, nprobe, trained_on), the payload (flat: the ids then the raw vectors; IVF: FAISS's own serialisation,
streamed) and a footer holding the payload's length and a CRC32 of header and payload. :meth:`~VectorIndex.load`
streams the payload straight into the index's own storage, so a restart holds no second copy and never retrains;
a truncated, damaged or foreign file raises ValueError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from clip_search.collection import bf16_scan
from clip_search.collection.bf16_scan import Bf16Copy
from clip_search.collection.cells import MIN_ROWS as CELLS_MIN_ROWS
from clip_search.collection.cells import Cells
from clip_search.collection.scan import scan_topk
from clip_search.faisslib import faiss
from clip_search.fileio import atomic_write_with

log = logging.getLogger(__name__)

# faiss 1.15's default sends batches of 20+ queries down a path ~6x slower on this kind of CPU (same results);
# it still matters for IVF's coarse quantizer (the flat index scans with clip_search.collection.scan).
faiss.cvar.distance_compute_blas_threshold = 20

_MAGIC = b"CLIPSEARCH-VECTORS\x01"
_PREFIX = struct.Struct("<I")  # header length
_FOOTER = struct.Struct("<QI8s")  # payload length, CRC32 of header + payload, end marker
_END = b"CSVEND01"
_MAX_HEADER = 1 << 16
_CHUNK = 1 << 24  # bytes per read/write call when streaming an array to or from a file
_MIN_GROWTH = 1024  # rows a flat index grows by at least, so one-at-a-time uploads rarely reallocate


def default_nlist(n: int) -> int:
    """How many IVF lists for a collection of ``n`` vectors: ~4*sqrt(n), the usual rule (lists of ~sqrt(n)/4 vectors
    balance the centroid scan against the list scans), but never more than n // 39, because FAISS's k-means wants at
    least 39 training points per centroid; and at least 1. 1,000,000 -> 4000; 20,000 -> 512; 100 -> 2."""
    return max(1, min(round(4 * math.sqrt(max(n, 0))), n // 39))


class VectorIndex(ABC):
    """Top-k by inner product over L2-normalised float32 vectors, keyed by int64 image ids.

    Searches may run concurrently; writers (add, remove, reserve, train) must be serialised against them by the
    caller (see the module docstring).
    """

    kind: ClassVar[str]
    dim: int

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (float32 (n, dim)) under new ids (int64 (n,)); ids are not checked for duplicates."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids; returns how many vectors went. Unknown ids are ignored."""

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (nq, min(k, len)), best first. Scores are exact cosines of the stored vectors;
        ids are -1 (score -inf) where fewer than k were found (IVF can find fewer). k <= 0 or an empty index gives
        (nq, 0) arrays. ``allowed`` (int64 ids) restricts the search to those ids before ranking (filters), so
        k results come back whenever k allowed ids are held; ``blocked`` (sorted int64 ids) leaves those out
        instead (rows a viewer may not see: flat over-fetches and drops them, IVF skips them in its list scans,
        with FAISS's ID selector). Give one of them at most."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every id held (int64), in no particular order."""

    def nearest(self, query: np.ndarray, *, blocked: np.ndarray | None = None) -> tuple[int, float] | None:
        """(id, cosine) of the vector closest to one query, leaving ``blocked`` out, or None: the near-duplicate
        check of an upload. May be approximate (IVF; the flat index's cells), never a wrong score."""
        scores, found = self.search(query, 1, blocked=blocked)
        if not found.shape[1] or found[0, 0] < 0:
            return None
        return int(found[0, 0]), float(scores[0, 0])

    @abstractmethod
    def reserve(self, n: int) -> None:
        """Make room for ``n`` more vectors, so adding them reallocates nothing (a no-op where meaningless)."""

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
        path = Path(path)
        started = time.perf_counter()
        header = json.dumps({"format": 1, **self._header()}, sort_keys=True).encode()

        def body(fh: BinaryIO) -> None:
            fh.write(_MAGIC + _PREFIX.pack(len(header)) + header)
            out = _Checksummed(fh, crc=zlib.crc32(header))
            self._write_payload(out)
            fh.write(_FOOTER.pack(out.length, out.crc, _END))

        atomic_write_with(path, body)
        log.info("saved %s index of %d vectors to %s in %.2f s", self.kind, len(self), path, _since(started))

    @staticmethod
    def load(path: Path) -> VectorIndex:
        """Read an index written by :meth:`save`; ValueError, saying why, for a damaged or foreign file."""
        path = Path(path)
        started = time.perf_counter()
        with path.open("rb") as fh:
            header, reader, crc = _open_payload(fh, path)
            kinds: dict[str, type[VectorIndex]] = {"flat": FlatIndex, "ivf": IVFIndex}
            try:
                index = kinds[header["kind"]]._read_payload(header, reader)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            except (RuntimeError, MemoryError, EOFError, OverflowError) as exc:  # FAISS's parser on bad bytes
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                raise ValueError(f"{path}: damaged vector index file ({reason})") from None
            if reader.remaining or reader.crc != crc:
                raise ValueError(f"{path}: damaged vector index file (checksum mismatch)")
        log.info("loaded %s index of %d vectors from %s in %.2f s", index.kind, len(index), path, _since(started))
        return index

    # -- what subclasses provide for save/load ----------------------------------------------------------------------

    @abstractmethod
    def _header(self) -> dict[str, Any]: ...

    @abstractmethod
    def _write_payload(self, out: _Checksummed) -> None: ...

    @classmethod
    @abstractmethod
    def _read_payload(cls, header: dict[str, Any], reader: _Checksummed) -> VectorIndex: ...


class FlatIndex(VectorIndex):
    """Exact search: ``IndexFlatIP`` holding the vectors plus a numpy array of their ids (row i -> id).

    The vectors live in one numpy array with room to grow (``capacity`` rows), and FAISS's codes are pointed at
    its first ``len`` rows (a view, not a copy), so FAISS's own search and every other FAISS call see them. Why not
    FAISS's own ``std::vector``: reserving room in it zero-fills every byte first (2.9 s for 1M x 768 here, on top
    of the copy), where numpy's untouched allocation (with transparent huge pages) costs only the first write.
    Rows are written by numpy, never by FAISS's ``add``, which cannot grow a view. Queries, one or many, are
    scanned by :func:`~clip_search.collection.scan.scan_topk` over the same array: one pass over the vectors per
    batch, through numpy's BLAS. FAISS's own scan was ~2x slower for one query and 2-5x (1 thread) to 10x (2
    threads) for a batch of 32 on the development machine, whose CPU the OpenBLAS 0.3.15 inside the faiss-cpu
    1.15.1 wheel does not know: it runs its generic "Prescott" kernels (benchmarks/bench_search.py). A batch goes
    through a bfloat16 copy of the rows where that is faster (:mod:`~clip_search.collection.bf16_scan`: the same
    results; the copy is made by the first batch over :data:`~clip_search.collection.bf16_scan.MIN_ROWS` rows).
    """

    kind = "flat"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dimension must be positive, got {dim}")
        self.dim = dim
        self._index = faiss.IndexFlatIP(dim)
        self._rows = np.empty((0, dim), dtype=np.float32)  # capacity rows; the first len(self) hold vectors
        self._ids = np.empty(0, dtype=np.int64)
        self._cells: Cells | None = None  # for the near-duplicate check (see clip_search.collection.cells)
        self._removals = 0  # bumped by every removal: a cells build over the rows before it is stale
        self._bf16: Bf16Copy | None = None  # made by the first batch that gains from it (see bf16_scan)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def capacity(self) -> int:
        """Rows held or reserved: adding up to ``capacity - len(self)`` rows reallocates nothing."""
        return len(self._rows)

    def reserve(self, n: int) -> None:
        self._allocate(len(self) + max(int(n), 0), len(self))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _as_vectors(vectors, self.dim)
        ids = _as_ids(ids, len(vectors))
        if not len(ids):
            return
        size = len(self)
        need = size + len(ids)
        if need > self.capacity:  # grow by 1/8 (not 2x): one-at-a-time uploads reallocate rarely, and modestly
            self._allocate(max(need, self.capacity + max(self.capacity // 8, _MIN_GROWTH)), size)
        self._rows[size:need] = vectors  # one copy into the reserved room
        self._ids[size:need] = ids
        self._show(need)
        if self._cells is not None:
            self._cells.extend(self._cells.assign(vectors))

    def remove(self, ids: np.ndarray) -> int:
        """Fill the holes with the last rows (a few rows move, not the whole array): row order is not kept."""
        size = len(self)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not size or not len(ids):
            return 0
        gone = np.flatnonzero(np.isin(self._ids[:size], ids))
        if not len(gone):
            return 0
        keep = size - len(gone)
        holes = gone[gone < keep]
        movers = np.setdiff1d(np.arange(keep, size), gone, assume_unique=True)
        if len(holes):
            vectors = self._vectors()
            vectors[holes] = vectors[movers]
            self._ids[holes] = self._ids[movers]
        self._removals += 1
        if self._cells is not None:
            self._cells.move(holes, movers, keep)
        if self._bf16 is not None:
            self._bf16.move(holes, movers, keep)
        self._show(keep)
        return len(gone)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_vectors(queries, self.dim)
        if allowed is not None:
            return self._search_allowed(queries, k, np.isin(self._ids[: len(self)], allowed))
        if blocked is not None and len(blocked):
            return self._search_without(queries, k, blocked)
        k = min(int(k), len(self))
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        scores, rows = self._scan(queries, k)
        return scores, self._id_of(rows)

    def _scan(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One query in float32; a batch through the bfloat16 copy where that is faster (same results)."""
        if len(queries) > 1 and len(self) >= bf16_scan.MIN_ROWS and bf16_scan.batches_use_bf16():
            if self._bf16 is None:
                self._bf16 = bf16_scan.Bf16Copy(self.dim)
                log.info(
                    "batches scan a bfloat16 copy of the %d vectors (%.0f MB more)",
                    len(self),
                    len(self) * self.dim / 2**19,
                )
            return bf16_scan.scan_topk_bf16(self._bf16, self._vectors(), queries, k, mask=mask)
        return scan_topk(self._vectors(), queries, k, mask=mask)

    def _search_without(self, queries: np.ndarray, k: int, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k leaving ``blocked`` out: the top k + len(blocked) with them dropped. A scan's partition costs
        the same for any k, so this beats masking every row (10k blocked of 100k x 768: as fast as a plain query,
        where the mask took 2-3x, measured on 2 cores)."""
        k = min(int(k), len(self))
        scores, found = self.search(queries, k + len(blocked))
        keep = (found >= 0) & ~member(found.reshape(-1), blocked).reshape(found.shape)
        out_scores, out_ids = np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1)
        for row in range(len(queries)):
            chosen = np.flatnonzero(keep[row])[:k]
            out_scores[row, : len(chosen)], out_ids[row, : len(chosen)] = scores[row, chosen], found[row, chosen]
        return out_scores, out_ids

    def _search_allowed(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the rows ``mask`` allows. A few rows are gathered and scanned; many (over a
        quarter) are scanned in place with the others' scores masked out, which costs one plain scan."""
        count = int(mask.sum())
        k = min(int(k), count)
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        if count * 4 > len(mask):
            scores, found = self._scan(queries, k, mask)
            return scores, self._id_of(found)
        rows = np.flatnonzero(mask)
        scores, found = scan_topk(self._vectors()[rows], queries, k)
        return scores, self._id_of(np.where(found >= 0, rows[found], -1))

    def ids(self) -> np.ndarray:
        return self._ids[: len(self)].copy()

    # -- near duplicates ------------------------------------------------------------------------------------------

    def nearest(self, query: np.ndarray, *, blocked: np.ndarray | None = None) -> tuple[int, float] | None:
        """Through the cells once they are built (the rows of a few cells, scored exactly), else one exact scan."""
        cells = self._cells
        if cells is None or len(self) < CELLS_MIN_ROWS:
            return super().nearest(query, blocked=blocked)
        vector = _as_vectors(query, self.dim)[0]
        rows = cells.candidates(vector)
        if blocked is not None and len(blocked):
            rows = rows[~member(self._ids[rows], blocked)]
        if not len(rows):
            return None
        scores = self._rows[rows] @ vector
        best = int(np.argmax(scores))
        return int(self._ids[rows[best]]), float(scores[best])

    @property
    def cells_trained_on(self) -> int:
        """Rows the near-duplicate cells were built over (0: none yet)."""
        return self._cells.trained_on if self._cells is not None else 0

    def cells_snapshot(self) -> tuple[np.ndarray, int]:
        """(the rows now held, the removal count) for :meth:`install_cells`: build the cells from the rows
        without holding any lock, then install them under the writers' lock."""
        return self._vectors(), self._removals

    def install_cells(self, cells: Cells, removals: int) -> bool:
        """Adopt ``cells`` built from :meth:`cells_snapshot` and label the rows added since; False (nothing changes)
        when a removal has moved rows in the meantime."""
        if removals != self._removals or cells.size > len(self):
            return False
        cells.extend(cells.assign(self._rows[cells.size : len(self)]))
        self._cells = cells
        return True

    def _id_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of scan rows; -1 stays -1 (a query with no finite value finds nothing)."""
        return np.where(rows >= 0, self._ids[rows], -1)

    # -- storage ------------------------------------------------------------------------------------------------------

    @property
    def _row_bytes(self) -> int:
        return self.dim * 4

    def _allocate(self, capacity: int, live: int) -> None:
        """Room for ``capacity`` rows, of which the first ``live`` count (ids likewise). A new array is only
        allocated here: its pages cost nothing until a row is written to them."""
        if capacity > self.capacity:
            held = min(live, len(self))
            rows = np.empty((capacity, self.dim), dtype=np.float32)
            rows[:held] = self._rows[:held]
            ids = np.empty(capacity, dtype=np.int64)
            ids[:held] = self._ids[:held]
            self._rows, self._ids = rows, ids
        self._show(live)

    def _show(self, size: int) -> None:
        """Point FAISS's codes at the first ``size`` rows (no copy): FAISS searches, counts and serialises them."""
        codes = self._index.codes
        if self.capacity:
            start, nbytes = faiss.swig_ptr(self._rows.reshape(-1).view(np.uint8)), size * self._row_bytes
            codes.is_owned, codes.view_data, codes.view_size, codes.c_ptr, codes.c_size = (
                False,
                start,
                nbytes,
                start,
                nbytes,
            )
        self._index.ntotal = size

    def _vectors(self) -> np.ndarray:
        """A zero-copy (len, dim) view of the vectors, valid until the next add/reserve."""
        return self._rows[: len(self)]

    def _header(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "count": len(self)}

    def _write_payload(self, out: _Checksummed) -> None:
        out.write_array(self._ids[: len(self)])
        out.write_array(self._vectors())

    @classmethod
    def _read_payload(cls, header: dict[str, Any], reader: _Checksummed) -> FlatIndex:
        dim, count = header["dim"], header["count"]
        if reader.remaining != count * (8 + 4 * dim):
            raise ValueError(f"damaged vector index file: {reader.remaining} bytes for {count} x {dim} vectors")
        index = cls(dim)
        # Headroom so the first uploads after a restart do not reallocate; rows land straight in FAISS's storage.
        index._allocate(count + max(count // 8, _MIN_GROWTH), count)
        reader.read_into(index._ids[:count])
        reader.read_into(index._vectors())
        return index


class IVFIndex(VectorIndex):
    """Approximate search: ``IndexIVFFlat`` over an ``IndexFlatIP`` coarse quantizer, inner product metric.

    Train once on a random sample of the collection (at least 39 vectors per list; FAISS uses at most 256 per
    list), then add: new vectors join their nearest list without retraining. ``nprobe`` trades speed for recall
    and may be changed at any time (outside a search).
    """

    kind = "ivf"

    def __init__(self, dim: int, *, nlist: int, nprobe: int) -> None:
        if dim < 1 or nlist < 1:
            raise ValueError(f"dimension and nlist must be positive, got dim={dim}, nlist={nlist}")
        self.dim = dim
        self._quantizer = faiss.IndexFlatIP(dim)  # referenced here too: the IVF index does not own it
        self._index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.nprobe = nprobe
        self.trained_on = 0

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self._index.nlist)

    @property
    def nprobe(self) -> int:
        """Lists scanned per query: more is slower and finds more of the true top-k."""
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"nprobe must be at least 1, got {value}")
        self._index.nprobe = int(value)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, sample: np.ndarray) -> None:
        """Learn the ``nlist`` centroids from ``sample``; records ``trained_on = len(sample)`` (``make_index``
        records the collection size instead when it is given). An index trains once: to retrain, build a new one."""
        sample = _as_vectors(sample, self.dim)
        if self.is_trained:
            raise ValueError("this IVF index is already trained: build a new IVFIndex to retrain")
        if len(sample) < self.nlist:
            raise ValueError(f"{len(sample)} training vectors for {self.nlist} lists: need at least 39 per list")
        if len(sample) < 39 * self.nlist:
            log.warning(
                "IVF training on %d vectors for %d lists (< 39 per list): centroids may be poor",
                len(sample),
                self.nlist,
            )
        started = time.perf_counter()
        self._index.train(sample)
        self.trained_on = len(sample)
        log.info("trained IVF (%d lists) on %d vectors in %.1f s", self.nlist, len(sample), _since(started))

    def needs_retrain(self, n: int, *, growth: float = 4.0) -> bool:
        """True once a collection of ``n`` vectors is ``growth`` times what the centroids were trained for (the
        lists get long and unbalanced, so speed and recall drift); always True before training."""
        return not self.is_trained or n >= growth * max(self.trained_on, 1)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _as_vectors(vectors, self.dim)
        ids = _as_ids(ids, len(vectors))
        if not len(ids):
            return
        if not self.is_trained:
            raise ValueError("train the IVF index before adding vectors to it")
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids) or not len(self):
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_vectors(queries, self.dim)
        k = min(int(k), len(self))
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            return self._search_selected(queries, k, selector, len(allowed))
        if blocked is not None and len(blocked):
            blocked = np.ascontiguousarray(blocked, dtype=np.int64)
            batch = faiss.IDSelectorBatch(len(blocked), faiss.swig_ptr(blocked))  # alive here, as NOT's target
            selector = faiss.IDSelectorNot(batch)
            return self._search_selected(queries, k, selector, len(self) - len(blocked))
        scores, found = self._index.search(queries, k)
        scores[found < 0] = -np.inf
        return scores, found

    def _search_selected(
        self, queries: np.ndarray, k: int, selector: Any, available: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Only the ids ``selector`` picks (``available`` of them) compete: FAISS's ID selector, checked inside the
        list scans. A selective filter can leave the probed lists short of k matches; those queries are rerun
        over every list, which is exact."""
        params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        scores, found = self._index.search(queries, k, params=params)
        want = min(k, available)
        short = np.flatnonzero((found >= 0).sum(axis=1) < want)
        if len(short) and self.nprobe < self.nlist:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nlist)
            scores[short], found[short] = self._index.search(queries[short], k, params=params)
        scores[found < 0] = -np.inf
        return scores, found

    def ids(self) -> np.ndarray:
        lists = self._index.invlists
        parts = [np.empty(0, dtype=np.int64)]
        for list_no in range(self.nlist):
            size = lists.list_size(list_no)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
        return np.concatenate(parts).astype(np.int64, copy=False)

    def reserve(self, n: int) -> None:
        """A no-op: each IVF list is its own small array, grown separately (no whole-index reallocation)."""

    def _header(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "trained_on": self.trained_on,
        }

    def _write_payload(self, out: _Checksummed) -> None:
        faiss.write_index(self._index, faiss.PyCallbackIOWriter(out.write, _CHUNK))

    @classmethod
    def _read_payload(cls, header: dict[str, Any], reader: _Checksummed) -> IVFIndex:
        index = faiss.read_index(faiss.PyCallbackIOReader(reader.read, _CHUNK))
        if not (
            isinstance(index, faiss.IndexIVFFlat)
            and index.d == header["dim"]
            and index.nlist == header.get("nlist")
            and index.metric_type == faiss.METRIC_INNER_PRODUCT
            and index.ntotal == header["count"]
        ):
            raise ValueError(
                f"damaged vector index file: the FAISS payload ({type(index).__name__}) is not the "
                "IVF index its header describes"
            )
        ivf = cls.__new__(cls)
        ivf.dim = int(index.d)
        ivf._index = index  # owns its quantizer (read_index sets own_fields)
        ivf._quantizer = faiss.downcast_index(index.quantizer)
        ivf.nprobe = int(header.get("nprobe") or 1)
        ivf.trained_on = int(header.get("trained_on") or 0)
        return ivf


def make_index(
    kind: str,
    dim: int,
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    sample: np.ndarray | None = None,
    expected: int = 0,
) -> VectorIndex:
    """A ready index: "flat" with room for ``expected`` vectors and 1/8 more (untouched room costs no memory, and
    the uploads after an open then never copy the whole array), or "ivf" trained on ``sample`` (drawn at random
    from the collection by the caller) with ``nlist`` or :func:`default_nlist` of the collection size (capped so
    that the sample has 39 vectors per list)."""
    if kind == "flat":
        flat = FlatIndex(dim)
        if expected > 0:
            flat.reserve(expected + max(expected // 8, _MIN_GROWTH))
        return flat
    if kind != "ivf":
        raise ValueError(f"unknown index kind {kind!r}: use 'flat' or 'ivf'")
    if sample is None or not len(sample):
        raise ValueError("an IVF index needs a training sample of the collection's vectors")
    lists = nlist or min(default_nlist(expected or len(sample)), max(1, len(sample) // 39))
    ivf = IVFIndex(dim, nlist=lists, nprobe=nprobe)
    ivf.train(sample)
    ivf.trained_on = max(expected, len(sample))
    return ivf


# -- helpers -----------------------------------------------------------------------------------------------------------


def _as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """C-contiguous float32 (n, dim), without a copy when it already is one; one vector may come as (dim,)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected float32 vectors of shape (n, {dim}), got {np.shape(vectors)}")
    return array


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    array = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if len(array) != n:
        raise ValueError(f"{len(array)} ids for {n} vectors")
    return array


def _empty(nq: int, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, k), dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Mask of ``ids`` found in ``sorted_ids`` (binary search: O(n log m), for a few ids among many)."""
    if not len(sorted_ids) or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def _since(started: float) -> float:
    return time.perf_counter() - started


class _Checksummed:
    """A file seen through a running CRC32 and byte count, for FAISS's IO callbacks and our own arrays."""

    def __init__(self, fh: BinaryIO, *, crc: int = 0, limit: int | None = None) -> None:
        self._fh = fh
        self.crc = crc
        self.length = 0
        self._limit = limit

    @property
    def remaining(self) -> int:
        return (self._limit or 0) - self.length

    def write(self, data: bytes | memoryview) -> int:
        self._fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        return len(data)

    def write_array(self, array: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(array)).cast("B")
        for start in range(0, len(view), _CHUNK):
            self.write(view[start : start + _CHUNK])

    def read(self, size: int) -> bytes:
        data = self._fh.read(max(0, min(size, self.remaining)))
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        return data

    def read_into(self, array: np.ndarray) -> None:
        """Fill a C-contiguous array straight from the file (no intermediate bytes object)."""
        view = memoryview(array).cast("B")
        if len(view) > self.remaining:
            raise ValueError("damaged vector index file: payload shorter than its header says")
        done = 0
        while done < len(view):
            got = self._fh.readinto(view[done : done + _CHUNK])
            if not got:
                raise ValueError("damaged vector index file: it ends early")
            self.crc = zlib.crc32(view[done : done + got], self.crc)
            done += got
        self.length += done


def _open_payload(fh: BinaryIO, path: Path) -> tuple[dict[str, Any], _Checksummed, int]:
    """Check magic, header and footer; leave ``fh`` at the payload. Returns (header, payload reader, CRC)."""
    size = os.fstat(fh.fileno()).st_size
    prefix = fh.read(len(_MAGIC) + _PREFIX.size)
    if len(prefix) < len(_MAGIC) + _PREFIX.size or not prefix.startswith(_MAGIC):
        raise ValueError(f"{path} is not a clip-search vector index file")
    (header_len,) = _PREFIX.unpack(prefix[len(_MAGIC) :])
    start = len(prefix) + header_len
    if header_len > _MAX_HEADER or start + _FOOTER.size > size:
        raise ValueError(f"{path}: truncated or damaged vector index file")
    header_bytes = fh.read(header_len)
    fh.seek(size - _FOOTER.size)
    payload_len, crc, end = _FOOTER.unpack(fh.read(_FOOTER.size))
    if end != _END or payload_len != size - start - _FOOTER.size:
        raise ValueError(f"{path}: truncated or damaged vector index file (its end marker or length is wrong)")
    try:
        header = json.loads(header_bytes)
        header["dim"], header["count"] = int(header["dim"]), int(header["count"])
        valid = header.get("format") == 1 and header.get("kind") in ("flat", "ivf")
        valid = valid and header["dim"] > 0 and header["count"] >= 0
    except (ValueError, TypeError, KeyError, AttributeError):
        valid = False
    if not valid:
        raise ValueError(f"{path}: damaged vector index file (unreadable header)")
    fh.seek(start)
    return header, _Checksummed(fh, crc=zlib.crc32(header_bytes), limit=payload_len), crc
