"""A collection table written by schema 2 is upgraded in place to schema 3 on open, losing nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import lance
import lancedb
import numpy as np
import pyarrow as pa

from clip_search.engine import SearchEngine
from clip_search.ingest import ingest_folder
from tests.conftest import shared_data


def _schema_v2(dim: int, model: str, model_id: str) -> pa.Schema:
    """The table's schema 2 (clip_search/collection/table.py before the upload columns), verbatim."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("added_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ]
    meta = {
        b"clip_search.schema_version": b"2",
        b"clip_search.model": model.encode(),
        b"clip_search.model_id": model_id.encode(),
    }
    return pa.schema(fields, metadata=meta)


def _write_v2_table(engine: SearchEngine, photos: list[Path]) -> pa.Table:
    """Store the photos and commit their rows in a schema-2 table, in two appends (two fragments), as v2 did."""
    from clip_search.collection.records import image_id

    rows = []
    for n, path in enumerate(photos):
        prepared = engine.prepare(path.read_bytes(), source=str(path), caption=f"photo {n}", metadata={"n": n})
        engine.store.put(prepared.key, prepared.data, prepared.content_type)
        rows.append(
            {
                "id": image_id(prepared.sha256),
                "key": prepared.key,
                "sha256": prepared.sha256,
                "source_sha256": prepared.source_sha256,
                "width": prepared.width,
                "height": prepared.height,
                "source": prepared.source,
                "caption": prepared.caption,
                "metadata": json.dumps(prepared.metadata),
                "added_at": datetime(2026, 1, 1 + n, 10, tzinfo=UTC),
                "model": engine.encoder.name,
                "vector": engine.embed([prepared])[0].tolist(),
            }
        )
    schema = _schema_v2(len(rows[0]["vector"]), engine.encoder.name, engine.settings.model.id)
    table = pa.Table.from_pylist(rows, schema=schema)
    db = lancedb.connect(str(engine.settings.data_dir))
    created = db.create_table("collection", schema=schema)
    created.add(table.slice(0, 4))
    created.add(table.slice(4))
    return table


def test_a_schema_2_table_is_upgraded_in_place_with_every_row_kept(settings, tmp_path):
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:7]
    with SearchEngine(settings) as engine:  # nothing there yet: the engine only provides the model and the store
        written = _write_v2_table(engine, photos)
    path = str(settings.data_dir / "collection.lance")
    before = lance.dataset(path)
    data_files = {f.path for frag in before.get_fragments() for f in frag.data_files()}

    with SearchEngine(settings) as engine:
        assert engine.count() == 7
        ds = lance.dataset(path)
        assert ds.schema.metadata[b"clip_search.schema_version"] == b"3"
        for name in ("visibility", "owner_hash", "delete_hash", "client_id", "moderation_score"):
            assert ds.schema.field(name).nullable, name
        # Metadata only: every data file of the old rows is still there, none rewritten.
        assert data_files <= {f.path for frag in ds.get_fragments() for f in frag.data_files()}
        upgraded = ds.to_table(columns=written.column_names).sort_by("id")
        assert upgraded.equals(written.sort_by("id").cast(upgraded.schema))
        extra = ds.to_table(columns=["visibility", "owner_hash", "delete_hash", "client_id", "moderation_score"])
        assert all(column.null_count == 7 for column in extra.columns)  # old rows: public, no owner, no code
        for row, photo in zip(written.to_pylist(), photos, strict=True):
            hit = engine.search_image(photo.read_bytes(), k=1)[0]
            assert (hit.id, hit.caption) == (row["id"], row["caption"])
            np.testing.assert_array_equal(engine.collection.embedding(row["id"]), np.float32(row["vector"]))
        # The upgraded table takes new rows, and an ingest skips the photos it already holds.
        folder = tmp_path / "more"
        folder.mkdir()
        for photo in sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[5:9]:
            (folder / photo.name).symlink_to(photo)
        report = ingest_folder(engine, folder, progress=False)
        assert (report.added, report.already_indexed) == (2, 2) and engine.count() == 9

    with SearchEngine(settings) as engine:  # opened again: nothing to upgrade, nothing lost
        assert engine.count() == 9
        assert lance.dataset(path).schema.metadata[b"clip_search.schema_version"] == b"3"
