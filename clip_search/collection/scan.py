"""Exact top-k by inner product over a float32 matrix, at the speed of one pass over its bytes.

The flat index answers every query with :func:`scan_topk` over a zero-copy view of FAISS's own storage. Rows are
read in blocks; each block's scores come from one BLAS call (a matrix-vector product for one query, a matrix
product for a batch), and only the scores above each query's running k-th best leave the block, so selecting the
top k costs a comparison per score, not a sort. One query is bound by memory bandwidth. A batch reads the rows
once for all its queries, but 32 queries do 16 flops per byte read, more than a CPU core computes at memory
speed: a batch is bound by the floating-point rate (a few passes' time for 32 answers; benchmarks/bench_search.py
measures both floors). Where bfloat16 is faster, the flat index sends batches to :mod:`.bf16_scan` instead.

Threads: :func:`set_search_threads` sets how many parts a scan is split into (each part on its own core, with
numpy's BLAS kept to one thread so that parts and concurrent searches never oversubscribe the cores) and FAISS's
OpenMP threads (the IVF index). Both are process-wide, like FAISS's own setting.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clip_search.faisslib import faiss

log = logging.getLogger(__name__)

BLOCK_ROWS = 16_384  # rows per BLAS call: 48 MB of 768-d vectors; scores for 32 queries stay at 2 MB
SEED_ROWS = 1024  # the first block, whose k best per query set the bar the other blocks' scores must pass
_NO_SCORE = np.float32(-np.inf)

_threads = 1
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_search_threads(threads: int) -> None:
    """Cores one search may use (0: all of them), for the flat scan and for FAISS; process-wide.

    Numpy's BLAS is limited to one thread here: the scan does its own splitting, and several visitors' searches
    running at once each take their own core instead of fighting over BLAS's thread pool.
    """
    global _threads, _pool
    wanted = threads if threads > 0 else os.cpu_count() or 1
    _numpy_blas_single_threaded()
    faiss.omp_set_num_threads(wanted)
    with _pool_lock:
        if wanted != _threads and _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None
        _threads = wanted
    log.debug("searches use %d thread(s)", wanted)


def _numpy_blas_single_threaded() -> None:
    """One thread for every BLAS loaded but FAISS's own (the faiss-cpu wheel bundles one, which k-means, hence
    IVF training, runs on: that one keeps FAISS's thread count)."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    others = [lib.filepath for lib in controller.lib_controllers if lib.user_api == "blas"]
    others = [path for path in others if "faiss" not in Path(path).parent.name.lower()]
    if others:
        controller.select(filepath=others).limit(limits=1)


def search_threads() -> int:
    """The cores one scan uses now (see :func:`set_search_threads`)."""
    return _threads


def scan_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (nq, k), best first, of the rows of ``vectors`` with the highest inner product.

    Rows where ``mask`` is False never win. A query with no finite value, or fewer than k rows allowed, gets
    row -1 and score -inf in the places left over. ``k`` must be at least 1.
    """
    nq = len(queries)
    finite = np.isfinite(queries).all(axis=1)
    if not finite.all():
        scores, rows = _empty_top(nq, k)
        if finite.any():
            scores[finite], rows[finite] = scan_topk(vectors, queries[finite], k, mask=mask)
        return scores, rows
    parts = min(_threads, max(1, len(vectors) // BLOCK_ROWS))
    if parts == 1:
        return _scan_rows(vectors, queries, k, mask, 0, len(vectors))
    edges = np.linspace(0, len(vectors), parts + 1).astype(np.int64)
    pool = _executor(parts - 1)
    others = [
        pool.submit(_scan_rows, vectors, queries, k, mask, int(start), int(stop))
        for start, stop in itertools.pairwise(edges[1:])
    ]
    scores, rows = _scan_rows(vectors, queries, k, mask, 0, int(edges[1]))
    for future in others:
        part_scores, part_rows = future.result()
        scores, rows = _merge(scores, rows, part_scores.ravel(), part_rows.ravel(), np.repeat(np.arange(nq), k))
    return scores, rows


def _scan_rows(
    vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of rows ``start:stop``, block by block: candidates are only the scores above the k-th best so far.

    A small first block sets each query's k-th best; from then on a block costs its matrix product, one
    comparison per score and a look at the few scores that beat it."""
    nq = len(queries)
    best_scores, best_rows = _empty_top(nq, k)
    by_query = np.ascontiguousarray(queries.T)  # (dim, nq): the block's scores come out (rows, nq)
    at = start
    while at < stop:
        size = BLOCK_ROWS if at > start else max(SEED_ROWS, k)
        block = vectors[at : min(at + size, stop)]
        scores = (block @ by_query[:, 0] if nq == 1 else block @ by_query).reshape(len(block), nq)
        if mask is not None:
            scores[~mask[at : at + len(block)]] = _NO_SCORE
        kth = best_scores[:, -1]
        if np.isneginf(kth).any():  # some query holds fewer than k: take the block's own top k for every query
            row, query = _block_top(scores, k)
        else:
            row, query = above(scores, kth)
        if len(row):
            best_scores, best_rows = _merge(best_scores, best_rows, scores[row, query], row + at, query)
        at += len(block)
    best_rows[np.isneginf(best_scores)] = -1  # masked-out rows never count as found
    return best_scores, best_rows


def above(scores: np.ndarray, kth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, query) of the scores above their query's bar (its k-th best so far). Few are: the rows holding one
    are found from the comparison's bytes read 8 at a time, and only those rows are looked at one by one."""
    hits = scores > kth
    if hits.shape[1] % 8:
        return np.nonzero(hits)
    words = np.flatnonzero(hits.view(np.uint64) != 0)  # 8 (row, query) flags per word (!= 0: 5x faster)
    rows = np.unique(words // (hits.shape[1] // 8))
    row, query = np.nonzero(hits[rows])
    return rows[row], query


def _block_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, query) of each query's k best scores in one block of (rows, nq) scores."""
    rows, nq = scores.shape
    take = min(k, rows)
    best = np.argpartition(scores, rows - take, axis=0)[rows - take :]  # (take, nq)
    return best.ravel(), np.tile(np.arange(nq), take)


def _merge(
    best_scores: np.ndarray, best_rows: np.ndarray, scores: np.ndarray, rows: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The k best per query of the current (nq, k) best and new candidates (score, row, query index)."""
    nq, k = best_scores.shape
    all_scores = np.concatenate([best_scores.ravel(), scores.astype(np.float32, copy=False)])
    all_rows = np.concatenate([best_rows.ravel(), rows.astype(np.int64, copy=False)])
    all_queries = np.concatenate([np.repeat(np.arange(nq), k), queries])
    order = np.lexsort((-all_scores, all_queries))  # by query, then best first (stable: earlier rows win ties)
    starts = np.searchsorted(all_queries[order], np.arange(nq))
    take = order[(starts[:, None] + np.arange(k)).ravel()]
    return all_scores[take].reshape(nq, k), all_rows[take].reshape(nq, k)


def _empty_top(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), _NO_SCORE, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The pool that runs the parts of a scan beyond the caller's own (created once per thread setting)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="scan")
        return _pool
