"""The collection's record: one Lance table on local disk or in the bucket, shared by every process.

Lance gives what a home-made catalog had to fake: atomic commits from several writers that do not coordinate
(replicas, the CLI, bulk jobs), versions, and a columnar file that reads a million vectors in seconds. One row per
image holds its storage key, hashes, size, caption, metadata, time, model and L2-normalised vector, and for a
visitor's upload who may see it (visibility, the owner key's hash), the hash of its delete code, the uploader's
client id and its moderation score. The model and the schema version are recorded in the table's schema metadata,
so a table made by another model is refused; a table of schema 2 is upgraded in place on open (see
:meth:`CollectionTable.upgrade`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import lance
import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree

from clip_search.collection.records import ImageRecord, NewImage, is_sha256
from clip_search.collection.sync import ids_and_vectors
from clip_search.collection.visibility import HELD, PRIVATE, PUBLIC
from clip_search.encoder import model_label
from clip_search.errors import CatalogError, ModelMismatchError, StorageError
from clip_search.memory import limit_malloc_arenas

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 1 was the SQLite catalog (see clip_search.collection.migrate); 3 added UPLOAD_FIELDS
_META_SCHEMA = b"clip_search.schema_version"
_META_MODEL = b"clip_search.model"
_META_MODEL_ID = b"clip_search.model_id"
RECORD_COLUMNS = [
    "id",
    "key",
    "sha256",
    "source_sha256",
    "width",
    "height",
    "source",
    "caption",
    "metadata",
    "added_at",
    "visibility",
    "client_id",
    "moderation_score",
]
# Schema 3: who may see a visitor's upload and who may take it back. All nullable: a row written without them (an
# ingest, a bulk job, a row of schema 2) is public, has no owner and no delete code, and was never moderated.
UPLOAD_FIELDS = [
    pa.field("visibility", pa.string()),  # public (or null), private, held (see clip_search.collection.visibility)
    pa.field("owner_hash", pa.string()),  # hash of the visitor key that sees a private photo
    pa.field("delete_hash", pa.string()),  # sha256 of the secret of the delete code given to the uploader
    pa.field("client_id", pa.string()),  # pseudonymous id of the uploader's address (clip_search.visitor_keys)
    pa.field("moderation_score", pa.float32()),  # the upload check's score (clip_search.moderation)
]
UPGRADE_ATTEMPTS = 5


def table_schema(dim: int, *, model: str, model_id: str) -> pa.Schema:
    """Version 3 of the collection's schema; the vector is a fixed-size list so Lance stores it flat."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("metadata", pa.string()),  # a JSON object
        pa.field("added_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        *UPLOAD_FIELDS,
    ]
    meta = {_META_SCHEMA: str(SCHEMA_VERSION).encode(), _META_MODEL: model.encode(), _META_MODEL_ID: model_id.encode()}
    return pa.schema(fields, metadata=meta)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def table_io(action: str) -> Iterator[None]:
    """Lance's I/O errors (a stopped server, wrong credentials, a network cut) as a :class:`StorageError`.

    The message says what failed in words; Lance's own text (endpoint, object path) goes to the log only.
    """
    try:
        yield
    except (OSError, RuntimeError, ValueError, pa.ArrowException) as exc:
        text = str(exc)
        if isinstance(exc, ValueError) and "LanceError(IO)" not in text and "error sending request" not in text:
            raise
        log.warning("collection table: %s failed: %s", action, text)
        if "error sending request" in text or "Connection refused" in text or "timed out" in text:
            raise StorageError(
                f"cannot reach the endpoint of the collection's table while {action}: check that the server "
                "is running and S3_ENDPOINT_URL"
            ) from None
        raise StorageError(f"the collection's table could not be read or written while {action}") from None


