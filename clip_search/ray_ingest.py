"""Ingest at scale with Ray Data: ``python -m clip_search ingest SOURCE --ray [--ray-address ADDRESS]``.

One streaming pipeline, so memory stays bounded whatever the file count:

1. the driver lists the source (a local folder or ``s3://bucket/prefix``) and reads the hashes the collection
   already holds;
2. CPU tasks read each file, skip content the collection holds, decode, validate and preprocess it with the
   engine's own rules (:func:`clip_search.engine.prepare_image`), and put the bytes to keep in the collection's
   store (content-addressed, so a re-put is harmless);
3. an actor pool embeds (the model loaded once per actor; one GPU per actor when the cluster has GPUs);
4. the driver commits the rows to the collection's Lance table, a few hundred at a time.

A row is committed only after its image was stored, and every commit is one Lance transaction: a job killed at
any moment leaves whole rows whose images exist, and a re-run skips what was committed (the files stored but not
committed yet are stored again under the same key and committed then). Commits happen in the driver: one writer
makes one table version per batch instead of a version per actor and batch, the duplicate check (the same photo
under two names) needs one view of the run, and the rows it receives are small (vectors and facts, no bytes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_search.config import Settings
from clip_search.errors import ClipSearchError, StorageError
from clip_search.report import IngestReport

if TYPE_CHECKING:
    from clip_search.collection import CollectionTable, NewImage

log = logging.getLogger(__name__)

RAY_REQUIREMENT = 'pip install -r requirements-cluster.txt (or: pip install "ray[data]==2.60.0")'
COMMIT_ROWS = 256  # rows per Lance commit at most...
COMMIT_SECONDS = 5.0  # ... and at least this often while rows arrive
MIN_FILES_PER_BLOCK = 16
# AWS credentials of the driver travel to the job's workers (the store and an s3:// source use the same identity)
FORWARDED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "HF_TOKEN")


def require_ray() -> Any:
    """The ``ray`` module, or one line saying what to install."""
    try:
        import ray
        import ray.data  # ray without its [data] extra lacks the pandas/pyarrow glue
    except ImportError as exc:
        raise ClipSearchError(f"--ray needs Ray Data, which is not installed ({exc.name}): {RAY_REQUIREMENT}") from None
    return ray


@dataclass
class RayIngestReport(IngestReport):
    """The plain report plus the pipeline's rate once it runs (Ray's start-up and the model loads excluded)."""

    startup_seconds: float = 0.0  # from the start to the first embedded batch
    steady_rate: float = 0.0  # files per second through the embedders after that
    _times: list[np.ndarray] = field(default_factory=list, repr=False)

    def mark(self, embedded_at: np.ndarray) -> None:
        """The wall-clock times the embedders finished each row: the first one ends the start-up."""
        self._times.append(np.asarray(embedded_at, dtype=np.float64))

    def finish(self, wall_started: float) -> None:
        if not self._times:
            return
        at = np.concatenate(self._times)
        first, last = float(at.min()), float(at.max())
        self.startup_seconds = first - wall_started
        self.steady_rate = float((at > first).sum()) / (last - first) if last > first else 0.0

    def summary(self) -> str:
        lines = super().summary().split("\n")
        lines[0] += f"; {self.steady_rate:.1f} files/s after {self.startup_seconds:.1f} s of start-up"
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            super().to_dict(), startup_seconds=round(self.startup_seconds, 3), steady_rate=round(self.steady_rate, 3)
        )


@dataclass(frozen=True)
class RayOptions:
    """Where the job runs: a local runtime (``address`` None, ``num_cpus`` None = every core) or a cluster."""

    address: str | None = None
    num_cpus: int | None = None
    embed_actors: int | None = None  # default: one per GPU, else one per node


def start_ray(options: RayOptions) -> None:
    """Start a local Ray runtime or join a cluster, shipping this package to the workers."""
    ray = require_ray()
    import os

    import clip_search

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    runtime_env: dict[str, Any] = {"py_modules": [clip_search], "env_vars": env}
    if options.address:
        log.info("joining the Ray cluster at %s", options.address)
        ray.init(address=options.address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            num_cpus=options.num_cpus,
            runtime_env=runtime_env,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar with images/s
    context.print_on_execution_start = False
    log.info("Ray resources: %s", ray.cluster_resources())


def list_source(source: str, settings: Settings, *, recursive: bool) -> list[str]:
    """Every image file of a local folder or an ``s3://bucket/prefix``, sorted; hidden files left alone."""
    from clip_search import ray_stages
    from clip_search.ingest import find_images

    if source.startswith("s3://"):
        return ray_stages.list_s3(source, settings, recursive=recursive)
    paths = find_images(Path(source), recursive=recursive, extensions=settings.ingest.extensions)
    return [str(p) for p in paths]


