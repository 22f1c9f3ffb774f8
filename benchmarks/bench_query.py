"""Filtered, sorted and paged queries at scale, against the unfiltered query measured in the same run.

    PYTHONPATH=. python benchmarks/bench_query.py [--n 100000] [--dim 768] [--data /tmp/bench-query-100k]
        [--part all|filters|hidden]

Writes a synthetic collection (``python -m clip_search.testing fill``: 10 folders plus uploads, 10 caption words,
three orientations, dates over a year; kept in --data for re-runs), opens it as the engine does, and times the
median of 30 single queries for each case, as milliseconds and as a ratio to the unfiltered flat query (the
floor). "cold" is the first query after a commit (the filter reads the table's small columns again); "warm" is
the next page of the same query (the matching ids are cached for that table version).

Then the cost of hidden rows (private and held uploads) for the unfiltered query: N rows are made private in the
table (commits followed by the collection's refresh, as a replica sees them), and the public's query (which never
sees them) and a query carrying the key of the owner of ten of them are timed in turn with the operator's query
(which sees every row, so no hidden row is handled: the floor of that state). The rows are made public again at
the end, so a re-run starts from the same table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clip_search.collection import Collection

HIDDEN = (0, 100, 1000, 10_000, 50_000)
OWNER = "bench-owner"

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
    parser.add_argument("--part", choices=["all", "filters", "hidden"], default="all", help="which cases to time")
    args = parser.parse_args()
    data = args.data or Path(f"/tmp/bench-query-{args.n // 1000}k")
    fill = [sys.executable, "-m", "clip_search.testing", "fill", str(data), "--n", str(args.n), "--dim", str(args.dim)]
    subprocess.run(fill, check=True)

    from clip_search.collection import Collection, CollectionTable
    from clip_search.synthetic import clustered_vectors

    collection = Collection(
        CollectionTable(str(data)), model=f"synthetic-{args.dim}d", model_id=f"synthetic-{args.dim}d", refresh_s=3600
    )
    queries = clustered_vectors(30, args.dim, clusters=1000, seed=0, start=10**9)
    if args.part in ("all", "filters"):
        _filters(collection, queries, args.dim)
    if args.part in ("all", "hidden"):
        _hidden_rows(collection, queries)
    collection.close()


def _filters(collection: Collection, queries: np.ndarray, dim: int) -> None:
    from clip_search.search.filters import Filters

    floor = _median_ms(lambda q: collection.search(q[None], 12), queries)
    print(f"{len(collection)} images, {dim}-d; unfiltered flat query (floor): {floor:.1f} ms")
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


def _set_private(collection: Collection, ids: np.ndarray) -> None:
    """Make these rows private (a few of them the bench owner's), everything else public; then refresh."""
    table = collection.table._table
    table.update(where="visibility IS NOT NULL", values={"visibility": None, "owner_hash": None})
    if len(ids):
        listed = ", ".join(str(int(i)) for i in ids)
        table.update(where=f"id IN ({listed})", values={"visibility": "private", "owner_hash": "someone"})
        mine = ", ".join(str(int(i)) for i in ids[:10])
        table.update(where=f"id IN ({mine})", values={"owner_hash": OWNER})
    collection.refresh()


def _interleaved_ms(fns: list, queries: np.ndarray) -> list[float]:
    """Median ms of each function, timed in turn on every query (a loaded machine slows them alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for q in queries:
        for fn, spent in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn(q)
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) * 1000 for spent in times]


def _hidden_rows(collection: Collection, queries: np.ndarray) -> None:
    """Per number of private rows: the public's query and a key holder's, each against the same query by the
    operator (who sees every row, so no hidden row is handled at all) timed in turn with them."""
    from clip_search.collection.visibility import OPERATOR, PUBLIC_VIEWER, owned_by

    everyone = collection.matching(None)[0]
    rng = np.random.default_rng(0)
    print(f"{'hidden rows':32s} {'all ms':>8s} {'public':>8s} {'x all':>8s} {'owner':>8s} {'x all':>8s}")
    for n in HIDDEN:
        _set_private(collection, rng.choice(everyone, size=n, replace=False))
        assert collection.count() == len(everyone) - n
        viewers = (OPERATOR, PUBLIC_VIEWER, owned_by(OWNER))
        fns = [lambda q, v=v: collection.search(q[None], 12, viewer=v) for v in viewers]
        every, public, owner = _interleaved_ms(fns, np.concatenate([queries, queries]))
        print(
            f"{f'{n} private ({n / len(everyone):.1%})':32s} {every:8.1f} {public:8.1f} {public / every:8.2f} "
            f"{owner:8.1f} {owner / every:8.2f}"
        )
    _set_private(collection, everyone[:0])


if __name__ == "__main__":
    main()