class CollectionTable:
    """A Lance table of images: created on the first add (its vector width comes from the model)."""

    def __init__(self, uri: str, *, name: str = "collection", storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.name = name
        self._options = storage_options
        limit_malloc_arenas()  # before Lance starts its reader threads
        with table_io("opening the collection"):
            self._db = lancedb.connect(uri, storage_options=storage_options)
            self._table = self._open()
        self._check_schema()

    def _open(self) -> Any:
        try:
            return self._db.open_table(self.name)
        except ValueError as exc:
            if "not found" in str(exc).lower():
                return None
            raise

    def _check_schema(self) -> None:
        if self._table is None:
            return
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"the collection's table has schema version {version}, newer than this clip-search "
                f"understands ({SCHEMA_VERSION}): upgrade clip-search"
            )
        if version < SCHEMA_VERSION:
            self.upgrade()

    @property
    def schema_version(self) -> int:
        return int(self._meta(_META_SCHEMA) or 0)

    def upgrade(self) -> None:
        """Schema 2 to 3 in place: the upload columns are added as nulls (a metadata-only change: no data file is
        rewritten, every row keeps its values and reads as public, unowned and unmoderated), then the version is
        recorded. Lance refuses one of two schema changes (or a change and an append) committed at the same moment;
        the loser looks again and finishes whatever is still missing."""
        for attempt in range(1, UPGRADE_ATTEMPTS + 1):
            try:
                with table_io("upgrading the collection's table"):
                    self._table.checkout_latest()
                    have = set(self._table.schema.names)
                    missing = [f for f in UPLOAD_FIELDS if f.name not in have]
                    if missing:
                        self._table.add_columns(missing)
                        self._table.checkout_latest()
                    if self.schema_version < SCHEMA_VERSION:
                        self._table.to_lance().update_schema_metadata({_META_SCHEMA.decode(): str(SCHEMA_VERSION)})
                        self._table.checkout_latest()
                log.warning("upgraded the collection's table %s to schema %d", self.uri, SCHEMA_VERSION)
                return
            except (StorageError, OSError, RuntimeError, ValueError) as exc:
                if attempt == UPGRADE_ATTEMPTS:
                    raise CatalogError(
                        f"the collection's table could not be upgraded to schema {SCHEMA_VERSION}: {exc}"
                    ) from None
                log.info("upgrading the table met another writer (%s); trying again", exc)
                time.sleep(0.1 * attempt)

    # -- facts ------------------------------------------------------------------------------------------------

    def _meta(self, key: bytes) -> str | None:
        if self._table is None:
            return None
        value = (self._table.schema.metadata or {}).get(key)
        return value.decode() if value else None

    @property
    def exists(self) -> bool:
        return self._table is not None

    @property
    def model(self) -> str | None:
        """The signature of the model whose vectors the table holds (None before the first image)."""
        return self._meta(_META_MODEL)

    @property
    def model_id(self) -> str | None:
        """The model id or path that was configured when the table was made."""
        return self._meta(_META_MODEL_ID)

    @property
    def dim(self) -> int | None:
        if self._table is None:
            return None
        return self._table.schema.field("vector").type.list_size

    def check_model(self, model: str, model_id: str) -> None:
        """Refuse to mix vectors of two models: their similarities would mean nothing."""
        recorded = self.model
        if recorded is not None and recorded != model:
            raise ModelMismatchError(
                f"this collection was indexed with "
                f"{f'model {self.model_id!r}' if self.model_id else model_label(recorded)}, but '{model_id}' is "
                "configured: set model.id (or CLIP_SEARCH_MODEL) back to that model, or use another data_dir / "
                "bucket prefix for a new collection"
            )

    # -- versions ---------------------------------------------------------------------------------------------

    def latest(self, *, at_least: int | None = None) -> Any:
        """The newest committed version as a Lance dataset (an immutable snapshot, safe to read from threads).

        ``at_least``: a version this process just committed. Under load, a fresh look at the table was seen to
        return an older version than that; the committed version is then opened by number.
        """
        if self._table is None:
            with table_io("opening the collection"):
                found = self._open()  # made by another process since we looked (or by our first add, meanwhile)
            if found is None:
                return None
            self._table = found  # never back to None: a racing first add may have just created it
            self._check_schema()
        with table_io("looking for changes"):  # a fresh handle: lancedb's shared one can lag under threads
            ds = lance.dataset(self._table.uri, storage_options=self._options)
            if at_least is not None and ds.version < at_least:
                log.debug("table looked older (%d) than our own commit (%d)", ds.version, at_least)
                ds = lance.dataset(self._table.uri, version=at_least, storage_options=self._options)
            return ds

    # -- writes -----------------------------------------------------------------------------------------------

    def add(self, images: Sequence[NewImage], *, model: str, model_id: str) -> int:
        """Commit rows in one transaction (the moment they count as added); returns the new version."""
        dim = int(np.asarray(images[0].embedding).shape[-1])
        self._prepare(dim, model=model, model_id=model_id)
        return self.append(self._arrow(images, model=model))

    def _prepare(self, dim: int, *, model: str, model_id: str) -> None:
        """Create the table on first use; refuse rows of another model or width."""
        if self._table is None:
            with table_io("creating the collection"):
                self._table = self._db.create_table(
                    self.name, schema=table_schema(dim, model=model, model_id=model_id), exist_ok=True
                )
        self.check_model(model, model_id)
        if self.dim != dim:
            raise ModelMismatchError(f"the collection holds {self.dim}-d vectors, refusing {dim}-d ones")

    def append(self, rows: pa.Table) -> int:
        """Commit Arrow rows of this table's schema in one transaction; returns the new version."""
        with table_io("adding images"):
            self._table.checkout_latest()  # a long-lived handle may point at a version a cleanup has removed
            return int(self._table.add(rows).version)

    def append_vectors(self, rows: dict[str, Any], vectors: np.ndarray, *, model: str, model_id: str) -> int:
        """Bulk path (synthetic collections, bulk jobs): columns as lists, vectors as one (n, dim) array."""
        self._prepare(vectors.shape[1], model=model, model_id=model_id)
        n = len(vectors)
        columns = dict(rows)
        columns.setdefault("added_at", [_now()] * n)
        columns.setdefault("model", [model] * n)
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        for field in self._table.schema:
            columns.setdefault(field.name, [None] * n)
        return self.append(pa.table(columns, schema=self._table.schema))

    def _arrow(self, images: Sequence[NewImage], *, model: str) -> pa.Table:
        vectors = np.stack([np.asarray(img.embedding, dtype=np.float32).reshape(-1) for img in images])
        now = _now()
        columns = {
            "id": [img.id for img in images],
            "key": [img.key for img in images],
            "sha256": [img.sha256 for img in images],
            "source_sha256": [img.source_sha256 for img in images],
            "width": [int(img.width) for img in images],
            "height": [int(img.height) for img in images],
            "source": [img.source for img in images],
            "caption": [img.caption for img in images],
            "metadata": [json.dumps(img.metadata, ensure_ascii=False) for img in images],
            "added_at": [datetime.fromisoformat(img.added_at) if img.added_at else now for img in images],
            "model": [model] * len(images),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            **{f.name: [getattr(img, f.name) for img in images] for f in UPLOAD_FIELDS},
        }
        return pa.table(columns, schema=self._table.schema)

    def delete(self, image_ids: Sequence[int]) -> int | None:
        """Delete rows in one transaction; returns the new version (None when there was nothing to do)."""
        if self._table is None or not image_ids:
            return None
        with table_io("deleting images"):
            self._table.checkout_latest()
            return int(self._table.delete(_id_filter(image_ids)).version)

    def approve(self, image_ids: Sequence[int]) -> int:
        """Held rows become public, or private when they have an owner (one transaction each); returns the
        version. Safe to repeat: only rows still held change."""
        held = f"{_id_filter(image_ids)} AND visibility = '{HELD}'"
        with table_io("approving images"):
            self._table.checkout_latest()
            self._table.update(where=f"{held} AND owner_hash IS NULL", values={"visibility": PUBLIC})
            self._table.update(where=f"{held} AND owner_hash IS NOT NULL", values={"visibility": PRIVATE})
            return int(self._table.version)

    def optimize(self, *, keep_versions_s: float) -> dict[str, Any]:
        """Compact small fragments, index the lookup columns, drop versions older than ``keep_versions_s``.

        Safe while others read and write: Lance commits a compaction like any other change, and readers only
        ever hold versions newer than the cleanup horizon (they move to the latest every few seconds).
        """
        if self._table is None:
            return {}
        with table_io("compacting the table"):
            self._table.checkout_latest()
            before = len(self._table.to_lance().get_fragments())
            self._index_lookup_columns()
            stats = self._table.optimize(cleanup_older_than=timedelta(seconds=keep_versions_s))
        after = len(self.latest().get_fragments())
        log.info("optimized the collection table: %d fragments -> %d", before, after)
        return {"fragments_before": before, "fragments_after": after, "stats": str(stats)}

    def index_lookup_columns(self) -> None:
        """Scalar (BTree) indices on id, sha256, source_sha256 and key where missing: a duplicate check at a
        million rows then reads a few pages instead of every row (88 -> 13 ms). ``optimize`` also does this."""
        if self._table is None:
            return
        with table_io("indexing the table"):
            self._table.checkout_latest()
            self._index_lookup_columns()

    def _index_lookup_columns(self) -> None:
        have = {tuple(ix.columns) for ix in self._table.list_indices()}
        for column in ("id", "sha256", "source_sha256", "key"):
            if (column,) not in have and self._table.count_rows() > 0:
                self._table.create_index(column, config=BTree())  # as lancedb's docs call it

    # -- reads ------------------------------------------------------------------------------------------------

    def _read(self, ds: Any, where: str, columns: list[str], limit: int | None = None) -> pa.Table:
        if ds is None:
            return pa.table({c: [] for c in columns})
        with table_io("reading image rows"):
            return ds.to_table(columns=columns, filter=where, limit=limit)

    def records_where(self, ds: Any, where: str, limit: int | None = None) -> list[ImageRecord]:
        return _records(self._read(ds, where, RECORD_COLUMNS, limit))

    def get_many(self, ds: Any, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
        if not image_ids:
            return {}
        return {r.id: r for r in self.records_where(ds, _id_filter(image_ids))}

    def find_by_sha256(self, ds: Any, *hashes: str | None, where: str | None = None) -> ImageRecord | None:
        """The image whose stored or original bytes have one of these hashes (one query for all of them), among
        the rows passing ``where``."""
        wanted = ", ".join(f"'{h}'" for h in dict.fromkeys(hashes) if h and is_sha256(h))
        if not wanted:
            return None
        condition = f"(sha256 IN ({wanted}) OR source_sha256 IN ({wanted}))" + (f" AND {where}" if where else "")
        found = self.records_where(ds, condition, limit=1)
        return found[0] if found else None

    def hashes_of(self, ds: Any, image_ids: Sequence[int]) -> pa.Table:
        """The ``sha256`` and ``source_sha256`` columns of these rows."""
        return self._read(ds, _id_filter(image_ids), ["sha256", "source_sha256"])

    def delete_hash(self, ds: Any, image_id: int) -> str | None:
        table = self._read(ds, _id_filter([image_id]), ["delete_hash"], limit=1)
        return table.column("delete_hash")[0].as_py() if table.num_rows else None

    def find_by_key(self, ds: Any, key: str) -> ImageRecord | None:
        quoted = key.replace("'", "''")
        found = self.records_where(ds, f"key = '{quoted}'", limit=1)
        return found[0] if found else None

    def vectors(self, ds: Any, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the rows that exist among ``image_ids``."""
        table = self._read(ds, _id_filter(image_ids), ["id", "vector"]) if image_ids else None
        if table is None or table.num_rows == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim or 0), dtype=np.float32)
        return ids_and_vectors(table)

    def hashes(self, ds: Any, *, where: str | None = None) -> set[str]:
        """Every stored and original sha256 (of the rows passing ``where``), for skipping files an ingest has
        already seen."""
        if ds is None:
            return set()
        with table_io("reading image hashes"):
            table = ds.to_table(columns=["sha256", "source_sha256"], filter=where)
        known = set(table.column("sha256").to_pylist())
        known.update(s for s in table.column("source_sha256").to_pylist() if s)
        return known

    def iter_records(self, ds: Any, *, batch_size: int = 4096) -> Iterator[ImageRecord]:
        if ds is None:
            return
        for batch in ds.to_batches(columns=RECORD_COLUMNS, batch_size=batch_size):
            yield from _records(pa.Table.from_batches([batch]))


def _id_filter(image_ids: Sequence[int]) -> str:
    return f"id IN ({', '.join(str(int(i)) for i in image_ids)})"


def _records(table: pa.Table) -> list[ImageRecord]:
    rows = table.to_pylist()
    return [
        ImageRecord(
            id=row["id"],
            key=row["key"],
            sha256=row["sha256"],
            source_sha256=row["source_sha256"],
            width=row["width"],
            height=row["height"],
            source=row["source"],
            caption=row["caption"],
            metadata=json.loads(row["metadata"] or "{}"),
            added_at=row["added_at"].isoformat(),
            visibility=row["visibility"] or PUBLIC,
            client_id=row["client_id"],
            moderation_score=row["moderation_score"],
        )
        for row in rows
    ]
