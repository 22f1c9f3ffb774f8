"""The collection at scale: open -> first answer, peak memory, upload -> searchable, search during uploads.

    PYTHONPATH=. python benchmarks/bench_collection.py [--n 1000000] [--dim 768] [--data /tmp/bench-1m]

Writes a synthetic collection with ``python -m clip_search.testing fill`` (kept in --data for re-runs), then
measures each figure in a fresh child process, against a floor measured in the same run:
- open: seconds from opening the collection to the first answered query, and peak RSS over the process's
  baseline (same imports, empty collection), as a ratio to the bytes of the vectors (target <= 1.3x);
- upload -> searchable: one row committed to the table + added to the index, at 1k rows and at N;
- search during a burst of uploads: median single-query latency while another thread commits rows, / idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, threading, time, hashlib
import numpy as np
from clip_search.collection import Collection, CollectionTable, NewImage
mode, path, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
rng = np.random.default_rng(1)
def unit(n):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
def image(i):
    sha = hashlib.sha256(f"bench-upload:{time.time_ns()}:{i}".encode()).hexdigest()
    return NewImage(key=f"images/{sha[:2]}/{sha}.jpg", sha256=sha, width=1, height=1, embedding=unit(1)[0])
started = time.perf_counter()
c = Collection(CollectionTable(path), model=f"synthetic-{dim}d", model_id=f"synthetic-{dim}d", background=False,
               refresh_s=3600)
c.search(unit(1), 10)
opened = time.perf_counter() - started
out = {"n": len(c), "open_s": opened, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
       "import_peak_gb": base}
if mode == "full":
    q = unit(60)
    idle = []
    for row in q:
        t = time.perf_counter(); c.search(row[None], 10); idle.append(time.perf_counter() - t)
    adds = []
    for i in range(20):
        t = time.perf_counter(); c.add([image(i)]); adds.append(time.perf_counter() - t)
    stop = threading.Event()
    def burst():
        i = 100
        while not stop.is_set():
            c.add([image(i)]); i += 1
    thread = threading.Thread(target=burst); thread.start()
    busy = []
    for row in q:
        t = time.perf_counter(); c.search(row[None], 10); busy.append(time.perf_counter() - t)
    stop.set(); thread.join()
    out.update(search_idle_ms=1e3 * float(np.median(idle)), search_busy_ms=1e3 * float(np.median(busy)),
               add_ms=1e3 * float(np.median(adds)))
print(json.dumps(out))
"""


def child(mode: str, path: Path, dim: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), str(dim)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def fill(data: Path, n: int, dim: int) -> None:
    cmd = [sys.executable, "-m", "clip_search.testing", "fill", str(data), "--n", str(n), "--dim", str(dim)]
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--data", type=Path, default=None, help="keep the synthetic collection here for re-runs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-collection-"))
    small = data.parent / f"{data.name}-1k"
    fill(data, args.n, args.dim)
    fill(small, 1000, args.dim)
    empty = Path(tempfile.mkdtemp(prefix="bench-empty-"))
    vector_gb = args.n * args.dim * 4 / 1e9
    for _ in range(args.rounds):
        floor = child("open", empty, args.dim)
        big = child("full", data, args.dim)
        one_k = child("full", small, args.dim)
        print(
            f"N={big['n']:,}: open->first answer {big['open_s']:.2f} s; peak RSS {big['peak_gb']:.2f} GB = "
            f"{(big['peak_gb'] - floor['peak_gb']) / vector_gb:.2f}x the {vector_gb:.2f} GB of vectors over the "
            f"empty process ({floor['peak_gb']:.2f} GB); search idle {big['search_idle_ms']:.1f} ms, during "
            f"uploads {big['search_busy_ms']:.1f} ms ({big['search_busy_ms'] / big['search_idle_ms']:.2f}x); "
            f"upload->searchable {big['add_ms']:.1f} ms at N vs {one_k['add_ms']:.1f} ms at 1k "
            f"({big['add_ms'] / one_k['add_ms']:.2f}x)",
            flush=True,
        )
    print(time.strftime("%Y-%m-%d"), args.rounds, "rounds above (each adds a few rows to both collections)")


if __name__ == "__main__":
    main()
