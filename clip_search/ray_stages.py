"""What the workers of a Ray ingest run (see :mod:`clip_search.ray_ingest`); importable without Ray.

Each worker process builds what it needs once from the job's settings (the image processor, the store, an S3
client) and keeps it for the following batches. Rows travel as Arrow tables: preprocessed pixels as raw float32
bytes (empty for files that need no embedding), vectors as a fixed-size list column.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clip_search.collection import NewImage
from clip_search.config import Settings
from clip_search.engine import PreparedImage, make_store, prepare_image
from clip_search.errors import ClipSearchError, InvalidImageError, StorageError
from clip_search.images import sha256_hex
from clip_search.store import ImageStore

log = logging.getLogger(__name__)

ROW_COLUMNS = ("path", "status", "reason", "key", "sha256", "source_sha256", "width", "height")
TEXT_COLUMNS = ("source", "caption", "metadata")


# -- the source ---------------------------------------------------------------------------------------------------


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix``); a clear error for anything else."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not url.startswith("s3://") or not bucket:
        raise ClipSearchError(f"not an S3 location: {url!r} (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def list_s3(url: str, settings: Settings, *, recursive: bool) -> list[str]:
    """Image objects under an S3 prefix (page by page), as ``s3://bucket/key``, sorted; hidden names skipped."""
    from clip_search.store_s3 import S3ImageStore, make_client

    bucket, prefix = split_s3(url)
    client = make_client(settings.storage.s3)
    wanted = tuple(settings.ingest.extensions)
    found = []
    start = f"{prefix}/" if prefix else ""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for item in page.get("Contents", []):
                relative = item["Key"][len(start) :]
                parts = relative.split("/")
                if not relative.lower().endswith(wanted) or any(p.startswith(".") for p in parts):
                    continue
                if recursive or len(parts) == 1:
                    found.append(f"s3://{bucket}/{item['Key']}")
    except Exception as exc:
        raise S3ImageStore(client, bucket).explain(exc, f"listing {url}") from exc
    return sorted(found)


@dataclass
class WorkerContext:
    """What one worker process keeps between batches."""

    settings: Settings
    store: ImageStore
    _processor: Any = None
    _s3: Any = None

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from clip_search.model_source import load_processor

            self._processor = load_processor(self.settings.model.id, self.settings.model.revision)
        return self._processor

    def read(self, path: str) -> bytes:
        """A source file's bytes (OSError / StorageError say why they cannot be had)."""
        if not path.startswith("s3://"):
            return Path(path).read_bytes()
        from clip_search.store_s3 import S3ImageStore, make_client

        if self._s3 is None:
            self._s3 = make_client(self.settings.storage.s3)
        bucket, key = split_s3(path)
        try:
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise S3ImageStore(self._s3, bucket).explain(exc, "reading", key) from exc


@functools.cache
def worker_context(config: str) -> WorkerContext:
    settings = Settings.model_validate_json(config)
    return WorkerContext(settings=settings, store=make_store(settings))


# -- stage 1: read, skip, decode, preprocess, store ----------------------------------------------------------------


def prepare_batch(batch: pa.Table, *, config: str, known: list[Any], captions: list[Any]) -> pa.Table:
    """CPU stage: one row per file with its status; the bytes of new images are in the store when it returns."""
    import ray

    ctx = worker_context(config)
    digests = ray.get(known[0]) if not isinstance(known[0], np.ndarray) else known[0]
    names = ray.get(captions[0]) if not isinstance(captions[0], dict) else captions[0]
    rows = [_prepare_one(ctx, path, digests, names) for path in batch.column("path").to_pylist()]
    return _rows_table(rows)


def is_known(digests: np.ndarray, sha256: str) -> bool:
    """Whether a hex sha256 is among sorted raw digests."""
    needle = np.array([bytes.fromhex(sha256)], dtype="S32")
    pos = int(np.searchsorted(digests, needle)[0])
    return pos < len(digests) and digests[pos] == needle[0]


