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
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (nq, min(k, len)), best first. Scores are exact cosines of the stored vectors;
        ids are -1 (score -inf) where fewer than k were found (IVF can find fewer). k <= 0 or an empty index gives
        (nq, 0) arrays. ``allowed`` (int64 ids) restricts the search to those ids before ranking (filters), so
        k results come back whenever k allowed ids are held."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every id held (int64), in no particular order."""

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

    FAISS's codes are a ``std::vector``, which doubles when it outgrows its capacity (a transient 2x copy). We
    reserve capacity through its SWIG ``resize``: growing to the wanted size and shrinking back leaves the
    capacity allocated (``std::vector`` never gives capacity back on shrink), so the following ``add`` calls copy
    each batch once into place. Queries, one or many, are scanned by :func:`~clip_search.collection.scan.scan_topk`
    over a zero-copy view of those codes (``faiss.rev_swig_ptr``): one pass over the vectors per batch, through
    numpy's BLAS. FAISS's own scan was ~2x slower for one query and 2-5x (1 thread) to 10x (2 threads) for a
    batch of 32 on the development machine, whose CPU the OpenBLAS 0.3.15 inside the faiss-cpu 1.15.1 wheel
    does not know: it runs its generic "Prescott" kernels (benchmarks/bench_search.py).
    """

    kind = "flat"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dimension must be positive, got {dim}")
        self.dim = dim
        self._index = faiss.IndexFlatIP(dim)
        self._ids = np.empty(0, dtype=np.int64)
        self._capacity = 0  # rows that fit without a reallocation

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def capacity(self) -> int:
        """Rows held or reserved: adding up to ``capacity - len(self)`` rows reallocates nothing."""
        return self._capacity

    def reserve(self, n: int) -> None:
        self._allocate(len(self) + max(int(n), 0), len(self))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _as_vectors(vectors, self.dim)
        ids = _as_ids(ids, len(vectors))
        if not len(ids):
            return
        size = len(self)
        need = size + len(ids)
        if need > self._capacity:  # grow by 1/8 (not 2x): one-at-a-time uploads reallocate rarely, and modestly
            self._allocate(max(need, self._capacity + max(self._capacity // 8, _MIN_GROWTH)), size)
        self._index.add(vectors)  # one memcpy into the reserved capacity
        self._ids[size:need] = ids

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
        self._index.codes.resize(keep * self._row_bytes)  # shrinking keeps the capacity
        self._index.ntotal = keep
        return len(gone)

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_vectors(queries, self.dim)
        if allowed is not None:
            return self._search_allowed(queries, k, np.isin(self._ids[: len(self)], allowed))
        k = min(int(k), len(self))
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        scores, rows = scan_topk(self._vectors(), queries, k)
        return scores, self._id_of(rows)

    def _search_allowed(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the rows ``mask`` allows. A few rows are gathered and scanned; many (over a
        quarter) are scanned in place with the others' scores masked out, which costs one plain scan."""
        count = int(mask.sum())
        k = min(int(k), count)
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        if count * 4 > len(mask):
            scores, found = scan_topk(self._vectors(), queries, k, mask=mask)
            return scores, self._id_of(found)
        rows = np.flatnonzero(mask)
        scores, found = scan_topk(self._vectors()[rows], queries, k)
        return scores, self._id_of(np.where(found >= 0, rows[found], -1))

    def ids(self) -> np.ndarray:
        return self._ids[: len(self)].copy()

    def _id_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of scan rows; -1 stays -1 (a query with no finite value finds nothing)."""
        return np.where(rows >= 0, self._ids[rows], -1)

    # -- storage ------------------------------------------------------------------------------------------------------

    @property
    def _row_bytes(self) -> int:
        return self.dim * 4

    def _allocate(self, capacity: int, live: int) -> None:
        """Make FAISS's codes hold ``capacity`` rows, of which the first ``live`` count (ids likewise)."""
        if capacity > self._capacity:
            codes = self._index.codes
            # libstdc++ allocates exactly this much when growing by more than the vector holds (else it doubles
            # the capacity, but only the pages written become resident); the new rows are zero-filled once.
            codes.resize(capacity * self._row_bytes)
            codes.resize(live * self._row_bytes)  # shrinking never frees capacity
            ids = np.empty(capacity, dtype=np.int64)
            held = min(live, len(self))
            ids[:held] = self._ids[:held]
            self._ids = ids
            self._capacity = capacity
        else:
            self._index.codes.resize(live * self._row_bytes)
        self._index.ntotal = live

    def _vectors(self) -> np.ndarray:
        """A zero-copy (len, dim) view of FAISS's codes, valid until the next add/reserve."""
        size = len(self)
        if not size:
            return np.empty((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._index.get_xb(), size * self.dim).reshape(size, self.dim)

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
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_vectors(queries, self.dim)
        k = min(int(k), len(self))
        if k <= 0 or not len(queries):
            return _empty(len(queries), max(k, 0))
        if allowed is not None:
            return self._search_allowed(queries, k, np.ascontiguousarray(allowed, dtype=np.int64))
        scores, found = self._index.search(queries, k)
        scores[found < 0] = -np.inf
        return scores, found

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Only ``allowed`` ids compete (FAISS's ID selector, checked inside the list scans). A selective filter
        can leave the probed lists short of k matches; those queries are rerun over every list, which is exact."""
        selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        scores, found = self._index.search(queries, k, params=params)
        want = min(k, len(allowed))
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
    """A ready index: "flat" with room for ``expected`` vectors, or "ivf" trained on ``sample`` (drawn at random
    from the collection by the caller) with ``nlist`` or :func:`default_nlist` of the collection size (capped so
    that the sample has 39 vectors per list)."""
    if kind == "flat":
        flat = FlatIndex(dim)
        flat.reserve(expected)
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
