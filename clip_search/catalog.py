"""The catalog: an SQLite file that is the source of truth for what is indexed.

One row per image holds its storage key, content hashes, size, caption/metadata and its embedding. The FAISS
index is derived from these rows and can always be rebuilt from them; a committed catalog transaction is the
moment an image counts as added. The schema is versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clip_search.errors import CatalogError, ModelMismatchError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so FAISS ids stay unambiguous
    key           TEXT NOT NULL UNIQUE,               -- where the store keeps the bytes
    sha256        TEXT NOT NULL UNIQUE,               -- of the stored bytes
    source_sha256 TEXT,                               -- of the bytes we were given (differs for web copies)
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    source        TEXT,                               -- original file path, or 'upload'
    caption       TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',         -- JSON object
    added_at      TEXT NOT NULL,                      -- ISO 8601, UTC
    embedding     BLOB NOT NULL                       -- float32, L2-normalised, little-endian
);
CREATE INDEX IF NOT EXISTS images_source_sha256 ON images(source_sha256);
"""

_ROW_COLUMNS = "id, key, sha256, source_sha256, width, height, source, caption, metadata, added_at"


@dataclass(frozen=True)
class ImageRecord:
    """A catalog row without its vector."""

    id: int
    key: str
    sha256: str
    source_sha256: str | None
    width: int
    height: int
    source: str | None
    caption: str | None
    metadata: dict[str, Any]
    added_at: str


@dataclass
class NewImage:
    """What :meth:`Catalog.add` needs to insert one image."""

    key: str
    sha256: str
    width: int
    height: int
    embedding: np.ndarray
    source_sha256: str | None = None
    source: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogState:
    """Enough to tell whether a saved FAISS index still describes this catalog."""

    uid: str
    model: str | None
    dim: int | None
    count: int
    max_id: int
    deletions: int


def _record(row: sqlite3.Row | tuple) -> ImageRecord:
    rid, key, sha, src_sha, width, height, source, caption, metadata, added_at = row
    return ImageRecord(
        id=rid,
        key=key,
        sha256=sha,
        source_sha256=src_sha,
        width=width,
        height=height,
        source=source,
        caption=caption,
        metadata=json.loads(metadata or "{}"),
        added_at=added_at,
    )


