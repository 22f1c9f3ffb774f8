"""Flat vs IVF: build time, peak memory, single-query latency and recall@10, at a million vectors.

From the repository root, with ``PYTHONPATH=.``:

    python benchmarks/bench_vector_index.py [--n 1000000] [--dim 768] [--clusters 1000] [--nprobe 4 8 16 32 64] [--save]
    python benchmarks/bench_vector_index.py --quick                          # n = 100,000
    python benchmarks/bench_vector_index.py --n 0 --real /tmp/imagenette-base.npy --nprobe 1 2 4 8 16
    python benchmarks/bench_vector_index.py --embed-imagenette MODEL_DIR OUT.npy [--limit 1000] [--cache-dir DIR]
    python benchmarks/bench_vector_index.py --n 0 --real OUT.npy --derive 1000000 --interleave

Synthetic vectors are clustered unit vectors generated batch by batch (65,536 rows at a time, never two full
copies). Each index is built in its own spawned child process, so its peak RSS (the kernel's high-water mark,
``ru_maxrss``; psutil for the current RSS) is its own; ``--save`` also times save, and load in a fresh child.
``--interleave`` builds both in one child instead and times each query on flat and then on IVF at every nprobe,
so a shared machine's changing load hits both sides of each speed-up alike. Latencies are medians over ~50 single
queries; recall@10 is against the flat index.

Vectors of real photos (``--real``): ``--embed-imagenette`` embeds the shared Imagenette photos once (through the
evaluation's embedding cache: resumable, and a re-run embeds nothing). Of a file's rows, ``--recall-queries``
(at most a tenth) are held out as queries and never indexed. ``--derive N`` then also builds a DERIVED set of N rows
from the others (not real photos: each base vector once as it is, then copies with gaussian noise whose norm is
``--derive-noise`` times the median distance between a base vector and its nearest neighbour, normalised), to see
IVF at a million rows with the real vectors' geometry; its queries are the same held-out real vectors.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_vector_index")

IMAGENETTE = Path("/work/shared/data/imagenette-val")
BATCH = 65_536  # rows per batch of the stream that fills an index (as the collection's table hands them over)
K = 10


# -- data ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a child process gets its vectors: a synthetic stream (regenerated identically in each child, so no
    process ever holds two copies), or a .npy file of real embeddings, as it is or *derived* to ``n`` rows.

    From a file, ``holdout`` rows picked at random are the queries and are never indexed (a query photo that is not
    in the collection); the others are the base rows. Derived (``derived=True``): row i is base row ``i % base``,
    exact for the first pass over the base rows and otherwise plus gaussian noise of norm ``noise``, normalised.
    """

    n: int
    dim: int
    clusters: int = 0
    noise: float = 1.0
    seed: int = 0
    path: str | None = None
    holdout: int = 0
    derived: bool = False

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) batches of BATCH rows; ids are the row numbers."""
        if self.path:
            yield from self._file_batches()
            return
        centres = self._centres()
        for at in range(0, self.n, BATCH):
            rng = np.random.default_rng([self.seed, 1, at])  # per batch: any batch can be regenerated alone
            rows = min(BATCH, self.n - at)
            yield np.arange(at, at + rows, dtype=np.int64), self._around(centres, rng, rows)

    def queries(self, count: int) -> np.ndarray:
        """Fresh points from the same distribution (synthetic), or the held-out rows (file)."""
        if self.path:
            data = np.load(self.path, mmap_mode="r")
            return np.ascontiguousarray(data[self.split()[1]], dtype=np.float32)
        return self._around(self._centres(), np.random.default_rng([self.seed, 2]), count)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(base rows, query rows) of the file, the same in every process."""
        total = np.load(self.path, mmap_mode="r").shape[0]
        held = np.sort(np.random.default_rng([self.seed, 2]).choice(total, self.holdout, replace=False))
        return np.setdiff1d(np.arange(total), held), held

    def base_vectors(self) -> np.ndarray:
        return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[self.split()[0]], dtype=np.float32)

    def sample(self, want: int) -> np.ndarray:
        """Rows to train an IVF on: random rows of a file as it is, else the head of the stream (synthetic rows are
        i.i.d.; each derived batch cycles through every base row)."""
        if self.path and not self.derived:
            base = self.split()[0]
            pick = np.sort(np.random.default_rng(3).choice(base, min(want, len(base)), replace=False))
            return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[pick], dtype=np.float32)
        parts, held = [], 0
        for _, vectors in self.batches():
            parts.append(vectors)
            held += len(vectors)
            if held >= want:
                break
        return np.concatenate(parts)[:want]

    def _file_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self.derived:
            data, base = np.load(self.path, mmap_mode="r"), self.split()[0]
            for at in range(0, self.n, BATCH):
                rows = np.ascontiguousarray(data[base[at : at + BATCH]], dtype=np.float32)
                yield np.arange(at, at + len(rows), dtype=np.int64), rows
            return
        origins = self.base_vectors()
        for at in range(0, self.n, BATCH):
            rows = np.arange(at, min(at + BATCH, self.n), dtype=np.int64)
            x = np.random.default_rng([self.seed, 4, at]).standard_normal((len(rows), self.dim), np.float32)
            x *= self.noise / np.sqrt(self.dim)
            x[rows < len(origins)] = 0  # the first copy of each base row is the row itself
            x += origins[rows % len(origins)]
            yield rows, _unit(x)

    def _centres(self) -> np.ndarray:
        return _unit(np.random.default_rng([self.seed, 0]).standard_normal((self.clusters, self.dim), np.float32))

    def _around(self, centres: np.ndarray, rng: np.random.Generator, rows: int) -> np.ndarray:
        """Centre + gaussian noise of norm ~noise, normalised; built in place (one batch-sized array, no temps)."""
        x = rng.standard_normal((rows, self.dim), np.float32)
        x *= self.noise / np.sqrt(self.dim)
        which = rng.integers(0, len(centres), rows)
        for at in range(0, rows, 4096):
            x[at : at + 4096] += centres[which[at : at + 4096]]
        return _unit(x)


