"""The collection at scale: open -> first answer, peak memory, upload -> searchable, search during uploads.

    PYTHONPATH=. python benchmarks/bench_collection.py [--n 1000000] [--dim 768] [--data /tmp/bench-1m]
    PYTHONPATH=. python benchmarks/bench_collection.py --model BASE [--index flat ivf] [--data /tmp/bench-1m-base]

Writes a synthetic collection with ``python -m clip_search.testing fill`` (kept in --data for re-runs; with
``--model`` recorded as made by that model, so the engine opens it), then measures each figure in a fresh child
process, against a floor measured in the same run:
- open: seconds from opening the collection to the first answered query, and peak RSS over the process's
  baseline (same imports, empty collection), as a ratio to the bytes of the vectors (target <= 1.3x);
- upload -> searchable, table side: one row committed to the table + added to the index, at 1k rows and at N;
- search during a burst of uploads: median single-query latency while another thread commits rows, / idle;
- with ``--model``, upload -> searchable / one image forward: ``SearchEngine.upload`` of real photos (Imagenette,
  ~500x375 JPEGs; decode, re-encode, duplicate checks, embedding, near-duplicate search, store, commit, index)
  against ``encode_pixels`` of the same preprocessed photo, alternated photo by photo in one process, at 1k and N
  for each ``--index`` kind (target <= 1.2x). Each upload is searchable when ``upload`` returns (checked, not
  timed). ``upload.near_duplicate_action`` is set to ``add``: random weights make photos look alike, and a
  rejected near duplicate would skip the commit.
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
from pathlib import Path
import numpy as np
from clip_search.collection import Collection, CollectionTable, NewImage
mode, path, dim, model, model_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
rng = np.random.default_rng(1)
def unit(n):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
def image(i):
    sha = hashlib.sha256(f"bench-upload:{time.time_ns()}:{i}".encode()).hexdigest()
    return NewImage(key=f"images/{sha[:2]}/{sha}.jpg", sha256=sha, width=1, height=1, embedding=unit(1)[0])
started = time.perf_counter()
c = Collection(CollectionTable(path), model=model, model_id=model_id, background=False, refresh_s=3600)
dim = c.dim or dim
c.search(unit(1), 10)
opened = time.perf_counter() - started
out = {"n": len(c), "open_s": opened, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
       "import_peak_gb": base}
if mode == "full":
    q = unit(60)
    idle = []
    for row in q:
        t = time.perf_counter(); c.search(row[None], 10); idle.append(time.perf_counter() - t)
    def disk():
        return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    adds, before = [], disk()
    for i in range(20):
        t = time.perf_counter(); c.add([image(i)]); adds.append(time.perf_counter() - t)
    out["bytes_per_add"] = (disk() - before) / 20
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


IMAGENETTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette-val"


def child(mode: str, path: Path, dim: int, model: str) -> dict:
    signature, model_id = _identity(model, dim)
    command = [sys.executable, "-c", CHILD, mode, str(path), str(dim), signature, model_id]
    return _json_of(subprocess.run(command, capture_output=True, text=True, check=False))


def _identity(model: str, dim: int) -> tuple[str, str]:
    """(signature, model id) the collection is recorded under: the model's, or fill's synthetic one."""
    if not model:
        return f"synthetic-{dim}d", f"synthetic-{dim}d"
    from clip_search.encoder import model_signature

    return model_signature(model), model


def _json_of(done: subprocess.CompletedProcess) -> dict:
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def upload_child(path: Path, model: str, kind: str, uploads: int) -> dict:
    """In a fresh process: the engine on ``path``; ``uploads`` new photos, each timed as one forward of its
    preprocessed pixels and as a whole upload (alternating which goes first); medians in ms."""
    from statistics import median

    from clip_search.config import load_config
    from clip_search.engine import SearchEngine
    from clip_search.images import sha256_hex

    settings = load_config(env={})
    settings.data_dir, settings.model.id, settings.index.kind = path, model, kind
    settings.storage.backend = "local"
    settings.upload.near_duplicate_action = "add"
    # The upload check runs as on every upload (its cost is in the figure) but holds nothing: a held photo is not
    # searchable, and a model's random weights flag arbitrary photos.
    settings.moderation.threshold, settings.moderation.margin = 1.0, 2.0
    times: dict[str, list[float]] = {"forward": [], "upload": [], "near_search": [], "sha_lookup": []}
    with SearchEngine(settings) as engine:
        engine.encoder.warm_up()
        engine.collection.wait_for_cells(timeout=600)  # built in the background after the open
        limits = settings.upload
        for turn, photo in enumerate(_new_photos(engine, uploads, sha256_hex)):
            data = photo.read_bytes()
            prepared = engine.prepare(data, source="upload", reencode=True, formats=limits.formats)
            if turn % 2:  # alternate which goes first, so a drift of the machine's speed hits both alike
                vector = _timed(times["forward"], engine.embed, [prepared])
                result = _timed(times["upload"], engine.upload, data)
            else:
                result = _timed(times["upload"], engine.upload, data)
                vector = _timed(times["forward"], engine.embed, [prepared])
            assert result.status == "added", result.message
            assert engine.search_vectors(vector, 1)[0][0][0] == result.id, "not searchable when upload returned"
            _timed(times["near_search"], engine.collection.nearest, vector)
            _timed(times["sha_lookup"], engine.collection.find_by_sha256, prepared.sha256, prepared.source_sha256)
        n = engine.count()
    ratios = [u / f for u, f in zip(times["upload"], times["forward"], strict=True)]
    return {"n": n, "ratio": median(ratios), **{f"{k}_ms": 1e3 * median(v) for k, v in times.items()}}


def _timed(into: list[float], fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    into.append(time.perf_counter() - started)
    return out


def _new_photos(engine, count: int, sha256_hex) -> list[Path]:
    """Imagenette photos the collection does not hold yet (each upload must be a new image)."""
    found = []
    for photo in sorted(IMAGENETTE.rglob("*.JPEG")):
        if engine.collection.find_by_sha256(sha256_hex(photo.read_bytes())) is None:
            found.append(photo)
            if len(found) == count:
                return found
    raise SystemExit(f"fewer than {count} Imagenette photos are new to the collection in {IMAGENETTE}")


def run_upload_child(path: Path, model: str, kind: str, uploads: int) -> dict:
    command = [sys.executable, __file__, "--child-upload", str(path), model, kind, str(uploads)]
    return _json_of(subprocess.run(command, capture_output=True, text=True, check=False))


READ_CHILD = r"""
import json, sys, time
import numpy as np
from clip_search.collection import CollectionTable
from clip_search.collection.sync import iter_vectors
started = time.perf_counter()
ds = CollectionTable(sys.argv[1]).latest()
out, at = None, 0
for _, vectors in iter_vectors(ds):
    if out is None:
        out = np.empty((ds.count_rows(), vectors.shape[1]), dtype=np.float32)
    out[at : at + len(vectors)] = vectors
    at += len(vectors)
