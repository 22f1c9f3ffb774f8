"""The collection's copy in the bucket, so a Space whose local disk is wiped comes back with everything.

Layout under the store's prefix::

    index/manifest.json             which snapshot pair is current: sha256 of both files, counts, writer, time
    index/catalog.sqlite            the SQLite catalog, taken with SQLite's backup API (never the live WAL bytes)
    index/index.faiss               the FAISS snapshot saved with it
    index/uploads/<sha256>.json     one record per committed image: key, hashes, size, caption, metadata,
                                    added_at, model and the embedding (base64 little-endian float32)
    index/deleted/<sha256>.json     a tombstone per deleted image (sha256, key, deleted_at)

Per-upload records are what make two processes writing one bucket safe: each process writes its own records the
moment an image is committed, and never overwrites another's (the key is the image's content hash). Snapshots are
only an accelerator, uploaded a while after the last change (``storage.s3.snapshot_delay_s``) and on close; two
processes may overwrite each other's snapshot, which loses nothing because a restore merges every record the
snapshot lacks. A snapshot pair is trusted only when both files match the manifest's hashes; a FAISS file that
does not is dropped (the index is rebuilt from the catalog's vectors).

On start (:meth:`CollectionReplica.restore`, before the collection opens):

* local catalog missing or empty -> download the snapshot pair (if any);
* always -> merge the records whose image the local catalog lacks, then apply tombstones newer than the row.

So a local catalog that is older than the bucket (another process uploaded since) is brought up to date without
throwing away its own rows or ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_search.catalog import Catalog, ImageRecord, NewImage
from clip_search.errors import ClipSearchError, NotFoundError, StorageError
from clip_search.store import IMAGE_PREFIX, ImageStore
from clip_search.store_s3 import INDEX_PREFIX, S3ImageStore

if TYPE_CHECKING:
    from clip_search.collection import Collection
    from clip_search.config import Settings
    from clip_search.engine import SearchEngine

log = logging.getLogger(__name__)

MANIFEST_KEY = INDEX_PREFIX + "manifest.json"
CATALOG_KEY = INDEX_PREFIX + "catalog.sqlite"
INDEX_KEY = INDEX_PREFIX + "index.faiss"
UPLOADS_PREFIX = INDEX_PREFIX + "uploads/"
DELETED_PREFIX = INDEX_PREFIX + "deleted/"
RECORD_FORMAT = 1
_WORKERS = 8


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha_from_key(key: str, prefix: str) -> str | None:
    name = key[len(prefix) :] if key.startswith(prefix) else ""
    sha = name.removesuffix(".json")
    return sha if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else None


def upload_record(record: ImageRecord, embedding: np.ndarray, *, model: str) -> dict[str, Any]:
    """The JSON written to ``index/uploads/<sha256>.json`` for one committed image."""
    vector = np.ascontiguousarray(embedding, dtype="<f4").reshape(-1)
    return {
        "format": RECORD_FORMAT,
        "key": record.key,
        "sha256": record.sha256,
        "source_sha256": record.source_sha256,
        "width": record.width,
        "height": record.height,
        "source": record.source,
        "caption": record.caption,
        "metadata": record.metadata,
        "added_at": record.added_at,
        "model": model,
        "dim": int(vector.shape[0]),
        "embedding": base64.b64encode(vector.tobytes()).decode("ascii"),
    }


def _new_image(data: dict[str, Any]) -> NewImage:
    vector = np.frombuffer(base64.b64decode(data["embedding"]), dtype="<f4").astype(np.float32)
    if vector.shape[0] != int(data["dim"]):
        raise ValueError(f"embedding has {vector.shape[0]} values, record says {data['dim']}")
    return NewImage(
        key=data["key"],
        sha256=data["sha256"],
        source_sha256=data.get("source_sha256"),
        width=int(data["width"]),
        height=int(data["height"]),
        embedding=vector,
        source=data.get("source"),
        caption=data.get("caption"),
        metadata=dict(data.get("metadata") or {}),
    )


@dataclass
class RestoreReport:
    """What a restore took from the bucket."""

    snapshot: bool = False  # the catalog snapshot was downloaded
    index_snapshot: bool = False  # ...and a FAISS snapshot that matches it
    merged: int = 0  # images added from per-upload records
    deleted: int = 0  # images removed by tombstones
    skipped: list[str] = field(default_factory=list)  # records that could not be used, with the reason
    seconds: float = 0.0

    def summary(self) -> str:
        parts = []
        if self.snapshot:
            parts.append("catalog snapshot" + (" + index snapshot" if self.index_snapshot else ""))
        parts.append(f"{self.merged} images merged from upload records")
        if self.deleted:
            parts.append(f"{self.deleted} removed by deletion records")
        if self.skipped:
            parts.append(f"{len(self.skipped)} records skipped")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


class CollectionReplica:
    """Mirrors one local collection (catalog + index files) into an S3 bucket and restores it from there."""

    def __init__(
        self,
        store: S3ImageStore,
        catalog_path: Path,
        index_path: Path,
        *,
        model: str,
        snapshot_delay_s: float = 30.0,
    ) -> None:
        self.store = store
        self.catalog_path = Path(catalog_path)
        self.index_path = Path(index_path)
        self.model = model
        self.snapshot_delay_s = snapshot_delay_s
        self._collection: Collection | None = None
        self._lock = threading.Lock()  # one snapshot upload at a time
        self._timer_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._dirty = False
        self._pending: dict[str, dict[str, Any]] = {}  # records whose upload failed, retried at the next flush
        self._pending_lock = threading.Lock()
        self._uploaded: dict[str, str] = {}  # bucket key -> sha256 of what we last uploaded there
        self.snapshots_uploaded = 0
        self.last_restore: RestoreReport | None = None

    def attach(self, collection: Collection) -> None:
        """The open collection, saved before each snapshot so the FAISS file is as fresh as possible."""
        self._collection = collection

    # -- restore ----------------------------------------------------------------------------------------------

    def restore(self) -> RestoreReport:
        """Bring the local catalog (and index) up to date from the bucket. Call before the collection opens."""
        started = time.perf_counter()
        report = RestoreReport()
        self.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        if self._local_is_empty():
            self._download_snapshot(report)
        self.merge(report)
        report.seconds = time.perf_counter() - started
        self.last_restore = report
        if report.snapshot or report.merged or report.deleted:
            log.info("restored the collection from %s: %s", self.store.describe(), report.summary())
        return report

    def _local_is_empty(self) -> bool:
        if not self.catalog_path.exists():
            return True
        catalog = Catalog(self.catalog_path)
        try:
            return catalog.count() == 0
        finally:
            catalog.close()

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_object(MANIFEST_KEY))
        except NotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the unreadable snapshot manifest %s: %s", MANIFEST_KEY, exc)
            return None

    def _download_snapshot(self, report: RestoreReport) -> None:
        manifest = self._read_manifest()
        if manifest is None:
            log.info("no collection snapshot in %s yet", self.store.describe())
            return
        workdir = Path(tempfile.mkdtemp(prefix=".restore-", dir=self.catalog_path.parent))
        try:
            catalog_tmp, index_tmp = workdir / "catalog.sqlite", workdir / "index.faiss"
            for attempt in range(3):  # another process may be replacing the pair right now
                self.store.download_file(CATALOG_KEY, catalog_tmp)
                catalog_ok = _file_sha256(catalog_tmp) == manifest.get("catalog_sha256")
                index_ok = False
                if catalog_ok and manifest.get("index_sha256"):
                    try:
                        self.store.download_file(INDEX_KEY, index_tmp)
                        index_ok = _file_sha256(index_tmp) == manifest["index_sha256"]
                    except NotFoundError:
                        index_ok = False
                if catalog_ok:
                    break
                log.info("snapshot changed while downloading it (attempt %d); reading it again", attempt + 1)
                time.sleep(0.2 * (attempt + 1))
                manifest = self._read_manifest() or manifest
            if not _is_sqlite(catalog_tmp):
                log.warning("the catalog snapshot in the bucket is not a usable SQLite file; ignoring it")
                return
            # Place the pair: the catalog's own WAL/SHM files (if any survived) belong to the old database.
            for suffix in ("-wal", "-shm", "-journal"):
                Path(f"{self.catalog_path}{suffix}").unlink(missing_ok=True)
            os.replace(catalog_tmp, self.catalog_path)
            if index_ok:
                os.replace(index_tmp, self.index_path)
            else:
                self.index_path.unlink(missing_ok=True)  # whatever is there describes another catalog
            report.snapshot, report.index_snapshot = True, index_ok
        finally:
            for leftover in workdir.glob("*"):
                leftover.unlink(missing_ok=True)
            workdir.rmdir()

    def merge(self, report: RestoreReport | None = None) -> RestoreReport:
        """Add every image with an upload record that the local catalog lacks; apply newer tombstones."""
        report = report or RestoreReport()
        records = {
            sha: key for key in self.store.list_keys(UPLOADS_PREFIX) if (sha := _sha_from_key(key, UPLOADS_PREFIX))
        }
        tombstones = {
            sha: key for key in self.store.list_keys(DELETED_PREFIX) if (sha := _sha_from_key(key, DELETED_PREFIX))
        }
        catalog = Catalog(self.catalog_path)
        try:
            if catalog.model not in (None, self.model) and catalog.count():
                return report  # another model's collection: the collection refuses to open it, with advice
            known = {r.sha256: r for r in catalog.records()}
            missing = sorted(set(records) - set(known))
            fetched = self._fetch_json([records[s] for s in missing])
            deaths = self._fetch_json([tombstones[s] for s in tombstones if s in known or s in records])
            died = {d["sha256"]: d.get("deleted_at", "") for d in deaths if "sha256" in d}
            new: list[NewImage] = []
            added_at: dict[str, str] = {}
            for data in fetched:
                sha = data.get("sha256", "?")
                if died.get(sha, "") > data.get("added_at", ""):
                    continue  # deleted after it was uploaded
                if data.get("model") != self.model:
                    report.skipped.append(f"{sha}: made by model '{data.get('model')}', not '{self.model}'")
                    continue
                try:
                    new.append(_new_image(data))
                except (KeyError, ValueError, TypeError) as exc:
                    report.skipped.append(f"{sha}: unreadable record ({exc})")
                    continue
                added_at[sha] = data.get("added_at") or _now()
            if new:
                ids = catalog.add(new, model=self.model)
                report.merged += sum(i is not None for i in ids)
                _set_added_at(self.catalog_path, added_at)
            doomed = {sha: row for sha, row in known.items() if sha in died and row.added_at < died[sha]}
            # ...unless someone uploaded the same photo again after that deletion (its record is newer).
            again = self._fetch_json([records[sha] for sha in doomed if sha in records])
            for data in again:
                if data.get("added_at", "") > died[data["sha256"]]:
                    doomed.pop(data["sha256"], None)
            for row in doomed.values():
                catalog.delete(row.id)
                report.deleted += 1
        finally:
            catalog.close()
        for reason in report.skipped:
            log.warning("upload record skipped: %s", reason)
        return report

    def _fetch_json(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        keys = list(keys)
        if not keys:
            return []

        def one(key: str) -> dict[str, Any] | None:
            try:
                return json.loads(self.store.get_object(key))
            except NotFoundError:
                return None  # deleted since the listing
            except ValueError as exc:
                log.warning("ignoring unreadable record %s: %s", key, exc)
                return None

        with ThreadPoolExecutor(max_workers=min(_WORKERS, len(keys)), thread_name_prefix="s3-get") as pool:
            return [r for r in pool.map(one, keys) if r is not None]

    # -- recording changes ------------------------------------------------------------------------------------

    def record_added(self, catalog: Catalog, ids: Iterable[int]) -> None:
        """Write the per-upload record of each newly committed image (never raises: retried later on failure)."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        rows = catalog.get_many(ids)
        records = []
        for image_id in ids:
            row, vector = rows.get(image_id), catalog.embedding(image_id)
            if row is not None and vector is not None:
                records.append(upload_record(row, vector, model=self.model))
        self._put_records(records)
        self.mark_dirty()

    def _put_records(self, records: list[dict[str, Any]]) -> None:
        def one(data: dict[str, Any]) -> None:
            key = f"{UPLOADS_PREFIX}{data['sha256']}.json"
            try:
                self.store.put_object(key, json.dumps(data).encode(), "application/json")
            except ClipSearchError as exc:
                log.warning("upload record %s not written yet (%s); will retry", key, exc)
                with self._pending_lock:
                    self._pending[data["sha256"]] = data
            else:
                with self._pending_lock:
                    self._pending.pop(data["sha256"], None)

        if len(records) == 1:
            one(records[0])
            return
        with ThreadPoolExecutor(max_workers=min(_WORKERS, len(records)), thread_name_prefix="s3-put") as pool:
            list(pool.map(one, records))

    def record_deleted(self, record: ImageRecord) -> None:
        """Tombstone a deleted image so no restore brings it back from its upload record."""
        with self._pending_lock:
            self._pending.pop(record.sha256, None)
        tombstone = {"sha256": record.sha256, "key": record.key, "deleted_at": _now()}
        try:
            self.store.put_object(
                f"{DELETED_PREFIX}{record.sha256}.json", json.dumps(tombstone).encode(), "application/json"
            )
            self.store.delete_object(f"{UPLOADS_PREFIX}{record.sha256}.json")
        except ClipSearchError as exc:
            log.warning("deletion of %s not recorded in the bucket (%s); a restore may bring it back", record.key, exc)
        self.mark_dirty()

    # -- snapshots --------------------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty = True
        if self.snapshot_delay_s <= 0:
            self._timer_flush()
            return
        with self._timer_lock:
            if self._timer is None:
                self._timer = threading.Timer(self.snapshot_delay_s, self._timer_flush)
                self._timer.daemon = True
                self._timer.start()

    def _timer_flush(self) -> None:
        with self._timer_lock:
            self._timer = None
        self.flush()

    def flush(self, *, strict: bool = False) -> bool:
        """Upload pending records and, if anything changed, a snapshot pair. Returns whether one was uploaded.

        Failures are logged, not raised (every image also has its upload record), unless ``strict``.
        """
        try:
            return self._flush()
        except ClipSearchError as exc:
            if strict:
                raise
            log.warning("collection snapshot not uploaded (%s); will retry after the next change", exc)
        except Exception:
            if strict:
                raise
            log.exception("uploading the collection snapshot failed")
        return False

    def _flush(self) -> bool:
        with self._pending_lock:
            pending = list(self._pending.values())
        if pending:
            self._put_records(pending)
        if not self._dirty:
            return False
        with self._lock:
            self._dirty = False
            try:
                self._upload_snapshot()
            except BaseException:
                self._dirty = True
                raise
        return True

    def _upload_snapshot(self) -> None:
        started = time.perf_counter()
        if self._collection is not None:
            self._collection.save()
        if not self.catalog_path.exists():
            return
        workdir = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=self.catalog_path.parent))
        try:
            catalog_tmp = workdir / "catalog.sqlite"
            backup_catalog(self.catalog_path, catalog_tmp)
            with sqlite3.connect(catalog_tmp) as conn:
                count, max_id = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM images").fetchone()
                uid = (conn.execute("SELECT value FROM meta WHERE key = 'uid'").fetchone() or [""])[0]
            conn.close()
            index_tmp = None
            if self.index_path.exists():
                index_tmp = workdir / "index.faiss"
                shutil.copyfile(self.index_path, index_tmp)  # replaced atomically on save: a consistent copy
            manifest = {
                "format": 1,
                "catalog_sha256": _file_sha256(catalog_tmp),
                "index_sha256": _file_sha256(index_tmp) if index_tmp else None,
                "count": count,
                "max_id": max_id,
                "uid": uid,
                "model": self.model,
                "saved_at": _now(),
                "writer": f"{socket.gethostname()}:{os.getpid()}",
            }
            for key, path, sha in (
                (CATALOG_KEY, catalog_tmp, manifest["catalog_sha256"]),
                (INDEX_KEY, index_tmp, manifest["index_sha256"]),
            ):
                if path is not None and self._uploaded.get(key) != sha:
                    self.store.upload_file(key, path, "application/octet-stream")
                    self._uploaded[key] = sha
            self.store.put_object(MANIFEST_KEY, json.dumps(manifest, indent=1).encode(), "application/json")
        finally:
            for leftover in workdir.glob("*"):
                leftover.unlink(missing_ok=True)
            workdir.rmdir()
        self.snapshots_uploaded += 1
        log.info(
            "uploaded collection snapshot (%d images) to %s in %.2f s",
            count,
            self.store.describe(),
            time.perf_counter() - started,
        )

    def close(self) -> None:
        """Cancel the pending timer and upload what changed (failures are logged: records keep every image)."""
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def backup_catalog(source: Path, target: Path) -> None:
    """A consistent, self-contained copy of a live (WAL) catalog through SQLite's online backup API."""
    src = sqlite3.connect(str(source), timeout=30.0)
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal to go with it
    finally:
        dst.close()
        src.close()