def nearest_neighbour_distance(vectors: np.ndarray) -> float:
    """Median Euclidean distance from a row to its nearest other row: the scale of the derived set's noise."""
    best = np.empty(len(vectors), dtype=np.float32)
    for at in range(0, len(vectors), 1024):
        scores = vectors[at : at + 1024] @ vectors.T
        scores[np.arange(len(scores)), np.arange(at, at + len(scores))] = -np.inf
        best[at : at + 1024] = scores.max(axis=1)
    return float(np.median(np.sqrt(np.maximum(0.0, 2 - 2 * best))))


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


# -- one child process per index --------------------------------------------------------------------------------------


@dataclass
class Job:
    kind: str  # "flat" or "ivf"
    source: Source
    queries: np.ndarray  # recall queries; the first `latency_queries` also time single-query latency
    latency_queries: int = 50
    nprobes: list[int] = field(default_factory=list)
    nlist: int = 0
    threads: int = 0
    save_to: str | None = None  # also time save, then a fresh child times load


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _median_ms(search, queries: np.ndarray) -> float:
    for q in queries[:5]:
        search(q[None])
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run_job(job: Job) -> dict:
    """In a fresh process: build the index from the stream, then measure memory, latency and answers."""
    from clip_search.collection.scan import set_search_threads
    from clip_search.collection.vector_index import make_index

    set_search_threads(job.threads)
    result: dict = {"baseline_rss": _rss()}
    started = time.perf_counter()
    if job.kind == "flat":
        index = make_index("flat", job.source.dim, expected=job.source.n)
        result["add_s"] = _fill(index, job.source.batches())
    else:
        index = _build_ivf(job, result)
    result["build_s"] = time.perf_counter() - started
    result["peak_rss"], result["rss"] = _peak_rss(), _rss()
    log.info("%s built in %.1f s, peak RSS %.2f GB", job.kind, result["build_s"], result["peak_rss"] / 1e9)
    timed = job.queries[: job.latency_queries]
    result["timed"] = len(timed)
    if job.kind == "flat":
        result["ms"] = _median_ms(lambda q: index.search(q, K), timed)
        result["faiss_ms"] = _median_ms(lambda q: index._index.search(q, K), timed)
        result["bandwidth"] = _bandwidth(index._vectors())
        result["found"] = index.search(job.queries, K)[1]
    else:
        result["ms"], result["found"] = {}, {}
        for nprobe in job.nprobes:
            index.nprobe = nprobe
            result["ms"][nprobe] = _median_ms(lambda q: index.search(q, K), timed)
            result["found"][nprobe] = index.search(job.queries, K)[1]
    if job.save_to:
        started = time.perf_counter()
        index.save(Path(job.save_to))
        result["save_s"] = time.perf_counter() - started
    return result


