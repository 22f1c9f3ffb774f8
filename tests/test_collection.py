"""The FAISS index is derived from the catalog: lost, damaged or stale snapshots are rebuilt, same results."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_search.catalog import Catalog, NewImage
from clip_search.collection import Collection
from clip_search.engine import SearchEngine
from clip_search.errors import CatalogError, ModelMismatchError
from clip_search.index import load_index
from clip_search.ingest import ingest_folder
from tests.conftest import make_settings, shared_data


@pytest.fixture
def filled(engine: SearchEngine, tmp_path: Path) -> SearchEngine:
    folder = tmp_path / "some"
    folder.mkdir()
    for src in sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:24]:
        shutil.copy(src, folder / src.name)
    ingest_folder(engine, folder, progress=False)
    return engine


def _results(engine: SearchEngine) -> list[list[tuple[int, float]]]:
    return [[(h.id, round(h.score, 5)) for h in engine.search_text(q, k=10)] for q in ("a dog", "a red car", "food")]


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "flip-a-byte"])
def test_lost_or_damaged_index_is_rebuilt_with_the_same_results(filled: SearchEngine, damage: str):
    settings = filled.settings
    before = _results(filled)
    filled.close()
    path = settings.index_path
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])

    reopened = SearchEngine(settings)
    try:
        assert reopened.count() == 24
        assert _results(reopened) == before
        assert load_index(path) is not None  # a good snapshot was written back
    finally:
        reopened.close()


def test_index_lagging_the_catalog_is_topped_up(filled: SearchEngine):
    settings = filled.settings
    stale = settings.index_path.read_bytes()
    extra = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[30]
    added = filled.add_image(extra.read_bytes(), source=str(extra))
    assert added.status == "added"
    filled.close()
    settings.index_path.write_bytes(stale)  # as if the process died before saving the snapshot

    reopened = SearchEngine(settings)
    try:
        assert reopened.count() == 25
        assert reopened.search_image(extra.read_bytes(), k=1)[0].id == added.id
    finally:
        reopened.close()


def test_opening_with_another_model_is_a_clear_error(filled: SearchEngine, other_tiny_model_dir: Path):
    settings = filled.settings
    filled.close()
    other = make_settings(settings.data_dir, other_tiny_model_dir)
    with pytest.raises(ModelMismatchError, match="was indexed with model"):
        SearchEngine(other)


def test_commits_by_another_process_are_seen_by_the_next_search(filled: SearchEngine, tmp_path: Path):
    settings = filled.settings
    writer = SearchEngine(settings)  # a second connection, as an ingest CLI running beside the app would be
    extra = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[40]
    try:
        result = writer.add_image(extra.read_bytes(), source=str(extra))
    finally:
        writer.close()
    hits = filled.search_image(extra.read_bytes(), k=1)
    assert hits[0].id == result.id
    assert filled.count() == 25


def test_delete_removes_from_index_catalog_and_store(filled: SearchEngine):
    victim = filled.search_text("a dog", k=1)[0]
    filled.delete(victim.id)
    assert filled.count() == 23
    assert victim.id not in [h.id for h in filled.search_text("a dog", k=30)]
    assert not filled.store.exists(victim.key)
    settings = filled.settings
    filled.close()
    reopened = SearchEngine(settings)
    try:
        assert reopened.count() == 23
    finally:
        reopened.close()


def test_catalog_schema_is_versioned(tmp_path: Path):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(CatalogError, match="newer"):
        Catalog(path)


def test_collection_search_excludes_and_orders(tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = Catalog(tmp_path / "c.sqlite")
    collection = Collection(catalog, tmp_path / "i.faiss", model="m", save_delay_s=0)
    ids = collection.add(
        [
            NewImage(key=f"images/{i}.jpg", sha256=f"{i:064x}", width=1, height=1, embedding=v)
            for i, v in enumerate(vectors)
        ]
    )
    assert ids == list(range(1, 51))
    (hits,) = collection.search(vectors[7:8], 5)
    assert hits[0][0] == 8 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(vectors @ vectors[7]))[:5] + 1
    assert [i for i, _ in hits] == expected.tolist()
    (without,) = collection.search(vectors[7:8], 5, exclude=[8])
    assert [i for i, _ in without] == [*expected[1:].tolist(), int(np.argsort(-(vectors @ vectors[7]))[5] + 1)]
    collection.close()


def test_interleaved_writers_both_see_everything(settings):
    """Two processes adding in turns get interleaved ids; each one's next search sees all of them."""
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:6]
    a, b = SearchEngine(settings), SearchEngine(settings)
    try:
        added = {}
        for i, path in enumerate(photos):
            writer = a if i % 2 == 0 else b
            added[path] = writer.add_image(path.read_bytes(), source=str(path)).id
        for engine in (a, b):
            for path, image_id in added.items():
                assert engine.search_image(path.read_bytes(), k=1)[0].id == image_id
            assert engine.count() == 6
        victim = added[photos[0]]
        b.delete(victim)
        assert victim not in [h.id for h in a.search_image(photos[0].read_bytes(), k=10)]
        assert a.count() == 5
    finally:
        a.close()
        b.close()


def test_leftovers_of_a_crashed_write_are_cleaned_up(filled: SearchEngine):
    import os
    import time

    settings = filled.settings
    filled.close()
    old = time.time() - 7200
    leftovers = [settings.data_dir / ".index.faiss.abc.tmp", settings.local_image_dir / "ab" / ".x.jpg.def.tmp"]
    fresh = settings.data_dir / ".index.faiss.new.tmp"  # may belong to a process writing right now
    for path in [*leftovers, fresh]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    for path in leftovers:
        os.utime(path, (old, old))
    reopened = SearchEngine(settings)
    try:
        assert not any(p.exists() for p in leftovers)
        assert fresh.exists()
        assert reopened.count() == 24
    finally:
        reopened.close()
