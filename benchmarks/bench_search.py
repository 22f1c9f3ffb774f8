"""Flat scan speed against the memory-bandwidth floor: one query, a batch of 32, 1 vs 2 threads, and FAISS's scan.

    PYTHONPATH=. python benchmarks/bench_search.py [--n 100000 1000000] [--dim 768] [--rounds 3] [--clients 4]

The floor is one pass over the same N x dim float32 array (``np.max``, split over as many threads as the scan
uses), measured in each round beside the scans, so ratios hold on a shared, noisy machine; both sides take their
fastest run. A ratio is floor / time: 1.0 means the scan reads the vectors as fast as the memory delivers them.
A batch of 32 also gets a compute floor (its matrix product on cache-resident rows, one core), in bfloat16 where
batches go through the bfloat16 copy (``index.batch_scan``; the float32 batch is printed beside it); then also, per
thread count, the bfloat16 product alone streamed over the whole copy (the best a batch through it can do) and
the product on cached rows on that many cores at once (how well the cores scale together). Vectors are
clustered unit vectors (``clip_search.synthetic``) held by the real ``FlatIndex``. Also prints FAISS's own
``IndexFlatIP`` scan over the same storage, and the throughput of ``--clients`` threads searching at once, as the
app's visitors do.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from clip_search.collection import bf16_scan
from clip_search.collection.scan import search_threads, set_search_threads
from clip_search.collection.vector_index import FlatIndex
from clip_search.synthetic import clustered_vectors

K = 10
BATCH = 32
FILL_ROWS = 65_536  # rows generated and added at a time (the vectors are never held twice)


def build_index(n: int, dim: int = 768, *, clusters: int = 1000) -> FlatIndex:
    """A FlatIndex of ``n`` clustered unit vectors, filled batch by batch into reserved storage."""
    index = FlatIndex(dim)
    index.reserve(n)
    for start in range(0, n, FILL_ROWS):
        count = min(FILL_ROWS, n - start)
        index.add(np.arange(start, start + count), clustered_vectors(count, dim, clusters=clusters, start=start))
    return index


def queries_for(count: int, dim: int = 768, *, clusters: int = 1000) -> np.ndarray:
    """Fresh points of the same clustered distribution (rows far past any collection's own)."""
    return clustered_vectors(count, dim, clusters=clusters, start=10**9)


def best_s(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of ``repeat`` timed calls after one warm-up call, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def fastest_s(fn: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray]) -> float:
    """Fastest call of ``fn`` over ``inputs`` (queries of equal cost), after one warm-up call, in seconds."""
    fn(inputs[0])
    best = float("inf")
    for item in inputs:
        started = time.perf_counter()
        fn(item)
        best = min(best, time.perf_counter() - started)
    return best


def bandwidth_floor_s(vectors: np.ndarray, threads: int = 1) -> float:
    """Seconds of the fastest pass over every byte of ``vectors`` split over ``threads`` threads (a max, which
    costs nothing per byte): what no scan of the array on that many cores can beat."""
    parts = np.array_split(vectors.reshape(-1), threads)
    with ThreadPoolExecutor(threads) as pool:
        return best_s(lambda: list(pool.map(np.max, parts)), repeat=5)


def compute_floor_s(vectors: np.ndarray, queries: np.ndarray) -> float:
    """Seconds of the floating-point work of scanning ``vectors`` for ``queries`` alone: the same matrix product
    on a block of rows small enough to stay in the core's cache, repeated until it covers every row, on one
    thread. A batch of 32 does 16 flops per byte it reads, which a CPU core cannot do at memory speed: this, not
    the bandwidth floor, bounds a batch on a core."""
    rows = 512
    block = np.ascontiguousarray(vectors[:rows])
    by_query = np.ascontiguousarray(queries.T)
    repeats = -(-len(vectors) // rows)
    previous = search_threads()
    set_search_threads(1)
    try:
        return best_s(lambda: [block @ by_query for _ in range(repeats)])
    finally:
        set_search_threads(previous)


def bf16_compute_floor_s(vectors: np.ndarray, queries: np.ndarray, threads: int = 1) -> float:
    """The same as :func:`compute_floor_s` for the bfloat16 product a batch runs through the copy
    (``clip_search.collection.bf16_scan``), on ``threads`` of the scan's own one-thread workers at once, each
    doing its share of the rows: what the cores can compute together (two vCPUs may share more than memory)."""
    rows = 512
    block = torch.from_numpy(np.ascontiguousarray(vectors[:rows])).bfloat16()
    by_query = torch.from_numpy(np.ascontiguousarray(queries.T)).bfloat16()
    repeats = -(-len(vectors) // (rows * threads))
    return _on_workers(lambda: [block @ by_query for _ in range(repeats)], threads)


def bf16_product_s(index: FlatIndex, queries: np.ndarray, threads: int = 1) -> float:
    """Seconds of the bfloat16 product alone over the index's whole copy, streamed from memory block by block and
    split over ``threads`` workers, with no selection: the floor of a batch through the copy."""
    rows, _, _ = index._bf16.synced(index._vectors())
    by_query = torch.from_numpy(np.ascontiguousarray(queries.T)).bfloat16()
    edges = np.linspace(0, len(rows), threads + 1).astype(int)

    def part(a: int, b: int) -> None:
        for start in range(a, b, bf16_scan.BLOCK):
            rows[start : min(start + bf16_scan.BLOCK, b)] @ by_query

    pool = bf16_scan._executor()
    return best_s(lambda: [f.result() for f in [pool.submit(part, a, b) for a, b in itertools.pairwise(edges)]])


def _on_workers(fn: Callable[[], object], threads: int) -> float:
    """Fastest time of ``fn`` run on ``threads`` of the scan's workers at once (all started together)."""
    pool = bf16_scan._executor()
    return best_s(lambda: [f.result() for f in [pool.submit(fn) for _ in range(threads)]])


def scan_round(
    index: FlatIndex,
    queries: np.ndarray,
    *,
    threads: Sequence[int] = (1, 2),
    with_faiss: bool = True,
    single: int = 20,
) -> dict:
    """One round, per thread count: the bandwidth floor on that many threads, one query (fastest of ``single``)
    and one batch of 32 (fastest of 3), ours and (``with_faiss``) FAISS's scan of the same storage; plus the
    compute floor of the batch on one core. Seconds, keyed by thread count. Fastest runs on both sides: a loaded
    machine only ever slows a run down."""
    vectors = index._vectors()
    batch, alone = queries[:BATCH], [q[None] for q in queries[:single]]
    out: dict = {"compute_floor_s": compute_floor_s(vectors, batch), "bf16": bf16_scan.batches_use_bf16()}
    if out["bf16"]:
        out["bf16_compute_floor_s"] = bf16_compute_floor_s(vectors, batch)
    keys = ("floor_s", "single_s", "batch_s", "fp32_batch_s", "bf16_floor_s", "bf16_product_s")
    for key in (*keys, "faiss_single_s", "faiss_batch_s"):
        out[key] = {}
    previous = search_threads()
    try:
        for count in threads:
            out["floor_s"][count] = bandwidth_floor_s(vectors, count)
            set_search_threads(count)
            out["single_s"][count] = fastest_s(lambda q: index.search(q, K), alone)
            out["batch_s"][count] = best_s(lambda: index.search(batch, K))
            if out["bf16"] and index._bf16 is not None:  # the batch made the copy
                out["bf16_floor_s"][count] = bf16_compute_floor_s(vectors, batch, count)
                out["bf16_product_s"][count] = bf16_product_s(index, batch, count)
            if out["bf16"]:
                bf16_scan.set_batch_scan("fp32")
                out["fp32_batch_s"][count] = best_s(lambda: index.search(batch, K), repeat=1)
                bf16_scan.set_batch_scan("auto")
            if with_faiss:
                out["faiss_single_s"][count] = fastest_s(lambda q: index._index.search(q, K), alone[:5])
                out["faiss_batch_s"][count] = best_s(lambda: index._index.search(batch, K), repeat=1)
    finally:
        set_search_threads(previous)
    return out


def visitors_per_s(index: FlatIndex, queries: np.ndarray, clients: int, threads: int) -> float:
    """Single-query searches per second with ``clients`` threads searching at once."""
    previous = search_threads()
    set_search_threads(threads)
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            started = time.perf_counter()
            list(pool.map(lambda q: index.search(q[None], K), queries))
            return len(queries) / (time.perf_counter() - started)
    finally:
        set_search_threads(previous)


def _print_round(n: int, r: dict) -> None:
    flops = r.get("bf16_compute_floor_s", r["compute_floor_s"])
    cells = [f"N={n:,}: compute floor of a batch on 1 core {r['compute_floor_s'] * 1e3:.1f} ms in float32"]
    if r["bf16"]:
        cells[0] += f", {flops * 1e3:.1f} ms in bfloat16 (batches go through the bfloat16 copy)"
    for count, single in r["single_s"].items():
        floor, batch = r["floor_s"][count], r["batch_s"][count]
        cells.append(
            f"{count} thr: bandwidth floor {floor * 1e3:.1f} ms, one query {single * 1e3:.1f} ms "
            f"({floor / single:.2f}x), "
            f"batch of {BATCH} {batch * 1e3:.1f} ms ({floor / batch:.2f}x the bandwidth floor, "
            f"{flops / batch:.2f}x the compute floor)"
        )
        if count in r["fp32_batch_s"]:
            cells[-1] += f", float32 batch {r['fp32_batch_s'][count] * 1e3:.1f} ms"
        if count in r["bf16_product_s"]:
            product, together = r["bf16_product_s"][count], r["bf16_floor_s"][count]
            cells[-1] += (
                f"; the bfloat16 product alone over the copy {product * 1e3:.1f} ms ({floor / product:.2f}x the "
                f"bandwidth floor: no batch through the copy can do better), on cached rows {together * 1e3:.1f} ms"
                f" ({count} core(s) at once: {flops / together:.2f}x one core's speed)"
            )
        if count in r["faiss_single_s"]:
            cells.append(
                f"FAISS {count} thr: {r['faiss_single_s'][count] * 1e3:.1f} / {r['faiss_batch_s'][count] * 1e3:.1f} ms"
            )
    print("; ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--no-faiss", action="store_true", help="skip FAISS's own scan (slow for batches here)")
    args = parser.parse_args()
    queries = queries_for(200, args.dim)
    for n in args.n:
        index = build_index(n, args.dim)
        for _ in range(args.rounds):
            _print_round(n, scan_round(index, queries, with_faiss=not args.no_faiss and n <= 200_000))
        rates = {t: visitors_per_s(index, queries, args.clients, t) for t in (1, 2)}
        print(f"N={n:,}: {args.clients} visitors at once: " + ", ".join(f"{t} thr {q:.0f}/s" for t, q in rates.items()))
        del index
    print(time.strftime("%Y-%m-%d"), f"k={K}; ratio = floor time / scan time (1.0 = at memory bandwidth)")


if __name__ == "__main__":
    main()
