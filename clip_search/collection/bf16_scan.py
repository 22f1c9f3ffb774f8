"""Exact top-k for a batch of queries through a bfloat16 copy of the vectors, rescored in float32.

Why: a batch of 32 queries does 16 flops per byte of float32 it reads, so on a CPU core the float32 product, not
memory, bounds a batch (0.14-0.18x of one pass over the vectors, benchmarks/bench_search.py). CPUs with bfloat16
dot products (AVX-512 BF16, AMX) compute them several times faster, over half the bytes. The copy scores every
row approximately; every row whose approximate score could still reach the exact k-th best is then rescored from
the float32 rows, so the answer is the exact scan's. "Could" is a bound on the rounding, not a guess: for query q,
row x and their bfloat16 roundings q~, x~ (the product's sum kept in float32, its result rounded to bfloat16),

    |q.x - q~.x~| <= |q| |x - x~| + |q - q~| |x~| + d 2^-24 |q~| |x~|,   and the output is off by <= 2^-7 of itself.

The copy costs half the float32 vectors' memory. It is made on the first batch over a collection big enough to
gain from it (:data:`MIN_ROWS`), only where bfloat16 measures faster than float32 here (:func:`batches_use_bf16`),
extended by the rows added since on each later batch, and moved with the index's rows on removals.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np

from clip_search.collection.scan import BLOCK_ROWS, SEED_ROWS, above, search_threads

if TYPE_CHECKING:
    import torch  # imported where used: the collection's other users (the admin CLI) never load torch

log = logging.getLogger(__name__)

MIN_ROWS = 2 * BLOCK_ROWS  # below this a batch is fast either way and the copy's memory buys little
BLOCK = 8192  # rows per bfloat16 product: measured 5-10% faster than 16k or 32k here (the scores stay in cache)
_GROWTH = 8  # the copy grows by 1/8 of its rows, like the index
_OUT = 2.0**-7 / (1 - 2.0**-7)  # a bfloat16 output is within 2^-7 of the float32 sum it rounds (any rounding)
_SUM = 2.0**-24  # float32's unit roundoff: per term of a sum, for the copy's sums and for float32 rescoring

BatchScan = Literal["auto", "bf16", "fp32"]
_mode: BatchScan = "auto"
_measured: bool | None = None
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def set_batch_scan(mode: BatchScan) -> None:
    """How batches are scanned: "bf16" through the copy, "fp32" straight, "auto" the faster here (process-wide)."""
    global _mode
    if mode not in ("auto", "bf16", "fp32"):
        raise ValueError(f"batch scan must be auto, bf16 or fp32, got {mode!r}")
    _mode = mode


def batches_use_bf16() -> bool:
    """Whether a batch goes through the bfloat16 copy: as set, or ("auto") where it measured 1.5x+ faster."""
    global _measured
    if _mode != "auto":
        return _mode == "bf16"
    if _measured is None:
        _measured = _bf16_measures_faster()
    return _measured


def _bf16_measures_faster() -> bool:
    """A block of 32 scores, bfloat16 against float32, on one core each (a few tens of ms, once per process).
    CPUs without bfloat16 instructions emulate them at float32's speed or slower."""
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    rng = np.random.default_rng(0)
    rows, queries = rng.standard_normal((8192, 768), dtype=np.float32), rng.standard_normal((768, 32), np.float32)
    rows_b, queries_b = torch.from_numpy(rows).bfloat16(), torch.from_numpy(queries).bfloat16()
    pool = _executor()
    fp32 = pool.submit(_fastest_s, lambda: rows @ queries).result()
    bf16 = pool.submit(_fastest_s, lambda: rows_b @ queries_b).result()
    log.info("batch scan: bfloat16 %.1f ms, float32 %.1f ms per 8192 rows x 32 queries", bf16 * 1e3, fp32 * 1e3)
    return bf16 * 1.5 <= fp32


def _fastest_s(fn: Callable[[], object]) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