print(json.dumps({"rows": at, "read_s": time.perf_counter() - started}))
"""


def vector_read_s(path: Path) -> float:
    """In a fresh process: seconds to read the table's vectors into one array, the way the open reads them and
    nothing else (no index, no ids kept): the floor of open -> first answer."""
    command = [sys.executable, "-c", READ_CHILD, str(path)]
    return _json_of(subprocess.run(command, capture_output=True, text=True, check=False))["read_s"]


def fill(data: Path, n: int, dim: int, model: str) -> None:
    width = ["--model", model] if model else ["--dim", str(dim)]
    subprocess.run([sys.executable, "-m", "clip_search.testing", "fill", str(data), "--n", str(n), *width], check=True)


def print_round(big: dict, one_k: dict, floor: dict, vector_gb: float) -> None:
    print(
        f"N={big['n']:,}: open->first answer {big['open_s']:.2f} s; peak RSS {big['peak_gb']:.2f} GB = "
        f"{(big['peak_gb'] - floor['peak_gb']) / vector_gb:.2f}x the {vector_gb:.2f} GB of vectors over the "
        f"empty process ({floor['peak_gb']:.2f} GB); search idle {big['search_idle_ms']:.1f} ms, during "
        f"uploads {big['search_busy_ms']:.1f} ms ({big['search_busy_ms'] / big['search_idle_ms']:.2f}x); "
        f"upload->searchable (table side) {big['add_ms']:.1f} ms at N vs {one_k['add_ms']:.1f} ms at 1k "
        f"({big['add_ms'] / one_k['add_ms']:.2f}x); bytes written per upload {big['bytes_per_add'] / 1e3:.1f} kB "
        f"at N vs {one_k['bytes_per_add'] / 1e3:.1f} kB at 1k",
        flush=True,
    )


def print_uploads(kind: str, r: dict) -> None:
    print(
        f"  {kind:>4} index, {r['n']:>9,} images: upload->searchable {r['upload_ms']:.0f} ms / one image forward "
        f"{r['forward_ms']:.0f} ms = {r['ratio']:.2f}x (target <= 1.2x); inside it: near-duplicate search "
        f"{r['near_search_ms']:.1f} ms, sha256 lookup {r['sha_lookup_ms']:.1f} ms",
        flush=True,
    )


def main() -> None:
    if sys.argv[1:2] == ["--child-upload"]:
        path, model, kind, uploads = sys.argv[2:6]
        print(json.dumps(upload_child(Path(path), model, kind, int(uploads))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768, help="the vectors' width (with --model: the model's)")
    parser.add_argument("--data", type=Path, default=None, help="keep the synthetic collection here for re-runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="", help="record the collection as this model's; time engine uploads")
    parser.add_argument("--index", nargs="+", choices=["flat", "ivf"], default=["flat"], help="with --model")
    parser.add_argument("--uploads", type=int, default=6, help="with --model: photos uploaded per child")
    parser.add_argument("--skip-open", action="store_true", help="with --model: only the upload / forward ratio")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-collection-"))
    small = data.parent / f"{data.name}-1k"
    fill(data, args.n, args.dim, args.model)
    fill(small, 1000, args.dim, args.model)
    empty = Path(tempfile.mkdtemp(prefix="bench-empty-"))
    vector_gb = args.n * args.dim * 4 / 1e9
    for _ in range(args.rounds):
        if not (args.model and args.skip_open):
            floor = child("open", empty, args.dim, args.model)
            print_round(
                child("full", data, args.dim, args.model), child("full", small, args.dim, args.model), floor, vector_gb
            )
        for kind in args.index if args.model else []:
            for path in (small, data):
                print_uploads(kind, run_upload_child(path, args.model, kind, args.uploads))
    print(time.strftime("%Y-%m-%d"), args.rounds, "rounds above (each adds a few rows to both collections)")


if __name__ == "__main__":
    main()
