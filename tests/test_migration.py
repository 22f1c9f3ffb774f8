"""A collection made by the previous code (SQLite catalog, schema 1) is converted on open, losing nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clip_search.engine import SearchEngine
from clip_search.errors import ModelMismatchError
from tests.conftest import make_settings, shared_data

# The schema the SQLite catalog had (clip_search/catalog.py before the Lance table), verbatim.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL UNIQUE,
    sha256        TEXT NOT NULL UNIQUE,
    source_sha256 TEXT,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    source        TEXT,
    caption       TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    added_at      TEXT NOT NULL,
    embedding     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_source_sha256 ON images(source_sha256);
"""


def _old_collection(engine: SearchEngine, photos: list[Path]) -> list[dict]:
    """Store the photos and write a schema-1 catalog for them, as the previous code did."""
    rows = []
    for n, path in enumerate(photos):
        prepared = engine.prepare(path.read_bytes(), source=str(path), caption=f"photo {n}", metadata={"n": n})
        engine.store.put(prepared.key, prepared.data, prepared.content_type)
        vector = engine.embed([prepared])[0]
        rows.append(
            dict(
                key=prepared.key,
                sha256=prepared.sha256,
                source_sha256=prepared.source_sha256,
                width=prepared.width,
                height=prepared.height,
                source=prepared.source,
                caption=prepared.caption,
                metadata=json.dumps(prepared.metadata),
                added_at=f"2026-01-0{1 + n % 9}T10:00:00+00:00",
                embedding=np.asarray(vector, dtype="<f4").tobytes(),
            )
        )
    path = engine.settings.legacy_catalog_path
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO meta VALUES ('model', ?), ('dim', ?)", (engine.encoder.name, str(len(vector))))
        conn.executemany(
            "INSERT INTO images(key, sha256, source_sha256, width, height, source, caption, metadata, added_at,"
            " embedding) VALUES (:key, :sha256, :source_sha256, :width, :height, :source, :caption, :metadata,"
            " :added_at, :embedding)",
            rows,
        )
    conn.close()
    return rows


def test_sqlite_catalog_is_migrated_on_open_with_everything_kept(settings):
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:8]
    with SearchEngine(settings) as engine:
        rows = _old_collection(engine, photos)
    assert not (settings.data_dir / "collection.lance").exists()  # nothing but the old catalog so far

    with SearchEngine(settings) as engine:
        assert engine.count() == 8
        assert not settings.legacy_catalog_path.exists()
        assert settings.legacy_catalog_path.with_name("catalog.sqlite.migrated").exists()
        records = {r.key: r for r in engine.collection.records()}
        for row, path in zip(rows, photos, strict=True):
            record = records[row["key"]]
            assert (record.sha256, record.source, record.caption) == (row["sha256"], str(path), row["caption"])
            assert record.metadata == json.loads(row["metadata"]) and record.added_at == row["added_at"]
            vector = engine.collection.embedding(record.id)
            np.testing.assert_array_equal(vector, np.frombuffer(row["embedding"], dtype="<f4"))
            assert engine.search_image(path.read_bytes(), k=1)[0].id == record.id
    with SearchEngine(settings) as engine:  # opened again: nothing migrated twice
        assert engine.count() == 8


def test_migrating_another_models_catalog_is_refused_and_keeps_it(settings, other_tiny_model_dir):
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:2]
    with SearchEngine(settings) as engine:
        _old_collection(engine, photos)
    other = make_settings(settings.data_dir, other_tiny_model_dir)
    with pytest.raises(ModelMismatchError, match=r"set model\.id \(or CLIP_SEARCH_MODEL\) to that model") as info:
        SearchEngine(other)
    assert "a local model folder named 'tiny-siglip'" in str(info.value)
    assert "#" not in str(info.value)  # not the internal signature (folder name + weights fingerprint)
    assert settings.legacy_catalog_path.exists()


@pytest.mark.s3
def test_bucket_layout_is_migrated_with_uploads_and_deletions(s3_env, tmp_path, tiny_model_dir):
    """The bucket's old index/ layout (catalog snapshot + a record per upload + a tombstone per delete) becomes
    the table on the first open: deleted images stay deleted, later uploads are kept, nothing twice on reopen."""
    import base64

    from clip_search.collection.migrate import LEGACY_PREFIX, MIGRATED_MARKER
    from tests.s3server import make_s3_settings

    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, s3_env.new_bucket())
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[30:37]
    with SearchEngine(settings) as engine:
        rows = _old_collection(engine, photos[:6])  # the snapshot: 6 images
        store = engine.store
        store.put_object(
            LEGACY_PREFIX + "catalog.sqlite", settings.legacy_catalog_path.read_bytes(), "application/x-sqlite3"
        )
        settings.legacy_catalog_path.unlink()
        store.put_object(LEGACY_PREFIX + f"deleted/{rows[0]['sha256']}.json", b"{}", "application/json")
        late = engine.prepare(photos[6].read_bytes(), source="upload", caption="uploaded after the snapshot")
        store.put(late.key, late.data, late.content_type)
        record = {
            "key": late.key,
            "sha256": late.sha256,
            "source_sha256": late.source_sha256,
            "width": late.width,
            "height": late.height,
            "source": late.source,
            "caption": late.caption,
            "metadata": {},
            "added_at": "2026-02-01T10:00:00+00:00",
            "model": engine.encoder.name,
            "embedding": base64.b64encode(np.asarray(engine.embed([late])[0], dtype="<f4").tobytes()).decode(),
        }
        store.put_object(LEGACY_PREFIX + f"uploads/{late.sha256}.json", json.dumps(record).encode(), "application/json")
        assert engine.count() == 0  # nothing migrated yet: the old layout appeared after this engine opened

    with SearchEngine(settings) as engine:
        keys = {r.key for r in engine.collection.records()}
        assert keys == {r["key"] for r in rows[1:]} | {late.key}
        assert engine.search_image(photos[6].read_bytes(), k=1)[0].caption == "uploaded after the snapshot"
        assert engine.store.head(MIGRATED_MARKER) is not None
    with SearchEngine(settings) as engine:
        assert engine.count() == 6
