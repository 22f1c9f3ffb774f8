"""Coarse cells over the flat index's rows, so an upload's near-duplicate check reads a few cells, not every vector.

A near duplicate (the same photo resized or re-compressed: cosine >= ``upload.near_duplicate_threshold``, 0.97 by
default) lies next to its original, so it falls in the original's k-means cell or in one of the next nearest.
:class:`Cells` keeps ``nlist`` k-means centroids (FAISS's k-means, trained on a sample of the rows) and each row's
cell as 2 bytes, aligned with the flat index's rows. :meth:`Cells.candidates` picks the ``nprobe`` cells nearest a
query, and any whose centroid is nearly as close (:attr:`Cells.margin`), and returns their rows, found through the
2 bytes of labels a row, and scored exactly against the flat index's own array. Measured on 100k x 768 (clustered
synthetic vectors, and vectors derived from the Imagenette photos', 200 copies at cosine 0.97): the original's
cell is read for every copy, reading a median of 1-4% of the rows; for copies of outliers (random directions,
far from every centroid) 99-99.5% of the time, reading 0.2-2.4%. At 1M rows a check takes 6-10 ms, where one
exact scan takes ~230 ms.

Why not a FAISS IVF index for this: ``IndexIVFFlat`` keeps a second copy of every vector (1x the collection more
memory); the cells share the flat index's vectors and cost 2 bytes a row. The search the visitor sees stays
exact; only the near-duplicate check goes through the cells (a miss costs a duplicate row, never a wrong answer).
Collections with ``index.kind: ivf`` use their IVF index for the check instead.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from clip_search.faisslib import faiss

log = logging.getLogger(__name__)

MIN_ROWS = 20_000  # below this one exact scan of the vectors takes a few ms: no cells
NPROBE = 3  # cells read per check at least (see Cells.margin for more)
MAX_CELLS = 8  # and at most
_ASSIGN_CHUNK = 16_384  # rows labelled per matrix product while building
_SAMPLE_PER_CELL = 40  # k-means training rows per centroid (FAISS warns below 39)


def default_cells(n: int) -> int:
    """~sqrt(n) cells (100k rows: 316 of ~316; 1M: 1,000 of ~1,000), between 16 and 4,096: a check reads
    ``NPROBE`` to ``MAX_CELLS`` cells, and building costs ``n * cells`` dot products plus the k-means (1M x 768:
    20 s of one core, in the background, once per start; half as many cells took 9 s but checks read twice
    the rows: 28 ms instead of 10 for a real photo's vector among synthetic ones)."""
    return int(min(4096, max(16, round(math.sqrt(max(n, 0))))))


class Cells:
    """Centroids and the cell of each row of a flat index (row i -> ``labels[i]``). Not thread-safe: the flat
    index changes it under the collection's write lock, like its rows."""

    def __init__(self, centroids: np.ndarray, labels: np.ndarray) -> None:
        self.nlist, self.dim = centroids.shape
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._labels = np.empty(max(len(labels), 1024), dtype=np.int16)
        self._labels[: len(labels)] = labels
        self.size = len(labels)
        self.trained_on = len(labels)

    @classmethod
    def build(cls, rows: np.ndarray, nlist: int | None = None, seed: int = 1234) -> Cells:
        """k-means on a sample of ``rows`` (n, dim), then every row's cell. Reads ``rows`` only (no copy of them)."""
        started = time.perf_counter()
        n, dim = rows.shape
        nlist = nlist or default_cells(n)
        rng = np.random.default_rng(seed)
        sample = rows[np.sort(rng.choice(n, size=min(n, nlist * _SAMPLE_PER_CELL), replace=False))]
        kmeans = faiss.Kmeans(dim, nlist, niter=10, spherical=True, seed=seed, verbose=False)
        kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
        cells = cls(kmeans.centroids, np.zeros(0, dtype=np.int16))
        labels = np.concatenate(
            [cells.assign(rows[start : start + _ASSIGN_CHUNK]) for start in range(0, n, _ASSIGN_CHUNK)]
        )
        cells.extend(labels)
        cells.trained_on = n
        log.info("near-duplicate cells: %d rows in %d cells in %.1f s", n, nlist, time.perf_counter() - started)
        return cells

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The nearest cell of each vector (int16)."""
        if not len(vectors):
            return np.zeros(0, dtype=np.int16)
        return np.argmax(np.asarray(vectors, dtype=np.float32) @ self._centroids.T, axis=1).astype(np.int16)

    def extend(self, labels: np.ndarray) -> None:
        """Labels of rows appended to the index."""
        need = self.size + len(labels)
        if need > len(self._labels):
            grown = np.empty(max(need, len(self._labels) + len(self._labels) // 8), dtype=np.int16)
            grown[: self.size] = self._labels[: self.size]
            self._labels = grown
        self._labels[self.size : need] = labels
        self.size = need

    def move(self, holes: np.ndarray, movers: np.ndarray, keep: int) -> None:
        """Mirror the flat index's removal: rows ``movers`` fill ``holes``, then only the first ``keep`` count."""
        self._labels[holes] = self._labels[movers]
        self.size = keep

    def candidates(self, query: np.ndarray, nprobe: int = NPROBE, most: int = MAX_CELLS) -> np.ndarray:
        """Rows (int64, ascending) in the ``nprobe`` cells nearest ``query`` (dim,), and in the next ones up to
        ``most`` whose centroid is within :attr:`margin` of the nearest."""
        scores = self._centroids @ np.asarray(query, dtype=np.float32).reshape(-1)
        nearest = np.argsort(-scores)[:most]
        close = scores[nearest] >= scores[nearest[0]] - self.margin
        close[:nprobe] = True
        wanted = np.zeros(self.nlist, dtype=bool)
        wanted[nearest[close]] = True
        return np.flatnonzero(wanted[self._labels[: self.size]])

    @property
    def margin(self) -> float:
        """Cells whose centroid is this close to the best one's are read too. A copy at cosine t differs from its
        original by a random-looking direction, which moves each centroid score by ~N(0, (1 - t^2) / dim): 4 of
        those sigmas (at t = 0.95; 768-d: 0.045) keep the original's cell for photos far from every centroid
        (outliers, whose scores are all close), where the ``NPROBE`` nearest alone missed 1 in 10: with at most
        ``MAX_CELLS`` 1 in 100-200 (clustered synthetic and Imagenette-derived vectors, 100k x 768)."""
        return 4.0 * math.sqrt((1 - 0.95**2) / self.dim)
