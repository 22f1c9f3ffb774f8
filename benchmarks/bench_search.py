"""Search speed: FAISS with 1 vs 2 threads and numpy, for one query alone and for visitors searching at once.

    python benchmarks/bench_search.py [--n 10000 100000] [--dim 768] [--queries 200] [--clients 4]

Prints median single-query latencies, 32-query batch times, and the throughput (queries/s) of ``--clients``
threads searching at the same time, as the app's visitors do. Figures drift between runs: compare ratios
from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from clip_search.collection.vector_index import FlatIndex


def _median_ms(fn, queries: np.ndarray) -> float:
    for q in queries[:10]:
        fn(q)
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{'vectors':>9} {'faiss 1 thr':>12} {'faiss 2 thr':>12} {'numpy':>9} {'batch32 1thr':>13} {'batch32 2thr':>13}"
    )
    for n in args.n:
        xb = rng.standard_normal((n, args.dim), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        index = FlatIndex(args.dim)
        index.add(np.arange(1, n + 1), xb)

        def faiss_one(q: np.ndarray, index: FlatIndex = index) -> None:
            index.search(q[None], args.k)

        def numpy_one(q: np.ndarray, xb: np.ndarray = xb) -> None:
            scores = xb @ q
            top = np.argpartition(-scores, args.k)[: args.k]
            top[np.argsort(-scores[top])]

        row = []
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            row.append(_median_ms(faiss_one, queries))
        row.append(_median_ms(numpy_one, queries))
        batch = queries[:32]
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            start = time.perf_counter()
            for _ in range(5):
                index.search(batch, args.k)
            row.append((time.perf_counter() - start) / 5 * 1000)
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                start = time.perf_counter()
                list(pool.map(faiss_one, queries))
                row.append(len(queries) / (time.perf_counter() - start))
        print(
            f"{n:>9} {row[0]:>10.2f}ms {row[1]:>10.2f}ms {row[2]:>7.2f}ms {row[3]:>11.1f}ms {row[4]:>11.1f}ms "
            f"{row[5]:>15.0f}/s {row[6]:>15.0f}/s"
        )


if __name__ == "__main__":
    main()