def _prepare_one(ctx: WorkerContext, path: str, digests: np.ndarray, captions: dict[str, list[str]]) -> dict:
    try:
        data = ctx.read(path)
    except OSError as exc:
        return _status(path, "failed", f"cannot read: {exc.strerror or exc}")
    except StorageError as exc:
        return _status(path, "failed", f"cannot read: {exc}")
    if is_known(digests, sha256_hex(data)):
        return _status(path, "known")
    names = captions.get(path.rsplit("/", 1)[-1], [])
    try:
        prepared = prepare_image(
            data,
            settings=ctx.settings,
            input_size=_input_size(ctx),
            preprocess=functools.partial(_preprocess, ctx),
            source=path,
            caption=names[0] if names else None,
            metadata={"captions": names} if len(names) > 1 else {},
        )
    except InvalidImageError as exc:
        return _status(path, "failed", str(exc))
    if not is_known(digests, prepared.sha256):
        ctx.store.put(prepared.key, prepared.data, prepared.content_type)  # before its row can be committed
    return _prepared_row(path, prepared)


def _input_size(ctx: WorkerContext) -> int:
    from clip_search.encoder import processor_input_size

    return processor_input_size(ctx.processor)


def _preprocess(ctx: WorkerContext, image: Any) -> np.ndarray:
    from clip_search.encoder import preprocess_with

    return preprocess_with(ctx.processor, image)


def _status(path: str, status: str, reason: str = "") -> dict:
    return {"path": path, "status": status, "reason": reason, "pixels": b""}


def _prepared_row(path: str, item: PreparedImage) -> dict:
    return {
        "path": path,
        "status": "ok",
        "reason": "",
        "key": item.key,
        "sha256": item.sha256,
        "source_sha256": item.source_sha256,
        "width": item.width,
        "height": item.height,
        "source": item.source,
        "caption": item.caption,
        "metadata": json.dumps(item.metadata, ensure_ascii=False),
        "pixels": np.ascontiguousarray(item.pixels, dtype=np.float32).tobytes(),
    }


def _rows_table(rows: list[dict]) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for name in (*ROW_COLUMNS, *TEXT_COLUMNS):
        kind = pa.int32() if name in ("width", "height") else pa.string()
        columns[name] = pa.array([row.get(name) for row in rows], type=kind)
    columns["pixels"] = pa.array([row["pixels"] for row in rows], type=pa.binary())
    return pa.table(columns)


# -- stage 2: embed ------------------------------------------------------------------------------------------------


class Embedder:
    """Actor: loads the model once, embeds the rows that carry pixels (others get a zero vector)."""

    def __init__(self, config: str) -> None:
        import torch

        from clip_search.encoder import HFEncoder

        settings = Settings.model_validate_json(config)
        if not settings.model.torch_threads:  # Ray sets OMP_NUM_THREADS=1 in workers: use the node's cores
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.encoder = HFEncoder.from_settings(settings.model)
        side = self.encoder.input_size
        self.shape = (3, side, side)
        self.dim = int(self.encoder.encode_pixels(np.zeros((1, *self.shape), np.float32)).shape[1])  # warm-up
        threads = torch.get_num_threads()
        log.info("embedder ready: %s on %s, %d threads", settings.model.id, self.encoder.device, threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        pixels = batch.column("pixels").to_pylist()
        rows = [i for i, p in enumerate(pixels) if p]
        vectors = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        if rows:
            stack = np.stack([np.frombuffer(pixels[i], dtype=np.float32).reshape(self.shape) for i in rows])
            vectors[rows] = self.encoder.encode_pixels(stack)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim)
        done = pa.array(np.full(batch.num_rows, time.time()), type=pa.float64())  # the driver's steady rate
        return batch.drop_columns(["pixels"]).append_column("vector", column).append_column("embedded_at", done)


# -- the driver's side ---------------------------------------------------------------------------------------------


def vectors_of(batch: pa.Table) -> np.ndarray:
    column = batch.column("vector").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, column.type.list_size)


def new_image(row: dict, vector: np.ndarray) -> NewImage:
    return NewImage(
        key=row["key"],
        sha256=row["sha256"],
        width=row["width"],
        height=row["height"],
        embedding=vector,
        source_sha256=row["source_sha256"],
        source=row["source"],
        caption=row["caption"],
        metadata=json.loads(row["metadata"] or "{}"),
    )
