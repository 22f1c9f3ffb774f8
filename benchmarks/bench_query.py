"""Filtered, sorted and paged queries at scale, against the unfiltered query measured in the same run.

    PYTHONPATH=. python benchmarks/bench_query.py [--n 100000] [--dim 768] [--data /tmp/bench-query-100k]

Writes a synthetic collection (``python -m clip_search.testing fill``: 10 folders plus uploads, 10 caption words,
three orientations, dates over a year; kept in --data for re-runs), opens it as the engine does, and times the
median of 30 single queries for each case, as milliseconds and as a ratio to the unfiltered flat query (the
floor). "cold" is the first query after a commit (the filter reads the table's small columns again); "warm" is
the next page of the same query (the matching ids are cached for that table version).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = {
    "source = one folder (9.5%)": {"source": "/synthetic/folder3"},
    "source = upload (5%)": {"source": "upload"},
    "after a date (~50%)": {"after": "2025-06-01"},
    "caption word (10%)": {"caption": "beach"},
    "orientation (33%)": {"orientation": "portrait"},
    "folder + word + date (~0.5%)": {"source": "/synthetic/folder3", "caption": "dog", "after": "2025-03-01"},
}


def _median_ms(fn, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    data = args.data or Path(f"/tmp/bench-query-{args.n // 1000}k")
    fill = [sys.executable, "-m", "clip_search.testing", "fill", str(data), "--n", str(args.n), "--dim", str(args.dim)]
    subprocess.run(fill, check=True)

    from clip_search.collection import Collection, CollectionTable
    from clip_search.search.filters import Filters
    from clip_search.synthetic import clustered_vectors

    collection = Collection(
        CollectionTable(str(data)), model=f"synthetic-{args.dim}d", model_id=f"synthetic-{args.dim}d", refresh_s=3600
    )
    queries = clustered_vectors(30, args.dim, clusters=1000, seed=0, start=10**9)
    floor = _median_ms(lambda q: collection.search(q[None], 12), queries)
    print(f"{len(collection)} images, {args.dim}-d; unfiltered flat query (floor): {floor:.1f} ms")
    print(f"{'case':32s} {'cold ms':>8s} {'x floor':>8s} {'warm ms':>8s} {'x floor':>8s}")
    for name, conditions in CASES.items():
        where = Filters().narrowed(**conditions).where()

        def cold(q: np.ndarray, where: str | None = where) -> None:
            collection._filtered._cache.clear()  # as after a commit: the next filter reads the table again
            collection.search(q[None], 12, where=where)

        cold_ms = _median_ms(cold, queries)
        warm_ms = _median_ms(lambda q, where=where: collection.search(q[None], 24, where=where), queries)
        print(f"{name:32s} {cold_ms:8.1f} {cold_ms / floor:8.2f} {warm_ms:8.1f} {warm_ms / floor:8.2f}")

    def browse(_: np.ndarray) -> None:
        collection._filtered._cache.clear()
        ids, _ = collection.matching(None)
        collection.get_many(ids[::-1][:12].tolist())

    browse_ms = _median_ms(browse, queries[:10])
    print(f"{'browse newest, no query (cold)':32s} {browse_ms:8.1f} {browse_ms / floor:8.2f}")
    collection.close()


if __name__ == "__main__":
    main()
