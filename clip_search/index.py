"""The FAISS index: exact cosine search (``IndexFlatIP`` over L2-normalised vectors) keyed by catalog ids.

The index is derived data. It is saved next to the catalog as one self-checking file (a JSON header saying
which catalog state it describes, then the FAISS bytes, with a CRC), written atomically; a file that is
missing, damaged or describes another state is simply rebuilt or topped up from the catalog.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

_MAGIC = b"CLIPSEARCH-INDEX\x01"

# faiss 1.15's default sends batches of 20+ queries down a path ~6x slower on this kind of CPU (same results).
faiss.cvar.distance_compute_blas_threshold = 20


def set_faiss_threads(threads: int) -> None:
    """FAISS's OpenMP thread count (process-wide). One thread is fastest for single queries on few cores."""
    if threads > 0:
        faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class IndexHeader:
    """Which catalog state a saved index describes."""

    uid: str
    model: str | None
    dim: int
    count: int
    max_id: int
    deletions: int


class VectorIndex:
    """``IndexIDMap2(IndexFlatIP)``: inner product on unit vectors, FAISS ids are catalog ids."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where the index holds fewer than k vectors."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0 or k <= 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        scores, ids = self._index.search(queries, min(k, len(self)))
        return scores, ids

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)


def atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path`` (and fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: Path, *, older_than_s: float = 3600.0, recursive: bool = False) -> int:
    """Delete what :func:`atomic_write` left behind when a process died mid-write (only old ones: another
    process may be writing right now). Returns how many were removed."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary files left by an interrupted write in %s", removed, folder)
    return removed


def save_index(path: Path, index: VectorIndex, header: IndexHeader) -> None:
    payload = index.to_bytes()
    meta = dict(asdict(header), payload_len=len(payload), payload_crc32=zlib.crc32(payload))
    head = json.dumps(meta).encode()
    atomic_write(path, [_MAGIC, struct.pack("<Q", len(head)), head, payload])


def load_index(path: Path) -> tuple[VectorIndex, IndexHeader] | None:
    """The saved index and what it describes, or None (with the reason logged) if it cannot be trusted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("no saved index at %s", path)
        return None
    except OSError as exc:
        log.warning("cannot read index %s: %s", path, exc)
        return None
    try:
        buf = io.BytesIO(data)
        if buf.read(len(_MAGIC)) != _MAGIC:
            raise ValueError("not a clip-search index file")
        (head_len,) = struct.unpack("<Q", buf.read(8))
        meta = json.loads(buf.read(head_len))
        payload = buf.read()
        if len(payload) != meta.pop("payload_len") or zlib.crc32(payload) != meta.pop("payload_crc32"):
            raise ValueError("checksum mismatch (file truncated or damaged)")
        header = IndexHeader(**meta)
        index = VectorIndex.from_bytes(payload)
        if index.dim != header.dim or len(index) != header.count:
            raise ValueError("header does not match the vectors")
    except (ValueError, KeyError, TypeError, struct.error, RuntimeError) as exc:
        log.warning("saved index %s is unusable (%s); it will be rebuilt from the catalog", path, exc)
        return None
    return index, header


class RWLock:
    """Many readers (searches) at once, or one writer (an add or a rebuild); writers are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
