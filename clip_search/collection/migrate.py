"""One-time conversion of a collection made before the Lance table (schema 1: an SQLite catalog).

Runs when an engine opens (nothing to type): a local ``data_dir/catalog.sqlite``, or the bucket's old
``index/catalog.sqlite`` snapshot plus its per-upload records and tombstones, become rows of the table with their
keys, hashes, captions, metadata, times and vectors unchanged. Images keep their stored bytes; only their ids
change (they are now derived from the content hash). Adds are idempotent, so a migration cut short by a crash
simply completes on the next open; the old files are then renamed (local) or marked migrated (bucket).
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clip_search.collection.collection import Collection
from clip_search.collection.records import NewImage, is_sha256
from clip_search.config import Settings
from clip_search.encoder import model_label
from clip_search.errors import ModelMismatchError, NotFoundError
from clip_search.store import ImageStore

log = logging.getLogger(__name__)

LEGACY_PREFIX = "index/"
MIGRATED_MARKER = LEGACY_PREFIX + "migrated-to-lance.json"
BATCH = 4096


def migrate_legacy(settings: Settings, collection: Collection, store: ImageStore) -> int:
    """Convert whatever old-format collection is there; returns how many images were added."""
    added = 0
    path = settings.legacy_catalog_path
    if path.is_file():
        added += _migrate_sqlite(path, collection)
        done = path.with_name(path.name + ".migrated")
        path.replace(done)
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        (settings.data_dir / "index.faiss").unlink(missing_ok=True)
        log.warning("migrated %d images from %s to the Lance table; the old file is kept as %s", added, path, done)
    if store.kind == "s3":
        added += _migrate_bucket(store, collection)
    return added


def _migrate_sqlite(path: Path, collection: Collection, *, skip: set[str] | None = None) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        model = meta.get("model")
        has_rows = conn.execute("SELECT 1 FROM images LIMIT 1").fetchone() is not None
        if has_rows and model not in (None, collection.model):
            raise ModelMismatchError(
                f"the old catalog {path.name} was indexed with {model_label(model)}, not the configured "
                f"'{collection.model_id}': set model.id (or CLIP_SEARCH_MODEL) to that model to migrate it"
            )
        return _add_all(collection, _sqlite_rows(conn, skip or set()))
    finally:
        conn.close()


def _sqlite_rows(conn: sqlite3.Connection, skip: set[str]) -> Iterator[NewImage]:
    query = (
        "SELECT key, sha256, source_sha256, width, height, source, caption, metadata, added_at, embedding "
        "FROM images ORDER BY id"
    )
    for key, sha, source_sha, width, height, source, caption, metadata, added_at, blob in conn.execute(query):
        if sha in skip:
            continue
        yield NewImage(
            key=key,
            sha256=sha,
            source_sha256=source_sha,
            width=width,
            height=height,
            embedding=np.frombuffer(blob, dtype="<f4").astype(np.float32),
            source=source,
            caption=caption,
            metadata=json.loads(metadata or "{}"),
            added_at=added_at,
        )


def _add_all(collection: Collection, images: Iterator[NewImage]) -> int:
    added = 0
    batch: list[NewImage] = []
    for image in images:
        batch.append(image)
        if len(batch) >= BATCH:
            added += sum(i is not None for i in collection.add(batch))
            batch = []
    if batch:
        added += sum(i is not None for i in collection.add(batch))
    return added


def _migrate_bucket(store: Any, collection: Collection) -> int:
    """The old bucket layout: a catalog snapshot, one JSON record per upload, a tombstone per delete."""
    if store.head(MIGRATED_MARKER) is not None:
        return 0
    records = {_sha(k, "uploads/"): k for k in store.list_keys(LEGACY_PREFIX + "uploads/")}
    deaths = {_sha(k, "deleted/"): k for k in store.list_keys(LEGACY_PREFIX + "deleted/")}
    has_snapshot = store.head(LEGACY_PREFIX + "catalog.sqlite") is not None
    if not (records or has_snapshot):
        return 0
    died = set(deaths)
    added = 0
    if has_snapshot:
        with tempfile.TemporaryDirectory(prefix="clip-search-migrate-") as tmp:
            local = Path(tmp) / "catalog.sqlite"
            store.download_file(LEGACY_PREFIX + "catalog.sqlite", local)
            added += _migrate_sqlite(local, collection, skip=set(died))
    uploads = (_json(store, key) for sha, key in records.items() if sha and sha not in died)
    same_model = (_record_image(data) for data in uploads if data.get("model") == collection.model)
    added += _add_all(collection, (img for img in same_model if img is not None))
    store.put_object(MIGRATED_MARKER, json.dumps({"images_added": added}).encode(), "application/json")
    log.warning("migrated %d images from the bucket's old index/ layout to the Lance table", added)
    return added


def _sha(key: str, folder: str) -> str | None:
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    return name if folder in key and is_sha256(name) else None


def _json(store: Any, key: str) -> dict[str, Any]:
    try:
        return json.loads(store.get_object(key))
    except (NotFoundError, ValueError):
        return {}


def _record_image(data: dict[str, Any]) -> NewImage | None:
    try:
        vector = np.frombuffer(base64.b64decode(data["embedding"]), dtype="<f4").astype(np.float32)
        return NewImage(
            key=data["key"],
            sha256=data["sha256"],
            source_sha256=data.get("source_sha256"),
            width=int(data["width"]),
            height=int(data["height"]),
            embedding=vector,
            source=data.get("source"),
            caption=data.get("caption"),
            metadata=data.get("metadata") or {},
            added_at=data.get("added_at"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping an unreadable upload record (%s)", exc)
        return None