def known_digests(table: CollectionTable) -> np.ndarray:
    """The table's stored and original sha256 as sorted raw 32-byte digests (shared with every worker as one
    array: 64 MB for a million images, where a Python set of hex strings would be ~250 MB per worker); of the
    unowned rows, as the plain ingest skips them (a visitor's private photo never stops a public copy)."""
    from clip_search.collection.visibility import same_owner_sql

    hashes = table.hashes(table.latest(), where=same_owner_sql(None))
    return np.array(sorted(bytes.fromhex(h) for h in hashes), dtype="S32")


def ingest_ray(
    settings: Settings,
    source: str,
    options: RayOptions,
    *,
    recursive: bool = False,
    captions_file: Path | None = None,
    progress: bool = True,
) -> IngestReport:
    """``python -m clip_search ingest SOURCE --ray``: the plain ingest's guarantees, on a Ray cluster.

    Ray is started before this process touches Lance (Ray forks its own processes; Lance is not fork-safe).
    """
    ray = require_ray()
    if not source.startswith("s3://") and not Path(source).exists():
        raise ClipSearchError(f"no such folder: {source}")
    started = time.perf_counter()
    start_ray(options)
    try:
        return _run(ray, settings, source, options, recursive, captions_file, progress, started)
    finally:
        ray.shutdown()


def _run(
    ray: Any,
    settings: Settings,
    source: str,
    options: RayOptions,
    recursive: bool,
    captions_file: Path | None,
    progress: bool,
    started: float,
) -> IngestReport:
    from clip_search.collection.location import open_table
    from clip_search.encoder import model_signature
    from clip_search.engine import make_store
    from clip_search.ingest import load_captions

    report = RayIngestReport()
    files = list_source(source, settings, recursive=recursive)
    captions = load_captions(captions_file) if captions_file else {}
    table = open_table(settings)
    signature = model_signature(settings.model.id, settings.model.revision)
    table.check_model(signature, settings.model.id)
    known = known_digests(table)
    _warn_if_local_on_a_cluster(ray, settings, source)
    log.info("found %d image files in %s; the collection holds %d hashes", len(files), source, len(known))
    try:
        if files:
            dataset = _pipeline(ray, settings, files, ray.put(known), ray.put(captions), options)
            _consume(dataset, table, settings, signature, report, total=len(files), progress=progress)
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: %d images committed; run again to finish", report.added)
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None:
            raise
        raise ClipSearchError(f"{cause} ({report.added} images committed; run again to go on)") from exc
    finally:
        report.seconds = time.perf_counter() - started
        report.finish(time.time() - (time.perf_counter() - started))
    make_store(settings).remove_interrupted_writes()  # half-written files of workers killed in an earlier run
    return report


