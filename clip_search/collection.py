"""A collection is the catalog plus the FAISS index derived from it, kept in step.

Adding commits to the catalog first (the commit point) and then appends to the in-memory index under one write
lock, so a search never sees half of an add. The index file is saved in the background a few seconds after the
last change (never rewritten per upload); on open, a saved index that lags the catalog is topped up with the
missing rows, and one that does not match it (other model, other catalog, deletions, damage) is rebuilt.
Commits by another process (a CLI ingest while the app runs) are picked up at the next search.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clip_search.catalog import Catalog, CatalogState, ImageRecord, NewImage
from clip_search.index import IndexHeader, RWLock, VectorIndex, load_index, remove_stale_temp_files, save_index

log = logging.getLogger(__name__)


class Collection:
    """Thread-safe: many concurrent searches, adds serialised."""

    def __init__(self, catalog: Catalog, index_path: Path, *, model: str, save_delay_s: float = 10.0) -> None:
        self.catalog = catalog
        self.index_path = Path(index_path)
        self.model = model
        self.save_delay_s = save_delay_s
        self._lock = RWLock()
        self._save_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._dirty = False
        catalog.check_model(model)
        remove_stale_temp_files(self.index_path.parent)
        self._index: VectorIndex | None = None
        self._synced = CatalogState(uid="", model=None, dim=None, count=0, max_id=0, deletions=0)
        self._data_version = catalog.data_version()
        with self._lock.write():
            self._open_index()
        self.save()

    # -- building ---------------------------------------------------------------------------------------------

    def _open_index(self) -> None:
        """Load the saved index if it describes this catalog, top it up if it lags, else rebuild."""
        state = self.catalog.state()
        loaded = load_index(self.index_path)
        if loaded is not None:
            index, header = loaded
            reason = self._mismatch(header, state)
            if reason is None:
                self._index = index
                self._synced = CatalogState(
                    uid=header.uid,
                    model=header.model,
                    dim=header.dim,
                    count=header.count,
                    max_id=header.max_id,
                    deletions=header.deletions,
                )
                added = self._append_new_rows(state)
                if added:
                    log.info("index %s was %d images behind the catalog; appended them", self.index_path, added)
                    self._dirty = True
                return
            log.info("index %s is stale (%s); rebuilding from the catalog", self.index_path, reason)
        self._rebuild(state)

    def _mismatch(self, header: IndexHeader, state: CatalogState) -> str | None:
        if header.uid != state.uid:
            return "it belongs to another catalog"
        if header.model != state.model or (state.dim and header.dim != state.dim):
            return f"it holds vectors of '{header.model}' ({header.dim}-d)"
        if header.deletions != state.deletions:
            return "images were deleted since it was saved"
        if header.max_id > state.max_id or self.catalog.count_up_to(header.max_id) != header.count:
            return "it does not match the catalog's rows"
        return None

    def _rebuild(self, state: CatalogState) -> None:
        started = time.perf_counter()
        self._index = VectorIndex(state.dim) if state.dim else None
        self._synced = CatalogState(
            uid=state.uid, model=state.model, dim=state.dim, count=0, max_id=0, deletions=state.deletions
        )
        if state.count:
            self._append_new_rows(state, progress=state.count > 50_000)
        log.info("built index of %d images from the catalog in %.2f s", len(self), time.perf_counter() - started)
        self._dirty = True

    def _append_new_rows(self, state: CatalogState, *, progress: bool = False) -> int:
        """Append catalog rows with ids above what the index holds. Caller holds the write lock."""
        added = 0
        bar = tqdm(total=state.count, desc="indexing", unit="img", disable=not progress)
        for ids, vectors in self.catalog.iter_embeddings(after_id=self._synced.max_id):
            if self._index is None:
                self._index = VectorIndex(vectors.shape[1])
            self._index.add(ids, vectors)
            added += len(ids)
            bar.update(len(ids))
            self._synced = CatalogState(
                uid=state.uid,
                model=state.model,
                dim=self._index.dim,
                count=len(self._index),
                max_id=int(ids[-1]),
                deletions=self._synced.deletions,
            )
        bar.close()
        return added

    def refresh(self) -> None:
        """Pick up commits made by other processes since we last looked (cheap when there are none).

        ``PRAGMA data_version`` only moves when another connection commits. Ids from two writers interleave, so
        the index is reconciled by id set, not by "everything above the highest id we have".
        """
        if self.catalog.data_version() == self._data_version:
            return
        with self._lock.write():
            self._data_version = self.catalog.data_version()
            state = self.catalog.state()
            if state.uid != self._synced.uid or self._index is None or (state.dim and state.dim != self._index.dim):
                self._rebuild(state)
            else:
                added, removed = self._reconcile(state)
                if not (added or removed):
                    return
                log.info("picked up changes by another process: %d added, %d removed", added, removed)
        self._mark_dirty()

    def _reconcile(self, state: CatalogState) -> tuple[int, int]:
        """Make the index hold exactly the catalog's ids. Caller holds the write lock."""
        assert self._index is not None
        have = set(self._index.ids().tolist())
        want = self.catalog.all_ids()
        missing = sorted(want - have)
        extra = sorted(have - want)
        if extra:
            self._index.remove(np.array(extra, dtype=np.int64))
        for start in range(0, len(missing), 4096):
            ids, vectors = self.catalog.embeddings_for(missing[start : start + 4096])
            self._index.add(ids, vectors)
        self._synced = CatalogState(
            uid=state.uid,
            model=state.model,
            dim=self._index.dim,
            count=len(self._index),
            max_id=max(self._synced.max_id, state.max_id),
            deletions=state.deletions,
        )
        return len(missing), len(extra)

    # -- reads ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    @property
    def dim(self) -> int | None:
        return self._index.dim if self._index is not None else None

    def search(self, queries: np.ndarray, k: int, *, exclude: Sequence[int] = ()) -> list[list[tuple[int, float]]]:
        """Top-k (catalog id, cosine) per query vector, best first."""
        self.refresh()
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        with self._lock.read():
            if self._index is None or len(self._index) == 0:
                return [[] for _ in range(len(queries))]
            if queries.shape[1] != self._index.dim:
                raise ValueError(f"query has {queries.shape[1]} dimensions, the index {self._index.dim}")
            scores, ids = self._index.search(queries, k + len(exclude))
        excluded = set(int(i) for i in exclude)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = [
                (int(i), float(s))
                for s, i in zip(row_scores, row_ids, strict=True)
                if i >= 0 and int(i) not in excluded
            ]
            results.append(hits[:k])
        return results

    # -- writes -----------------------------------------------------------------------------------------------

    def add(self, images: Sequence[NewImage]) -> list[int | None]:
        """Commit images to the catalog, then to the index; None for an image whose bytes were already there."""
        if not images:
            return []
        with self._lock.write():
            ids = self.catalog.add(images, model=self.model)
            new = [(i, img) for i, img in zip(ids, images, strict=True) if i is not None]
            if new:
                vectors = np.stack([np.asarray(img.embedding, dtype=np.float32) for _, img in new])
                if self._index is None:
                    self._index = VectorIndex(vectors.shape[1])
                self._index.add(np.array([i for i, _ in new], dtype=np.int64), vectors)
                state = self._synced
                self._synced = CatalogState(
                    uid=state.uid or self.catalog.state().uid,
                    model=self.model,
                    dim=self._index.dim,
                    count=len(self._index),
                    max_id=max(state.max_id, max(i for i, _ in new)),
                    deletions=state.deletions,
                )
        if any(i is not None for i in ids):
            self._mark_dirty()
        return ids

    def remove(self, image_id: int) -> ImageRecord | None:
        with self._lock.write():
            record = self.catalog.delete(image_id)
            if record is not None and self._index is not None:
                self._index.remove(np.array([image_id], dtype=np.int64))
                state = self._synced
                self._synced = CatalogState(
                    uid=state.uid,
                    model=state.model,
                    dim=state.dim,
                    count=len(self._index),
                    max_id=state.max_id,
                    deletions=state.deletions + 1,
                )
        if record is not None:
            self._mark_dirty()
        return record

    # -- persistence ------------------------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self.save_delay_s <= 0:
            self.save()
            return
        with self._save_lock:
            if self._timer is None:
                self._timer = threading.Timer(self.save_delay_s, self._timer_save)
                self._timer.daemon = True
                self._timer.start()

    def _timer_save(self) -> None:
        with self._save_lock:
            self._timer = None
        try:
            self.save()
        except Exception:  # a failed snapshot is not fatal: the catalog has everything
            log.exception("saving the index snapshot failed")

    def save(self) -> None:
        """Write the index snapshot if anything changed since the last one."""
        if not self._dirty:
            return
        with self._lock.read():
            if self._index is None:
                self.index_path.unlink(missing_ok=True)
                self._dirty = False
                return
            header = IndexHeader(
                uid=self._synced.uid,
                model=self._synced.model,
                dim=self._index.dim,
                count=len(self._index),
                max_id=self._synced.max_id,
                deletions=self._synced.deletions,
            )
            self._dirty = False
            save_index(self.index_path, self._index, header)
        log.debug("saved index snapshot (%d vectors) to %s", header.count, self.index_path)

    def close(self) -> None:
        with self._save_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.save()
        self.catalog.close()