class Bf16Copy:
    """A bfloat16 copy of an index's rows, with the largest rounding residual and norm its bound needs.

    Rows added to the index are converted on the next :meth:`synced`; :meth:`move` follows a removal's moves.
    Readers may call :meth:`synced` concurrently (a lock serialises the conversion); the index's writers lock
    keeps :meth:`move` apart from them."""

    def __init__(self, dim: int) -> None:
        import torch

        self._rows = torch.empty((0, dim), dtype=torch.bfloat16)
        self.size = 0  # rows converted, each equal to the index's row of the same number
        self.residual = 0.0  # largest |x - x~| of a converted row
        self.norm = 0.0  # largest |x| or |x~| of a converted row
        self._lock = threading.Lock()

    def synced(self, vectors: np.ndarray) -> tuple[torch.Tensor, float, float]:
        """(the copy of ``vectors``' rows, residual, norm), converting the rows added since the last call."""
        with self._lock:
            if len(vectors) > self.size:
                self._append(vectors[self.size :])
            return self._rows[: len(vectors)], self.residual, self.norm

    def move(self, holes: np.ndarray, movers: np.ndarray, keep: int) -> None:
        """Rows ``movers`` went to ``holes`` and the index now holds ``keep`` rows (as FlatIndex.remove does)."""
        import torch

        with self._lock:
            converted = movers < self.size
            self._rows[torch.from_numpy(holes[converted])] = self._rows[torch.from_numpy(movers[converted])]
            stale = holes[~converted]  # a hole whose new row was never converted: the copy ends before it
            self.size = int(min(self.size, keep, stale.min() if len(stale) else keep))

    def _append(self, vectors: np.ndarray) -> None:
        import torch

        need = self.size + len(vectors)
        if need > len(self._rows):
            grown = torch.empty((max(need, len(self._rows) + len(self._rows) // _GROWTH), vectors.shape[1]))
            grown = grown.bfloat16()
            grown[: self.size] = self._rows[: self.size]
            self._rows = grown
        for start in range(0, len(vectors), BLOCK_ROWS):
            chunk = torch.from_numpy(np.ascontiguousarray(vectors[start : start + BLOCK_ROWS]))
            rounded = chunk.bfloat16()
            self._rows[self.size : self.size + len(chunk)] = rounded
            back = rounded.float()
            self.residual = max(self.residual, float((chunk - back).norm(dim=1).max()))
            self.norm = max(self.norm, float(chunk.norm(dim=1).max()), float(back.norm(dim=1).max()))
            self.size += len(chunk)


def scan_topk_bf16(
    copy: Bf16Copy, vectors: np.ndarray, queries: np.ndarray, k: int, *, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (nq, k), best first: the same answer as ``scan.scan_topk`` (exact float32 scores)."""
    import torch

    nq = len(queries)
    scores, rows = np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
    finite = np.isfinite(queries).all(axis=1)
    if not finite.any():
        return scores, rows
    queries = np.ascontiguousarray(queries[finite], dtype=np.float32)
    rows_b, residual, norm = copy.synced(vectors)
    queries_b = torch.from_numpy(queries).bfloat16()
    error = _error_bound(queries, queries_b, residual, norm)
    by_query = queries_b.T.contiguous()
    parts = min(search_threads(), max(1, len(vectors) // BLOCK_ROWS))
    edges = np.linspace(0, len(vectors), parts + 1).astype(np.int64)
    futures = [
        _executor().submit(_candidates, rows_b, by_query, k, error, mask, int(a), int(b))
        for a, b in itertools.pairwise(edges)
    ]
    found = [future.result() for future in futures]
    approx, row, query = (np.concatenate([part[i] for part in found]) for i in range(3))
    keep = approx >= _threshold(_kth_best(approx, row, query, len(queries), k), error)[query]
    exact = np.einsum("ij,ij->i", vectors[row[keep]], queries[query[keep]])
    scores[finite], rows[finite] = _top_k(exact, row[keep], query[keep], len(queries), k)
    return scores, rows


def _error_bound(queries: np.ndarray, queries_b: torch.Tensor, residual: float, norm: float) -> np.ndarray:
    """Per query, how far a bfloat16 score's float32 sum may be from the exact inner product (see the module)."""
    d = queries.shape[1]
    q_norm = np.linalg.norm(queries, axis=1).astype(np.float64)
    back = queries_b.float().numpy()
    q_residual = np.linalg.norm(queries - back, axis=1).astype(np.float64)
    q_norm = np.maximum(q_norm, np.linalg.norm(back, axis=1))
    rounding = q_norm * residual + q_residual * norm
    sums = 3 * d * _SUM * q_norm * norm  # the copy's float32 sums, our float32 rescoring and the reference's
    return (rounding + sums) * 1.01 + 1e-6  # the norms and residuals were themselves computed in float32


def _threshold(kth: np.ndarray, error: np.ndarray) -> np.ndarray:
    """The lowest approximate score of a row that may still beat an exact k-th best whose approximation is ``kth``.

    Exact scores lie within ``error + _OUT |approx|`` of their approximations: the exact k-th best is at least
    ``low = kth - error - _OUT |kth|``, and a row can reach it only if ``approx + error + _OUT |approx| >= low``."""
    with np.errstate(invalid="ignore"):
        low = kth - error - _OUT * np.abs(kth)
        gap = low - error
        out = np.where(gap >= 0, gap / (1 + _OUT), gap / (1 - _OUT))
    return np.where(np.isneginf(kth), -np.inf, np.nextafter(out, -np.inf)).astype(np.float64)


def _as_float32_below(values: np.ndarray) -> np.ndarray:
    """float32 values no greater than ``values`` (a plain cast may round up, past a candidate's score)."""
    cast = values.astype(np.float32)
    return np.where(cast > values, np.nextafter(cast, np.float32(-np.inf)), cast)


def _candidates(
    rows_b: torch.Tensor,
    by_query: torch.Tensor,
    k: int,
    error: np.ndarray,
    mask: np.ndarray | None,
    start: int,
    stop: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(approximate score, row, query) of every row of ``start:stop`` that may be in a query's exact top k.

    Block by block, like the float32 scan: a row leaves its block only when it beats the threshold set by the k-th
    best approximate score so far (which only rises), and the pool is cut to the threshold as it rises."""
    nq = by_query.shape[1]
    best = np.full((nq, k), -np.inf, dtype=np.float32)  # the k best approximate scores per query so far
    kth = np.full(nq, -np.inf)
    bar = np.full(nq, -np.inf, dtype=np.float32)  # the lowest float32 score that may rank, from kth
    approx, row, query = np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64)
    at = start
    while at < stop:
        size = BLOCK if at > start else max(SEED_ROWS, k)
        block = rows_b[at : min(at + size, stop)]
        scores = (block @ by_query).float().numpy()  # (rows, nq): numpy compares float32 ~10x faster than torch bf16
        if mask is not None:
            scores[~mask[at : at + len(block)]] = -np.inf
        if len(block) >= k and np.isneginf(kth).any():  # the block's k-th best: that of all so far is at least it
            kth = np.maximum(kth, np.partition(scores, len(block) - k, axis=0)[len(block) - k])
            bar = _as_float32_below(_threshold(kth, error))
        new_row, new_query = above(scores, bar)
        if len(new_row):  # the bar rises with the k-th best, and the pool is cut to it
            new_scores = scores[new_row, new_query]
            best = _best_with(best, new_scores, new_query)
            kth = np.maximum(kth, best.min(axis=1))
            limit = _threshold(kth, error)
            approx = np.concatenate([approx, new_scores])
            row, query = np.concatenate([row, new_row + at]), np.concatenate([query, new_query])
            keep = approx >= limit[query]
            approx, row, query = approx[keep], row[keep], query[keep]
            bar = _as_float32_below(limit)
        at += len(block)
    return approx, row, query


def _best_with(best: np.ndarray, scores: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The (nq, k) best per query (unordered, -inf pads) of ``best`` and the new ``scores`` of queries ``query``.
    Only values: the k-th best sets the bar, and the pool keeps every row above it (a sort of the pool per block
    took 12% of a batch)."""
    nq, k = best.shape
    order = np.argsort(query, kind="stable")
    counts = np.bincount(query, minlength=nq)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    merged = np.full((nq, k + int(counts.max())), -np.inf, dtype=np.float32)
    merged[:, :k] = best
    merged[query[order], k + rank] = np.where(np.isfinite(scores[order]), scores[order], -np.inf)
    return np.partition(merged, merged.shape[1] - k, axis=1)[:, -k:]


def _kth_best(scores: np.ndarray, row: np.ndarray, query: np.ndarray, nq: int, k: int) -> np.ndarray:
    """Per query, the k-th best of its ``scores`` (-inf for a query holding fewer than k)."""
    return _top_k(scores, row, query, nq, k)[0][:, k - 1].astype(np.float64)


def _top_k(scores: np.ndarray, row: np.ndarray, query: np.ndarray, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(nq, k) best scores and their rows per query, best first, the earlier row first among equal scores."""
    finite = np.isfinite(scores)
    scores, row, query = scores[finite], row[finite], query[finite]
    order = np.lexsort((row, -scores, query))
    counts = np.bincount(query, minlength=nq)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out_scores, out_rows = np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    take = rank < k
    chosen = order[take]
    out_scores[query[chosen], rank[take]] = scores[chosen]
    out_rows[query[chosen], rank[take]] = row[chosen]
    return out_scores, out_rows


def _one_thread() -> None:
    """Pool threads run their torch products on one core each: the scan splits the rows over the pool itself.
    OpenMP's team size is per thread; torch.set_num_threads would change every thread's (the encoder's too)."""
    import torch

    torch.get_num_threads()  # torch sets this thread's OpenMP team size on its first call: set ours after it
    gomp = _openmp()
    if gomp is not None:
        gomp.omp_set_num_threads(1)


def _openmp() -> ctypes.CDLL | None:
    import torch

    found = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    try:
        return ctypes.CDLL(found[0]) if found else ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None


def _executor() -> ThreadPoolExecutor:
    """One worker per core a scan may use, each with torch on one thread."""
    global _pool, _pool_workers
    with _pool_lock:
        workers = max(search_threads(), os.cpu_count() or 1)
        if _pool is None or _pool_workers < workers:
            _pool, _pool_workers = (
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bf16-scan", initializer=_one_thread),
                workers,
            )
        return _pool