def _warn_if_local_on_a_cluster(ray: Any, settings: Settings, source: str) -> None:
    """Workers on other nodes read and write their own disks: say so before they do."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    local = [
        what
        for what, is_local in (
            ("source", not source.startswith("s3://")),
            ("image store", settings.storage_backend == "local"),
        )
        if is_local
    ]
    if nodes > 1 and local:
        log.warning(
            "the %s %s on this machine's disk but the cluster has %d nodes: each node reads and writes its own "
            "disk at that path; use an S3 bucket (s3://... and S3_BUCKET) or a folder mounted on every node",
            " and ".join(local),
            "are" if len(local) > 1 else "is",
            nodes,
        )


def _user_error(exc: BaseException) -> ClipSearchError | None:
    """The project's own error under Ray's wrappers (a worker's store or model error), if that is what failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # a RayTaskError: the worker's exception, without the traceback
        if isinstance(inner, BaseException):
            current = inner
        elif isinstance(current, ClipSearchError):
            return current
        else:
            current = current.__cause__ or current.__context__
    return None


def _embed_placement(ray: Any, options: RayOptions) -> tuple[int, int]:
    """(actors, GPUs per actor): one GPU each when the cluster has GPUs, else as many actors as nodes, each using
    all the cores of its machine for torch (the CPU tasks that decode are short beside a forward pass)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return options.embed_actors or gpus, 1
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    return options.embed_actors or max(1, len(nodes)), 0


def files_per_block(settings: Settings) -> int:
    """Paths per input block: a few model batches, so progress and commits move every few seconds on a CPU."""
    return max(2 * settings.model.batch_size, MIN_FILES_PER_BLOCK)


def _pipeline(ray: Any, settings: Settings, files: list[str], known: Any, captions: Any, options: RayOptions) -> Any:
    """The lazy Ray dataset: paths -> prepared rows (bytes stored) -> rows with vectors."""
    from clip_search import ray_stages

    config = settings.model_dump_json()
    actors, gpus = _embed_placement(ray, options)
    log.info("embedding with %d actor(s)%s", actors, f", {gpus} GPU each" if gpus else " on CPU")
    per_block = files_per_block(settings)
    blocks = max(1, -(-len(files) // per_block))
    dataset = ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)
    dataset = dataset.map_batches(
        ray_stages.prepare_batch,
        fn_kwargs={"config": config, "known": [known], "captions": [captions]},
        batch_size=per_block,
        batch_format="pyarrow",
        num_cpus=1,
    )
    return dataset.map_batches(
        ray_stages.Embedder,
        fn_constructor_kwargs={"config": config},
        batch_size=settings.model.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=gpus,
    )


def _consume(
    dataset: Any,
    table: CollectionTable,
    settings: Settings,
    signature: str,
    report: RayIngestReport,
    *,
    total: int,
    progress: bool,
) -> None:
    """Count what the workers say about each file and commit the new rows, a few hundred per transaction."""
    from tqdm.auto import tqdm

    committed: set[str] = set()  # sha256 of the stored and original bytes committed by this run
    pending: list[NewImage] = []
    last = time.monotonic()
    commits = 0
    bar = tqdm(total=total, desc="ingest (ray)", unit="img", disable=not progress, smoothing=0.1)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            pending.extend(_tally(batch, report, committed))
            report.mark(batch.column("embedded_at").to_numpy())
            bar.update(batch.num_rows)
            if pending and (len(pending) >= COMMIT_ROWS or time.monotonic() - last >= COMMIT_SECONDS):
                _commit(table, pending, settings, signature, report)
                last = time.monotonic()
                commits += 1
                if settings.collection.optimize_every and commits % settings.collection.optimize_every == 0:
                    _housekeeping(table, settings)
            bar.set_postfix(added=report.added, failed=len(report.failed), refresh=False)
        if pending:
            _commit(table, pending, settings, signature, report)
    finally:
        bar.close()
    if report.added:
        _housekeeping(table, settings)


def _housekeeping(table: CollectionTable, settings: Settings) -> None:
    """Compact the job's many commits and index the lookup columns, as the app does after its own commits: else a
    collection built by this job alone keeps a fragment per commit and unindexed hash lookups (each upload's
    duplicate checks then scan every row: ~90 ms at a million)."""
    try:
        table.optimize(keep_versions_s=settings.collection.keep_versions_s)
    except StorageError as exc:  # another process optimizing at the same moment, a network error...
        log.warning("could not compact the collection table (run `storage optimize` later): %s", exc)


def _tally(batch: Any, report: IngestReport, committed: set[str]) -> Iterator[NewImage]:
    """The batch's new images (each photo once per run); known, duplicate and failed files counted."""
    from clip_search import ray_stages

    rows = batch.drop_columns(["vector", "embedded_at"]).to_pylist()
    vectors = ray_stages.vectors_of(batch)
    for row, vector in zip(rows, vectors, strict=True):
        if row["status"] == "known":
            report.already_indexed += 1
        elif row["status"] == "failed":
            report.failed.append((row["path"], row["reason"]))
            log.info("skipped %s: %s", row["path"], row["reason"])
        elif row["sha256"] in committed or row["source_sha256"] in committed:
            report.duplicates += 1  # the same bytes as another file of this run
        else:
            committed.update((row["sha256"], row["source_sha256"]))
            yield ray_stages.new_image(row, vector)


def _commit(
    table: CollectionTable, pending: list[NewImage], settings: Settings, signature: str, report: IngestReport
) -> None:
    """One Lance transaction for the rows whose images the workers stored."""
    table.add(pending, model=signature, model_id=settings.model.id)
    report.added += len(pending)
    pending.clear()


def collection_size(settings: Settings) -> int:
    """Images in the collection's table (distinct ids), read without loading any vector."""
    from clip_search.collection.location import open_table

    ds = open_table(settings).latest()
    if ds is None:
        return 0
    ids = ds.to_table(columns=["id"]).column("id").to_numpy()
    return len(np.unique(ids))