def _set_added_at(catalog_path: Path, added_at: dict[str, str]) -> None:
    """Keep the original upload time of merged images (the catalog stamps inserts with the current time)."""
    if not added_at:
        return
    conn = sqlite3.connect(str(catalog_path), timeout=30.0)
    try:
        with conn:
            conn.executemany("UPDATE images SET added_at = ? WHERE sha256 = ?", [(t, s) for s, t in added_at.items()])
    finally:
        conn.close()


def make_replica(settings: Settings, store: ImageStore, *, model: str) -> CollectionReplica | None:
    """The bucket copy of the collection when images live in S3; None for local storage."""
    if not isinstance(store, S3ImageStore):
        return None
    return CollectionReplica(
        store,
        settings.catalog_path,
        settings.index_path,
        model=model,
        snapshot_delay_s=settings.storage.s3.snapshot_delay_s,
    )


# -- storage sync: images in the bucket that the catalog lacks ---------------------------------------------


@dataclass
class SyncReport:
    listed: int = 0
    indexed: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.listed} images in the bucket: {self.indexed} indexed now, {self.already} already indexed, "
            f"{len(self.failed)} failed"
        )


def reindex_bucket(engine: SearchEngine, *, batch_size: int | None = None) -> SyncReport:
    """Embed and catalog every image object in the bucket that the catalog does not know (``storage sync``).

    The object is indexed as it is (no new web copy), under its own key when that is its content-hash key.
    """
    from clip_search.engine import PreparedImage
    from clip_search.images import sha256_hex, web_format

    report = SyncReport()
    known_keys = {r.key for r in engine.catalog.records()}
    known_hashes = engine.catalog.known_hashes()
    batch: list[PreparedImage] = []
    size = batch_size or engine.settings.model.batch_size

    def flush() -> None:
        if batch:
            for result in engine.commit(batch):
                if result.status == "added":
                    report.indexed += 1
                else:
                    report.already += 1
            batch.clear()

    for key in engine.store.list_keys(IMAGE_PREFIX):
        report.listed += 1
        if key in known_keys:
            report.already += 1
            continue
        try:
            data = engine.store.get(key)
            sha = sha256_hex(data)
            if sha in known_hashes:
                report.already += 1
                continue
            decoded = engine.decode(data)
            web = web_format(decoded.format)
            if web is None:  # not viewable as stored: index a web copy instead
                batch.append(engine.prepare(data, source=key))
            else:
                batch.append(
                    PreparedImage(
                        data=data,
                        ext=web[0],
                        content_type=web[1],
                        sha256=sha,
                        source_sha256=sha,
                        width=decoded.width,
                        height=decoded.height,
                        pixels=engine.encoder.preprocess(decoded.image),
                        source=key,
                    )
                )
            known_hashes.add(sha)
        except NotFoundError:
            continue  # deleted since the listing
        except StorageError:
            raise
        except ClipSearchError as exc:
            report.failed.append((key, str(exc)))
            continue
        if len(batch) >= size:
            flush()
    flush()
    return report