class Catalog:
    """Thread-safe access to the SQLite catalog (one connection, serialised by a lock; WAL for other processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc

    # -- schema ---------------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.path} has schema version {version}, newer than this clip-search "
                    f"understands ({SCHEMA_VERSION}); upgrade clip-search"
                )
            if version == SCHEMA_VERSION:
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if version < 1:
                    for statement in _SCHEMA_V1.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    now = datetime.now(UTC).isoformat()
                    self._conn.executemany(
                        "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                        [("uid", uuid.uuid4().hex), ("created_at", now), ("deletions", "0")],
                    )
                # future: `if version < 2: ...` migrations go here, each idempotent
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- meta -------------------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def model(self) -> str | None:
        """The model whose vectors this catalog holds (None until the first image is added)."""
        with self._lock:
            return self._meta("model")

    @property
    def dim(self) -> int | None:
        with self._lock:
            value = self._meta("dim")
            return int(value) if value else None

    def check_model(self, model: str) -> None:
        """Refuse to mix vectors of two models in one collection."""
        recorded = self.model
        if recorded is not None and recorded != model and self.count() > 0:
            raise ModelMismatchError(
                f"the collection in {self.path.parent} was indexed with model '{recorded}', but the configured "
                f"model is '{model}'. Vectors of different models cannot be compared: point CLIP_SEARCH_MODEL "
                f"(or model.id) back at '{recorded}', or use another data directory (CLIP_SEARCH_DATA_DIR) "
                "and ingest your photos again with the new model."
            )

    def state(self) -> CatalogState:
        with self._lock:
            count, max_id = self._conn.execute("SELECT count(*), coalesce(max(id), 0) FROM images").fetchone()
            return CatalogState(
                uid=self._meta("uid") or "",
                model=self._meta("model"),
                dim=int(self._meta("dim") or 0) or None,
                count=count,
                max_id=max_id,
                deletions=int(self._meta("deletions") or 0),
            )

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits; cheap enough to poll per search."""
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]

    # -- writes -----------------------------------------------------------------------------------------------

    def add(self, images: Sequence[NewImage], *, model: str) -> list[int | None]:
        """Insert images in one transaction; returns each new id, or None where the bytes were already there."""
        if not images:
            return []
        now = datetime.now(UTC).isoformat()
        ids: list[int | None] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                recorded_model = self._meta("model")
                recorded_dim = self._meta("dim")
                dim = int(np.asarray(images[0].embedding).shape[-1])
                if recorded_model is None or self._conn.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None:
                    self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('model', ?)", (model,))
                    self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?)", (str(dim),))
                elif recorded_model != model:
                    raise ModelMismatchError(
                        f"catalog holds vectors of '{recorded_model}', refusing to add vectors of '{model}'"
                    )
                elif recorded_dim and int(recorded_dim) != dim:
                    raise ModelMismatchError(f"catalog holds {recorded_dim}-d vectors, refusing {dim}-d ones")
                for img in images:
                    vector = np.ascontiguousarray(img.embedding, dtype="<f4").reshape(-1)
                    if vector.shape[0] != dim:
                        raise ValueError(f"embedding of {img.key} has {vector.shape[0]} dimensions, expected {dim}")
                    row = self._conn.execute(
                        "INSERT INTO images(key, sha256, source_sha256, width, height, source, caption, metadata,"
                        " added_at, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING RETURNING id",
                        (
                            img.key,
                            img.sha256,
                            img.source_sha256,
                            int(img.width),
                            int(img.height),
                            img.source,
                            img.caption,
                            json.dumps(img.metadata, ensure_ascii=False),
                            now,
                            vector.tobytes(),
                        ),
                    ).fetchone()
                    ids.append(row[0] if row else None)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return ids

    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove one row; returns what was removed (None if there was no such id)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is not None:
                    self._conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
                    self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'deletions'")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return _record(row) if row is not None else None

    def update_caption(self, image_id: int, caption: str | None) -> None:
        with self._lock:
            self._conn.execute("UPDATE images SET caption = ? WHERE id = ?", (caption, image_id))

    # -- reads ------------------------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM images").fetchone()[0]

    def get(self, image_id: int) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return _record(row) if row else None

    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        if not ids:
            return {}
        placeholders = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM images WHERE id IN ({placeholders})", [int(i) for i in ids]
            ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def find_by_sha256(self, sha256: str) -> ImageRecord | None:
        """The image whose stored or original bytes have this hash."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM images WHERE sha256 = ? OR source_sha256 = ? LIMIT 1", (sha256, sha256)
            ).fetchone()
        return _record(row) if row else None

    def find_by_key(self, key: str) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM images WHERE key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def known_hashes(self) -> set[str]:
        """Every stored and original sha256, for skipping files an ingest has already seen."""
        with self._lock:
            rows = self._conn.execute("SELECT sha256, source_sha256 FROM images").fetchall()
        known = {r[0] for r in rows}
        known.update(r[1] for r in rows if r[1])
        return known

    def embedding(self, image_id: int) -> np.ndarray | None:
        with self._lock:
            row = self._conn.execute("SELECT embedding FROM images WHERE id = ?", (image_id,)).fetchone()
        return np.frombuffer(row[0], dtype="<f4").copy() if row else None

    def iter_embeddings(self, *, after_id: int = 0, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) chunks in id order, for building or topping up the index."""
        last = after_id
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT id, embedding FROM images WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32, copy=False)
            yield ids, vectors
            last = int(ids[-1])

    def all_ids(self) -> set[int]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT id FROM images")}

    def embeddings_for(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given rows that exist, in id order."""
        placeholders = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, embedding FROM images WHERE id IN ({placeholders}) ORDER BY id", [int(i) for i in ids]
            ).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32, copy=False),
        )

    def count_up_to(self, max_id: int) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM images WHERE id <= ?", (max_id,)).fetchone()[0]

    def records(self, *, limit: int | None = None, offset: int = 0) -> list[ImageRecord]:
        sql = f"SELECT {_ROW_COLUMNS} FROM images ORDER BY id"
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params = (limit, offset)
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_record(r) for r in rows]