def run_together(job: Job) -> dict:
    """In a fresh process: both indexes, then every timed query on flat and on IVF at each nprobe, one after the
    other, so a change in the machine's load hits both sides of each speed-up alike (peak RSS is of the two)."""
    from clip_search.collection.scan import set_search_threads
    from clip_search.collection.vector_index import make_index

    set_search_threads(job.threads)
    flat: dict = {"baseline_rss": _rss()}
    started = time.perf_counter()
    index = make_index("flat", job.source.dim, expected=job.source.n)
    flat["add_s"] = _fill(index, job.source.batches())
    flat["build_s"] = time.perf_counter() - started
    ivf: dict = {"baseline_rss": flat["baseline_rss"]}
    started = time.perf_counter()
    approx = _build_ivf(job, ivf)
    ivf["build_s"] = time.perf_counter() - started
    for result in (flat, ivf):
        result["peak_rss"], result["rss"], result["together"] = _peak_rss(), _rss(), True
    timed = job.queries[: job.latency_queries]
    searches = {"flat": lambda q: index.search(q, K), "faiss": lambda q: index._index.search(q, K)}
    for nprobe in job.nprobes:
        searches[nprobe] = lambda q, n=nprobe: _search_at(approx, n, q)
    times = _interleaved_ms(searches, timed)
    flat.update(timed=len(timed), ms=times["flat"], faiss_ms=times["faiss"], bandwidth=_bandwidth(index._vectors()))
    flat["found"] = index.search(job.queries, K)[1]
    ivf["ms"] = {nprobe: times[nprobe] for nprobe in job.nprobes}
    ivf["found"] = {nprobe: _search_at(approx, nprobe, job.queries)[1] for nprobe in job.nprobes}
    return {"flat": flat, "ivf": ivf}


def _search_at(index, nprobe: int, queries: np.ndarray):
    index.nprobe = nprobe
    return index.search(queries, K)


def _interleaved_ms(searches: dict, queries: np.ndarray) -> dict:
    """Median ms of each search over ``queries``, query by query through all of them (after a warm-up)."""
    for q in queries[:5]:
        for search in searches.values():
            search(q[None])
    times: dict = {name: [] for name in searches}
    for q in queries:
        for name, search in searches.items():
            started = time.perf_counter()
            search(q[None])
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(spent) * 1000 for name, spent in times.items()}


