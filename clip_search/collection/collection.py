"""A collection: the Lance table (the record) plus the in-memory vector index derived from it, kept in step.

Adding commits rows to the table first (the commit point, outside any lock) and then appends them to the index
under a short write lock, so a search never waits behind a commit, a store write or a save. Every few seconds
(``collection.refresh_s``, in a background thread and at the next search after that) the collection moves to the
table's newest version and applies what other processes (replicas, the CLI, bulk jobs) added or deleted,
reading only the fragments that changed. Nothing is written to disk per upload but the table row; an IVF index
is cached on local disk after it is trained, so a restart does not retrain.

Every read takes a :class:`~clip_search.collection.visibility.Viewer` (public by default): private and held rows
are kept in a small in-memory set, refreshed with the rest, and the ones the viewer may not see never compete in a
search, a browse, a count or a lookup by id.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_search.collection.cells import MIN_ROWS as CELLS_MIN_ROWS
from clip_search.collection.cells import Cells
from clip_search.collection.filtered import FilteredIds
from clip_search.collection.hashes import KnownHashes
from clip_search.collection.records import ImageRecord, NewImage
from clip_search.collection.sync import Changes, FragmentTracker, iter_vectors
from clip_search.collection.table import CollectionTable
from clip_search.collection.vector_index import (
    FlatIndex,
    IVFIndex,
    VectorIndex,
    default_nlist,
    make_index,
    member,
)
from clip_search.collection.visibility import (
    HELD,
    OPERATOR,
    PRIVATE,
    PUBLIC_VIEWER,
    Hidden,
    HiddenRows,
    Viewer,
    same_owner_sql,
)
from clip_search.errors import ClipSearchError, StorageError
from clip_search.fileio import remove_stale_temp_files
from clip_search.memory import release_free_memory

log = logging.getLogger(__name__)

IVF_MIN_ROWS = 1_000  # below this an exact scan takes microseconds: the collection stays flat
TRAIN_SAMPLE = 65_536
ROW_CACHE_SIZE = 20_000
TRIM_EVERY = 131_072  # rows loaded between hand-backs of freed read buffers (see clip_search.memory)


class RWLock:
    """Many readers (searches) at once, or one writer (a short index update); writers are not starved."""

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


def _in(ids: np.ndarray, known: set[int]) -> np.ndarray:
    listed = ids.tolist()
    if known.isdisjoint(listed):  # the usual batch (a first load, new rows): one C-level pass, no mask to build
        return np.zeros(len(ids), dtype=bool)
    return np.fromiter(map(known.__contains__, listed), dtype=bool, count=len(ids))


def _unseen(ids: np.ndarray, known: set[int]) -> np.ndarray:
    """Mask of the ids to add: not held yet, and each only once (two writers committing the same photo in the
    same instant leave two rows of one id)."""
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids, return_index=True)[1]] = True
    return first & ~_in(ids, known)


def ids_none() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


class Collection:
    """Thread-safe: many concurrent searches; adds, deletes and refreshes serialised."""

    def __init__(
        self,
        table: CollectionTable,
        *,
        model: str,
        model_id: str,
        index_kind: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        retrain_growth: float = 4.0,
        cache_dir: Path | None = None,
        refresh_s: float = 2.0,
        optimize_every: int = 0,
        keep_versions_s: float = 3600.0,
        background: bool = True,
    ) -> None:
        self.table = table
        self.model = model
        self.model_id = model_id
        self.index_kind = index_kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.retrain_growth = retrain_growth
        self.cache_dir = cache_dir
        self.refresh_s = refresh_s
        self.optimize_every = optimize_every
        self.keep_versions_s = keep_versions_s
        self._commits = 0
        self._housekeeping: threading.Thread | None = None
        self._cells_thread: threading.Thread | None = None
        self._hashes_thread: threading.Thread | None = None
        self._hashes = KnownHashes()
        self._background = background
        table.check_model(model, model_id)
        if cache_dir is not None:
            remove_stale_temp_files(cache_dir)
        self._lock = RWLock()
        self._refresh_lock = threading.Lock()  # one refresh at a time; searches never take it
        self._tracker = FragmentTracker()
        self._index: VectorIndex | None = None
        self._known: set[int] = set()
        self._pending: dict[int, int] = {}  # id -> version of our own commit, until seen in a fragment
        self._pending_hidden: dict[int, Hidden] = {}  # the hidden ones among them
        self._hidden = HiddenRows()
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.RLock()  # check-then-commit of this process's adds; a first load
        self._ds = None
        self._checked = 0.0
        self._row_cache: OrderedDict[int, ImageRecord] = OrderedDict()
        self._filtered = FilteredIds()
        self._cache_lock = threading.Lock()
        self._stop = threading.Event()
        self._load()
        self._thread: threading.Thread | None = None
        if background and refresh_s > 0:
            self._thread = threading.Thread(target=self._refresh_loop, name="collection-refresh", daemon=True)
            self._thread.start()

    # -- loading ----------------------------------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        ds = self.table.latest()
        self._ds = ds
        self._checked = time.monotonic()
        if ds is None:
            self._hashes.start_empty()
            return
        n = ds.count_rows()
        index = self._cached_ivf(n) if self._wants_ivf(n) else None
        if index is not None:
            self._index = index
            self._known = set(index.ids().tolist())
            self._apply(self._tracker.diff(ds, known=self._is_known, pending=ids_none()))
        else:
            self._index, self._tracker, self._known, self._hidden = self._build(ds, n)
            self._save_ivf()
        self._maybe_build_cells()
        self._load_hashes_later()
        log.info(
            "opened collection %s: %d images (%s index) in %.2f s",
            self.table.uri,
            len(self),
            self._index.kind,
            time.perf_counter() - started,
        )

    def _build(self, ds: Any, n: int) -> tuple[VectorIndex, FragmentTracker, set[int], HiddenRows]:
        """A new index of every row of ``ds``, streamed batch by batch (FAISS holds the only copy of the vectors)."""
        index = self._new_index(ds, n)
        tracker = FragmentTracker()
        known: set[int] = set()
        bar = tqdm(total=n, desc="loading vectors", unit="img", disable=n < 200_000)

        def take(ids: np.ndarray, vectors: np.ndarray) -> None:
            new = _unseen(ids, known)
            if not new.all():  # a boolean index copies the batch: only when some rows are repeats
                ids, vectors = ids[new], vectors[new]
            index.add(ids, vectors)
            known.update(ids.tolist())
            bar.update(len(ids))
            if len(known) // TRIM_EVERY != (len(known) - int(new.sum())) // TRIM_EVERY:
                release_free_memory()  # the read buffers of the batches already copied into the index

        changes = tracker.diff(ds, known=lambda ids: np.zeros(len(ids), bool), pending=ids_none(), on_vectors=take)
        tracker.apply(changes)
        bar.close()
        release_free_memory()
        return index, tracker, known, changes.hidden

    def _wants_ivf(self, n: int) -> bool:
        return self.index_kind == "ivf" and n >= IVF_MIN_ROWS

    def _new_index(self, ds: Any, n: int) -> VectorIndex:
        dim = self.table.dim
        if not self._wants_ivf(n):
            return make_index("flat", dim, expected=n)
        nlist = self.nlist or default_nlist(n)
        sample = ds.sample(min(n, max(TRAIN_SAMPLE, 39 * nlist)), columns=["vector"]).column("vector")
        vectors = sample.combine_chunks().values.to_numpy().reshape(-1, dim)
        started = time.perf_counter()
        index = make_index("ivf", dim, nlist=nlist, nprobe=self.nprobe, sample=vectors, expected=n)
        log.info("trained IVF (%d lists) on %d vectors in %.1f s", nlist, len(vectors), time.perf_counter() - started)
        return index

    def _ivf_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{self.table.uri}|{self.table.name}|{self.model}".encode()).hexdigest()[:16]
        return self.cache_dir / f"ivf-{digest}.faiss"

    def _cached_ivf(self, n: int) -> VectorIndex | None:
        path = self._ivf_path()
        if path is None or not path.exists():
            return None
        try:
            index = VectorIndex.load(path)
        except (ValueError, OSError) as exc:
            log.warning("cached IVF index %s is unusable (%s); retraining", path, exc)
            return None
        if not isinstance(index, IVFIndex) or index.dim != self.table.dim:
            return None
        if index.needs_retrain(n, growth=self.retrain_growth):
            log.info("the collection grew %d -> %d since the IVF was trained: retraining", index.trained_on, n)
            return None
        index.nprobe = self.nprobe
        return index

    def _save_ivf(self) -> None:
        path = self._ivf_path()
        if path is None or not isinstance(self._index, IVFIndex):
            return
        with self._lock.read():
            self._index.save(path)

    # -- following other writers ------------------------------------------------------------------------------

    def _is_known(self, ids: np.ndarray) -> np.ndarray:
        return _in(ids, self._known)

    def refresh(self) -> Changes | None:
        """Move to the table's newest version, applying what other processes added or deleted."""
        with self._refresh_lock:
            self._checked = time.monotonic()
            ds = self.table.latest()
            if ds is None or ds.version == self._tracker.version:
                return None
            if self._index is None:
                # A first load must not interleave with a commit of ours: that commit's row would be tracked as
                # seen but stay "pending", and the next refresh would take it for deleted elsewhere.
                with self._commit_lock:
                    if self._index is None:
                        self._load()
                return None
            with self._pending_lock:
                ready = np.array([i for i, v in self._pending.items() if v <= ds.version], dtype=np.int64)
            changes = self._tracker.diff(ds, known=self._is_known, pending=ready)
            self._advance(ds)  # rows are readable before their ids can be found by a search
            self._note_hashes(ds, changes)
            self._apply(changes, resolved=ready)
            if changes.added or len(changes.removed_ids):
                log.info(
                    "collection moved to version %d: %d added, %d removed elsewhere",
                    ds.version,
                    changes.added,
                    len(changes.removed_ids),
                )
            return changes

    def _apply(self, changes: Changes, *, resolved: np.ndarray | None = None) -> None:
        """Update the index and the tracked fragments in one step under the write lock.

        Our own uploads stay "pending" until a refresh has seen them in a fragment (or, once the table is past
        their commit, has not: then another process deleted them). A refresh running beside an upload may read
        its fragment before the upload registers as pending, so every id seen here stops being pending.
        """
        with self._lock.write():
            if len(changes.removed_ids):
                self._index.remove(changes.removed_ids)
                self._known.difference_update(changes.removed_ids.tolist())
            for ids, vectors in zip(changes.added_ids, changes.added_vectors, strict=True):
                fresh = _unseen(ids, self._known)
                self._index.add(ids[fresh], vectors[fresh])
                self._known.update(ids[fresh].tolist())
            self._tracker.apply(changes)
            with self._pending_lock:
                done = set(resolved.tolist()) if resolved is not None else set()
                if self._pending and len(changes.seen_ids):
                    waiting = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
                    done.update(waiting[np.isin(waiting, changes.seen_ids)].tolist())
                for image_id in done:
                    self._pending.pop(image_id, None)
                # Our own hidden rows committed after the version read here stay hidden (never shown for a moment).
                self._pending_hidden = {i: h for i, h in self._pending_hidden.items() if i in self._pending}
                still = dict(self._pending_hidden)
            self._set_hidden(changes.hidden.with_rows(still))
        self._maybe_build_cells()

    def _set_hidden(self, hidden: HiddenRows) -> None:
        """Swap in a new hidden set (under the write lock); rows whose visibility changed leave the row cache."""
        changed = self._hidden.changed_ids(hidden)
        self._hidden = hidden
        if changed:
            with self._cache_lock:
                for image_id in changed:
                    self._row_cache.pop(image_id, None)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # a flaky network must not kill the thread: try again next time
                log.exception("refreshing the collection failed; will retry")

    def maybe_refresh(self) -> None:
        """Refresh now if the last look at the table is older than ``refresh_s`` (a failure is logged: searches
        go on over what the index holds)."""
        if time.monotonic() - self._checked >= self.refresh_s:
            try:
                self.refresh()
            except StorageError as exc:
                log.warning("could not look for changes in the collection: %s", exc)

    # -- reads ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    @property
    def dim(self) -> int | None:
        return self._index.dim if self._index is not None else None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[int] = (),
        where: str | None = None,
        viewer: Viewer = PUBLIC_VIEWER,
    ) -> list[list[tuple[int, float]]]:
        """Top-k (image id, cosine) per query vector, best first, among the images ``viewer`` may see; ``where``
        (a Lance SQL condition on the rows) picks the images that compete before ranking, so k come back whenever k
        images match. The hidden rows the viewer may not see are left out by the index itself (see
        :meth:`VectorIndex.search`'s ``blocked``)."""
        self.maybe_refresh()
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        blocked = self._hidden.blocked(viewer)
        allowed = self.matching(where, viewer=viewer)[0] if where else None
        with self._lock.read():
            if self._index is None or len(self._index) == 0:
                return [[] for _ in range(len(queries))]
            if queries.shape[1] != self._index.dim:
                raise ClipSearchError(f"query has {queries.shape[1]} dimensions, the collection {self._index.dim}")
            scores, ids = self._index.search(
                queries, k + len(exclude), allowed=allowed, blocked=None if where else blocked
            )
        excluded = {int(i) for i in exclude}
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = [
                (int(i), float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0 and i not in excluded
            ]
            results.append(hits[:k])
        return results

    def nearest(self, vector: np.ndarray, viewer: Viewer = PUBLIC_VIEWER) -> tuple[int, float] | None:
        """(id, cosine) of the image closest to ``vector`` among those ``viewer`` may see, or None: an upload's
        near-duplicate check. Large flat collections answer it from a few cells of rows, IVF ones from their
        index (see :mod:`clip_search.collection.cells`): it may miss, but a score is always the exact cosine."""
        self.maybe_refresh()
        blocked = self._hidden.blocked(viewer)
        with self._lock.read():
            if self._index is None or len(self._index) == 0:
                return None
            return self._index.nearest(np.asarray(vector, dtype=np.float32).reshape(1, -1), blocked=blocked)

    def matching(self, where: str | None = None, *, viewer: Viewer = PUBLIC_VIEWER) -> tuple[np.ndarray, np.ndarray]:
        """(ids, added_at in µs) of the images ``viewer`` may see passing ``where`` (all without one), oldest
        first, ties by id."""
        self.maybe_refresh()
        blocked = self._hidden.blocked(viewer)
        ids, times = self._filtered.get(self._current(), where)
        if len(blocked):
            keep = ~member(ids, blocked)
            ids, times = ids[keep], times[keep]
        return ids, times

    def newest_ids(self, where: str, limit: int | None = None) -> list[int]:
        """Ids of every row passing ``where``, hidden ones included (the operator's listings), newest first."""
        ids, _ = self.matching(where, viewer=OPERATOR)
        newest = ids[::-1]
        return (newest if limit is None else newest[:limit]).tolist()

    def count(self, viewer: Viewer = PUBLIC_VIEWER) -> int:
        """How many images ``viewer`` may see (``len`` counts every row the index holds)."""
        blocked = self._hidden.blocked(viewer)
        return len(self) - sum(int(i) in self._known for i in blocked)

    def hidden_counts(self) -> dict[str, int]:
        """How many private and held images there are (the operator's figures)."""
        return self._hidden.counts()

    def hidden(self, image_id: int) -> Hidden | None:
        """Whether an image is private or held (and its owner), or None for a public one."""
        return self._hidden.get(image_id)

    def is_held(self, image_id: int) -> bool:
        hidden = self._hidden.get(image_id)
        return hidden is not None and hidden.visibility == HELD

    def visible(self, image_id: int, viewer: Viewer = PUBLIC_VIEWER) -> bool:
        return int(image_id) in self._known and self._hidden.visible(viewer, image_id)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._known

    def get(self, image_id: int, viewer: Viewer = PUBLIC_VIEWER) -> ImageRecord | None:
        return self.get_many([image_id], viewer).get(int(image_id))

    def get_many(self, image_ids: Sequence[int], viewer: Viewer = PUBLIC_VIEWER) -> dict[int, ImageRecord]:
        """Rows of images that are in the collection as this process sees it and that ``viewer`` may see
        (deleted and hidden ones are left out).

        Rows only change when an upload is approved (and then leave the cache), so recently shown ones are kept in
        a small cache: popular results cost no table read, and results already seen still show while the table's
        server is briefly unreachable.
        """
        wanted = [int(i) for i in image_ids if self.visible(int(i), viewer)]
        with self._cache_lock:
            found = {i: self._row_cache[i] for i in wanted if i in self._row_cache}
        missing = [i for i in wanted if i not in found]
        if missing:
            fetched = self.table.get_many(self._current(), missing)
            found.update(fetched)
            with self._cache_lock:
                self._row_cache.update(fetched)
                while len(self._row_cache) > ROW_CACHE_SIZE:
                    self._row_cache.popitem(last=False)
        return found

    def embedding(self, image_id: int, viewer: Viewer = PUBLIC_VIEWER) -> np.ndarray | None:
        ids, vectors = self.embeddings([image_id], viewer)
        return vectors[0].copy() if len(ids) else None

    def embeddings(self, image_ids: Sequence[int], viewer: Viewer = PUBLIC_VIEWER) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of ``image_ids`` that are in the collection and ``viewer`` may see, each once."""
        wanted = [int(i) for i in dict.fromkeys(int(i) for i in image_ids) if self.visible(int(i), viewer)]
        ids, vectors = self.table.vectors(self._current(), wanted)
        if len(ids) > 1:
            _, first = np.unique(ids, return_index=True)
            ids, vectors = ids[first], vectors[first]
        return ids, vectors

    def find_by_sha256(self, *hashes: str | None, owner_hash: str | None = None) -> ImageRecord | None:
        """The image whose stored or original bytes have one of these hashes, as the table has it (an image
        another process committed a moment ago counts, before this process's index has it), among the rows a
        photo of ``owner_hash`` duplicates: unowned ones and the owner's own (never a stranger's private photo).
        The table is read only when the hashes held in memory say it might hold one (see collection.hashes)."""
        if not self._hashes.may_contain(*hashes):
            return None
        return self.table.find_by_sha256(self._current(), *hashes, where=same_owner_sql(owner_hash))

    def find_by_key(self, key: str) -> ImageRecord | None:
        return self.table.find_by_key(self._current(), key)

    def known_hashes(self) -> set[str]:
        """The hashes an ingest skips: of every unowned row (a visitor's private photo never stops the operator
        from adding the same photo publicly)."""
        return self.table.hashes(self._current(), where=same_owner_sql(None))

    def records(self) -> Iterator[ImageRecord]:
        """Every image's row once, hidden ones included: the operator's listing (two writers committing the same
        photo at once leave two rows of one id)."""
        seen: set[int] = set()
        for record in self.table.iter_records(self._current()):
            if record.id not in seen and record.id in self._known:
                seen.add(record.id)
                yield record

    def iter_vectors(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) batches of every row, straight from the table (for notebooks and exports)."""
        ds = self._current()
        if ds is not None:
            yield from iter_vectors(ds)

    def _advance(self, ds: Any) -> None:
        """Read rows from ``ds`` from now on, unless a newer version is already in use (threads race here)."""
        with self._cache_lock:
            if ds is not None and (self._ds is None or ds.version > self._ds.version):
                self._ds = ds

    def _current(self) -> Any:
        """The dataset version to read rows from: the newest one we have seen (our own commits included)."""
        return self._ds

    # -- writes -----------------------------------------------------------------------------------------------

    def add(self, images: Sequence[NewImage]) -> list[int | None]:
        """Commit images to the table, then to the index; None for an image the collection already holds.

        This process's commits are serialised (searches are not: they never take this lock), so the same photo
        uploaded by several visitors at once is written once. Another process may still commit the same photo at
        the same instant; readers then count its one id once.
        """
        if not images:
            return []
        with self._commit_lock:
            new: dict[int, NewImage] = {}  # position -> image
            taken: set[int] = set()
            for pos, img in enumerate(images):
                if img.id not in self._known and img.id not in taken:  # a set: batches of thousands (migrations)
                    new[pos] = img
                    taken.add(img.id)
            if new:
                self._commit(list(new.values()))
        return [img.id if pos in new else None for pos, img in enumerate(images)]

    def _commit(self, images: list[NewImage]) -> None:
        self._hashes.add(h for img in images for h in (img.sha256, img.source_sha256))  # before they can be found
        version = self.table.add(images, model=self.model, model_id=self.model_id)
        ids = np.array([img.id for img in images], dtype=np.int64)
        vectors = np.stack([np.asarray(img.embedding, dtype=np.float32).reshape(-1) for img in images])
        hidden = {img.id: Hidden(img.visibility, img.owner_hash) for img in images if img.visibility in (PRIVATE, HELD)}
        self._advance(self.table.latest(at_least=version))  # rows readable before a search can find their ids
        with self._lock.write():
            if self._index is None:
                self._index = make_index("flat", vectors.shape[1])
            if hidden:  # hidden before their ids can be found, under the same lock
                self._set_hidden(self._hidden.with_rows(hidden))
            # A refresh on another thread may have read our fragment and added these rows already.
            fresh = _unseen(ids, self._known)
            self._index.add(ids[fresh], vectors[fresh])
            self._known.update(ids[fresh].tolist())
            with self._pending_lock:
                self._pending.update((int(i), version) for i in ids[fresh])
                self._pending_hidden.update((int(i), hidden[int(i)]) for i in ids[fresh] if int(i) in hidden)
        self._count_commit()
        self._maybe_build_cells()

    def remove(self, image_id: int) -> ImageRecord | None:
        """Delete an image's row (the commit point), then drop it from the index."""
        removed = self.remove_many([image_id])
        return removed[0] if removed else None

    def remove_many(self, image_ids: Sequence[int]) -> list[ImageRecord]:
        """Delete several images' rows in one transaction (the commit point), then drop them from the index;
        returns the rows that were there."""
        with self._commit_lock:
            records = list(self.get_many(list(image_ids), OPERATOR).values())
            if not records:
                return []
            gone = np.array([r.id for r in records], dtype=np.int64)
            version = self.table.delete(gone.tolist())
            with self._lock.write():
                if self._index is not None:
                    self._index.remove(gone)
                self._known.difference_update(gone.tolist())
                self._set_hidden(self._hidden.with_rows(removed=gone.tolist()))
            with self._cache_lock:
                for image_id in gone.tolist():
                    self._row_cache.pop(image_id, None)
            self._advance(self.table.latest(at_least=version))
        return records

    def approve(self, image_ids: Sequence[int]) -> list[int]:
        """Approve held images (each becomes public, or private when it has an owner); returns the ids changed.
        The table row is rewritten (the commit point); this process sees it at once, replicas at their refresh."""
        with self._commit_lock:
            held = [int(i) for i in image_ids if self.is_held(i)]
            if not held:
                return []
            version = self.table.approve(held)
            self._advance(self.table.latest(at_least=version))
        self.refresh()
        return held

    def delete_hash(self, image_id: int) -> str | None:
        """The stored hash of an image's delete code (None: no such image, or it has none)."""
        if int(image_id) not in self._known:
            return None
        return self.table.delete_hash(self._current(), int(image_id))

    def build_cells(self) -> bool:
        """Build the flat index's near-duplicate cells now (without blocking searches or writers for long: the
        rows are read without a lock, the cells installed under it); False if rows were removed meanwhile."""
        with self._lock.read():
            index = self._index
            if not isinstance(index, FlatIndex) or len(index) == 0:
                return False
            rows, removals = index.cells_snapshot()
        cells = Cells.build(rows)
        with self._lock.write():
            installed = self._index is index and index.install_cells(cells, removals)
        if not installed:
            log.info("near-duplicate cells dropped: rows were removed while they were built; built again later")
        return installed

    def wait_for_cells(self, timeout: float | None = None) -> bool:
        """Wait for the background work after an open (near-duplicate cells, content hashes; benchmarks, tests);
        True when the index has cells now."""
        for thread in (self._hashes_thread, self._cells_thread):
            if thread is not None:
                thread.join(timeout)
        return isinstance(self._index, FlatIndex) and self._index.cells_trained_on > 0

    def _load_hashes_later(self) -> None:
        """Read every row's content hashes in the background (until then duplicate checks read the table)."""
        ds = self._current()
        self._hashes.ready = False  # until loaded, every check reads the table
        if not self._background or ds is None:
            return

        def load() -> None:
            try:
                self._hashes.load(ds.to_table(columns=["sha256", "source_sha256"]))
            except Exception:  # duplicate checks keep reading the table
                log.exception("reading the collection's content hashes failed; duplicate checks read the table")

        self._hashes_thread = threading.Thread(target=load, name="collection-hashes", daemon=True)
        self._hashes_thread.start()

    def _note_hashes(self, ds: Any, changes: Changes) -> None:
        """The content hashes of rows another process added (before their ids can be found); a bulk of them
        is read again as a whole later."""
        ids = [int(i) for batch in changes.added_ids for i in batch]
        if not ids:
            return
        if len(ids) > 10_000:
            self._load_hashes_later()
            return
        table = self.table.hashes_of(ds, ids)
        self._hashes.add(table.column("sha256").to_pylist() + table.column("source_sha256").to_pylist())

    def _maybe_build_cells(self) -> None:
        """In the background: cells once a flat collection has CELLS_MIN_ROWS rows, again when it grew 4x."""
        index = self._index
        if not self._background or not isinstance(index, FlatIndex) or len(index) < CELLS_MIN_ROWS:
            return
        if index.cells_trained_on and len(index) < 4 * index.cells_trained_on:
            return
        if self._cells_thread is not None and self._cells_thread.is_alive():
            return
        self._cells_thread = threading.Thread(target=self._build_cells_logged, name="collection-cells", daemon=True)
        self._cells_thread.start()

    def _build_cells_logged(self) -> None:
        try:
            self.build_cells()
        except Exception:  # near-duplicate checks fall back to an exact scan meanwhile
            log.exception("building the near-duplicate cells failed; checks scan every vector until the next try")

    def _count_commit(self) -> None:
        """Every ``optimize_every`` commits of this process, compact the table in the background."""
        self._commits += 1
        if not self.optimize_every or self._commits % self.optimize_every:
            return
        if self._housekeeping is not None and self._housekeeping.is_alive():
            return

        def run() -> None:
            try:
                self.table.optimize(keep_versions_s=self.keep_versions_s)
            except Exception:  # another process optimizing at the same moment, a network error...
                log.exception("background optimize of the collection table failed; will try again later")

        self._housekeeping = threading.Thread(target=run, name="collection-optimize", daemon=True)
        self._housekeeping.start()

    def optimize(self, *, keep_versions_s: float = 3600.0) -> dict[str, Any]:
        """Compact the table and drop old versions; retrain the IVF index if the collection outgrew it."""
        report = self.table.optimize(keep_versions_s=keep_versions_s)
        self.refresh()
        if isinstance(self._index, IVFIndex) and self._index.needs_retrain(len(self), growth=self.retrain_growth):
            ds = self.table.latest()
            index, tracker, known, hidden = self._build(ds, ds.count_rows())  # searches go on over the old index
            with self._lock.write():  # rows committed meanwhile arrive with the next refresh
                self._index, self._tracker, self._known = index, tracker, known
                with self._pending_lock:
                    self._set_hidden(hidden.with_rows(self._pending_hidden))
            report["retrained"] = True
        self._save_ivf()
        return report

    def close(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._housekeeping, self._cells_thread, self._hashes_thread):
            if thread is not None:
                thread.join(timeout=60)
        try:
            self._save_ivf()
        except OSError as exc:
            log.warning("could not cache the IVF index: %s", exc)