def _fill(index, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> float:
    """Add batch by batch; returns the seconds spent in ``add`` alone (not generating the data)."""
    spent = 0.0
    for ids, vectors in batches:
        started = time.perf_counter()
        index.add(ids, vectors)
        spent += time.perf_counter() - started
        del ids, vectors  # else the last batch lives on while the next one is generated
    return spent


def _build_ivf(job: Job, result: dict):
    """Train on a sample of the vectors (see :meth:`Source.sample`), then add everything."""
    from clip_search.collection.vector_index import default_nlist, make_index

    nlist = job.nlist or default_nlist(job.source.n)
    sample = job.source.sample(min(job.source.n, max(39 * nlist, BATCH)))
    started = time.perf_counter()
    index = make_index("ivf", job.source.dim, nlist=nlist, sample=sample, expected=job.source.n)
    result["train_s"], result["train_n"], result["nlist"] = time.perf_counter() - started, len(sample), nlist
    del sample
    result["add_s"] = _fill(index, job.source.batches())
    return index


def load_job(path: str) -> dict:
    """In a fresh process: load a saved index; time and peak RSS."""
    from clip_search.collection.vector_index import VectorIndex

    result: dict = {"baseline_rss": _rss()}
    started = time.perf_counter()
    index = VectorIndex.load(Path(path))
    result["load_s"] = time.perf_counter() - started
    result["peak_rss"], result["rss"], result["n"] = _peak_rss(), _rss(), len(index)
    return result


def _bandwidth(vectors: np.ndarray) -> dict[int, float]:
    """Bytes/s of a numpy pass (a column sum) over the same array, on 1 and 2 threads, best of 3."""
    speeds = {}
    for threads in (1, 2):
        parts = np.array_split(np.arange(len(vectors)), threads)
        best = float("inf")
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(3):
                started = time.perf_counter()
                list(pool.map(lambda rows: vectors[rows[0] : rows[-1] + 1].sum(axis=0), parts))
                best = min(best, time.perf_counter() - started)
        speeds[threads] = vectors.nbytes / best
    return speeds


def _child(fn, arg):
    """Run ``fn(arg)`` in a fresh spawned process, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, arg).result()


# -- reports -----------------------------------------------------------------------------------------------------------


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]))


def compare(title: str, source: Source, args: argparse.Namespace) -> None:
    """Flat then IVF, each built in its own child; print build, memory, latency, speed-up and recall."""
    queries = source.queries(args.recall_queries)
    vector_bytes = source.n * source.dim * 4
    print(f"\n== {title}: {source.n:,} x {source.dim} float32 = {vector_bytes / 1e9:.2f} GB of vectors", flush=True)
    if args.interleave:
        job = Job("both", source, queries, args.queries, args.nprobe, args.nlist, args.threads)
        results = _child(run_together, job)
        for kind in ("flat", "ivf"):
            _print_build(kind, results[kind], vector_bytes)
        _print_search(results, vector_bytes)
        return
    save_dir = Path(tempfile.mkdtemp(prefix="bench-vector-index-", dir=args.tmp)) if args.save else None
    results = {}
    for kind in ("flat", "ivf"):
        job = Job(kind, source, queries, args.queries, args.nprobe, args.nlist, args.threads)
        job.save_to = str(save_dir / f"{kind}.idx") if save_dir else None
        results[kind] = _child(run_job, job)
        _print_build(kind, results[kind], vector_bytes)
        if save_dir:
            loaded = _child(load_job, job.save_to)
            size = os.path.getsize(job.save_to)
            print(
                f"   save {results[kind]['save_s']:.1f} s ({size / 1e9:.2f} GB file), load in a fresh process "
                f"{loaded['load_s']:.1f} s, peak RSS {_ratio(loaded, vector_bytes)}",
                flush=True,
            )
            os.unlink(job.save_to)
    if save_dir:
        save_dir.rmdir()
    _print_search(results, vector_bytes)


def _ratio(result: dict, vector_bytes: int) -> str:
    peak, base = result["peak_rss"], result["baseline_rss"]
    return (
        f"{peak / 1e9:.2f} GB = {peak / vector_bytes:.2f}x the vectors "
        f"({(peak - base) / vector_bytes:.2f}x above the {base / 1e9:.2f} GB start-up baseline)"
    )


def _print_build(kind: str, r: dict, vector_bytes: int) -> None:
    if kind == "flat":
        what = f"add {r['add_s']:.1f} s"
    else:
        what = f"nlist {r['nlist']}, train {r['train_s']:.1f} s on {r['train_n']:,}, add {r['add_s']:.1f} s"
    print(f"{kind:>4} build {r['build_s']:.1f} s incl. data generation ({what})", flush=True)
    both = " (both indexes in one process)" if r.get("together") else ""
    print(f"   peak RSS{both} {_ratio(r, vector_bytes)}; after build {r['rss'] / 1e9:.2f} GB", flush=True)


def _print_search(results: dict, vector_bytes: int) -> None:
    flat, ivf = results["flat"], results["ivf"]
    bw = flat["bandwidth"]
    floor_ms = vector_bytes / max(bw.values()) * 1000
    print(
        f"memory bandwidth (numpy pass over the vectors): 1 thread {bw[1] / 1e9:.1f} GB/s, 2 threads "
        f"{bw[2] / 1e9:.1f} GB/s -> a flat scan cannot beat {floor_ms:.1f} ms"
    )
    print(f"single query, k={K}, median over {flat['timed']} queries; recall over {len(flat['found'])} queries:")
    print(f"  flat (numpy/BLAS scan)  {flat['ms']:8.2f} ms  = {flat['ms'] / floor_ms:.2f}x the bandwidth floor")
    print(f"  flat (FAISS scan)       {flat['faiss_ms']:8.2f} ms  = {flat['faiss_ms'] / floor_ms:.2f}x the floor")
    default = _default_nprobe()
    for nprobe, ms in ivf["ms"].items():
        rec = recall_at_k(flat["found"], ivf["found"][nprobe])
        mark = "  <- index.nprobe (config.yaml)" if nprobe == default else ""
        speed = flat["ms"] / ms
        print(f"  ivf nprobe={nprobe:<4}        {ms:8.2f} ms  speed-up {speed:7.1f}x  recall@{K} {rec:.3f}{mark}")
    sys.stdout.flush()


def _default_nprobe() -> int:
    from clip_search.config import load_config

    return load_config(env={}).index.nprobe


def run_synthetic(args: argparse.Namespace) -> None:
    source = Source(args.n, args.dim, args.clusters, args.noise)
    compare(f"synthetic, {args.clusters} clusters, noise {args.noise}", source, args)


def run_real(args: argparse.Namespace) -> None:
    """The file's vectors as they are, then (``--derive N``) N rows derived from them; the same held-out queries."""
    total, dim = np.load(args.real, mmap_mode="r").shape
    held = min(args.recall_queries, total // 10)
    source = Source(total - held, dim, path=str(args.real), holdout=held)
    compare(f"vectors of real photos {args.real.name} ({held} held out as queries)", source, args)
    if not args.derive:
        return
    noise = args.derive_noise * nearest_neighbour_distance(source.base_vectors())
    derived = Source(args.derive, dim, noise=noise, path=str(args.real), holdout=held, derived=True)
    compare(
        f"DERIVED from {source.n:,} real-photo vectors (not real photos): each row a base vector, first exact, then "
        f"+ gaussian noise of norm {noise:.4f} (= {args.derive_noise:g} x their median nearest-neighbour distance), "
        f"normalised; queries: the {held} held-out real vectors",
        derived,
        args,
    )


# -- real-photo vectors -------------------------------------------------------------------------------------------


def embed_imagenette(model_dir: str, out: Path, *, limit: int = 0, folder: Path = IMAGENETTE, cache_dir=None) -> int:
    """Embed the Imagenette validation photos as ingest does (the evaluation's ``embed_images``: decode_image with
    the engine's limits, the model's processor, HFEncoder) into an (n, dim) float32 .npy. ``limit`` > 0 takes a
    seeded random sample spread over all classes. Vectors go through the evaluation's embedding cache
    (``cache_dir``, default ``$CLIP_SEARCH_EVAL_CACHE`` or ~/.cache/clip-search/eval) one batch at a time, so a run
    cut short resumes where it stopped and a second run embeds nothing."""
    from clip_search.encoder import HFEncoder
    from clip_search.evaluation.embed_cache import EmbeddingCache, default_cache_dir
    from clip_search.evaluation.run import embed_images

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if limit and limit < len(paths):
        pick = np.random.default_rng(0).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    encoder = HFEncoder(model_dir, device="cpu")
    cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder)
    vectors, _, _, stats = embed_images(paths, encoder, cache=cache)
    log.info(
        "embedded %d photos, %d from the cache, %d skipped (%.2f img/s)",
        stats["embedded"],
        stats["from_cache"],
        stats["skipped"],
        stats["images_per_s"],
    )
    _save_npy(out, vectors)
    return len(vectors)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


# -- command line ---------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: skip the synthetic run)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--nlist", type=int, default=0, help="0: default_nlist(n)")
    parser.add_argument("--noise", type=float, default=1.0, help="synthetic noise norm around each centre")
    parser.add_argument("--queries", type=int, default=50, help="single queries timed (median)")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--save", action="store_true", help="also time save, and load in a fresh process")
    parser.add_argument(
        "--interleave", action="store_true", help="both indexes in one process, timed query by query (no --save)"
    )
    parser.add_argument("--tmp", default=None, help="folder for --save files")
    parser.add_argument("--quick", action="store_true", help="n = 100,000")
    parser.add_argument("--real", "--vectors", type=Path, help="an (n, dim) .npy of real-photo embeddings")
    parser.add_argument("--derive", type=int, default=0, help="with --real: also N rows derived from them")
    parser.add_argument("--derive-noise", type=float, default=1.0, help="noise / median nearest-neighbour distance")
    parser.add_argument("--embed-imagenette", nargs=2, metavar=("MODEL_DIR", "OUT_NPY"))
    parser.add_argument("--limit", type=int, default=0, help="with --embed-imagenette: at most this many photos")
    parser.add_argument("--cache-dir", type=Path, default=None, help="with --embed-imagenette: embedding cache")
    parser.add_argument(
        "--threads", type=int, default=None, help="search threads (default: index.search_threads; 0: all cores)"
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        from clip_search.config import load_config

        args.threads = load_config(env={}).index.search_threads
    if args.quick:
        args.n = 100_000
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = _parse(argv)
    if args.embed_imagenette:
        model_dir, out = args.embed_imagenette
        rows = embed_imagenette(model_dir, Path(out), limit=args.limit, cache_dir=args.cache_dir)
        print(f"wrote {rows} rows to {out}")
        return 0
    if args.n:
        run_synthetic(args)
    if args.real:
        run_real(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
