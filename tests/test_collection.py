"""The vector index is derived from the Lance table: lost, damaged or stale caches are rebuilt, same results."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pytest

from clip_search.collection import Collection, CollectionTable, NewImage
from clip_search.collection.vector_index import VectorIndex
from clip_search.engine import SearchEngine
from clip_search.errors import CatalogError, ModelMismatchError
from clip_search.ingest import ingest_folder
from clip_search.synthetic import clustered_vectors
from tests.conftest import ROOT, make_settings, shared_data


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


def _ivf_settings(tmp_path: Path, tiny_model_dir: Path, n: int = 3000, **index):
    """A synthetic collection big enough for IVF, searched with every list probed (so exactly)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clip_search.testing",
            "fill",
            str(tmp_path / "ivf"),
            "--n",
            str(n),
            "--model",
            str(tiny_model_dir),
            "--clusters",
            "30",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, CLIP_SEARCH_CONFIG=str(ROOT / "config.yaml")),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return make_settings(tmp_path / "ivf", tiny_model_dir, index=index or {"kind": "ivf", "nlist": 16, "nprobe": 16})


def test_ivf_recall_against_exact_search_and_exact_scores(tmp_path, tiny_model_dir):
    settings = _ivf_settings(tmp_path, tiny_model_dir, n=8000, kind="ivf")  # default nlist and nprobe
    with SearchEngine(settings) as engine:
        assert engine.collection._index.kind == "ivf"
        ids, vectors = (np.concatenate(part) for part in zip(*engine.collection.iter_vectors(), strict=True))
        queries = clustered_vectors(200, vectors.shape[1], clusters=30, seed=0, start=10_000)  # unseen rows
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        found = engine.search_vectors(queries, 10)
        recall = np.mean([len(set(ids[e]) & {i for i, _ in f}) / 10 for e, f in zip(exact, found, strict=True)])
        assert recall >= 0.95
        by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
        for query, hits in zip(queries, found, strict=True):
            for image_id, score in hits:
                assert score == pytest.approx(float(vectors[by_id[image_id]] @ query), abs=1e-5)


def _vector_results(engine: SearchEngine, queries: np.ndarray) -> list[list[tuple[int, float]]]:
    return [[(i, round(s, 5)) for i, s in hits] for hits in engine.search_vectors(queries, 10)]


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "flip-a-byte"])
def test_lost_or_damaged_ivf_cache_is_rebuilt_with_the_same_results(tmp_path, tiny_model_dir, damage: str):
    settings = _ivf_settings(tmp_path, tiny_model_dir)
    queries = clustered_vectors(5, 64, clusters=30, seed=9)  # the tiny model is 64-d
    with SearchEngine(settings) as engine:
        assert engine.collection._index.kind == "ivf"
        before = _vector_results(engine, queries)
    (path,) = (settings.data_dir / "cache").glob("ivf-*.faiss")
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    with SearchEngine(settings) as reopened:
        assert reopened.count() == 3000
        assert _vector_results(reopened, queries) == before
    VectorIndex.load(path)  # a good cache was written back


def test_ivf_cache_lagging_the_table_is_topped_up(tmp_path, tiny_model_dir):
    settings = _ivf_settings(tmp_path, tiny_model_dir)
    with SearchEngine(settings):
        pass
    (path,) = (settings.data_dir / "cache").glob("ivf-*.faiss")
    stale = path.read_bytes()
    extra = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[30]
    with SearchEngine(settings) as engine:
        added = engine.add_image(extra.read_bytes(), source=str(extra))
        assert added.status == "added"
    path.write_bytes(stale)  # as if the process died before saving the cache
    with SearchEngine(settings) as reopened:
        assert reopened.count() == 3001
        hit = reopened.search_image(extra.read_bytes(), k=1)[0]
        assert hit.id == added.id and hit.score == pytest.approx(1.0, abs=1e-4)


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


def test_table_schema_is_versioned(filled: SearchEngine):
    settings = filled.settings
    filled.close()
    ds = lance.dataset(str(settings.data_dir / "collection.lance"))
    assert ds.schema.metadata[b"clip_search.schema_version"] == b"3"
    meta = {k.decode(): v.decode() for k, v in ds.schema.metadata.items()}
    ds.update_schema_metadata({**meta, "clip_search.schema_version": "99"}, replace=True)
    with pytest.raises(CatalogError, match="newer"):
        SearchEngine(settings)


def test_collection_search_excludes_and_orders(tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", background=False)
    images = [
        NewImage(
            key=f"images/{i}.jpg", sha256=hashlib.sha256(str(i).encode()).hexdigest(), width=1, height=1, embedding=v
        )
        for i, v in enumerate(vectors)
    ]
    ids = collection.add(images)
    assert ids == [img.id for img in images] and len(set(ids)) == 50
    order = np.argsort(-(vectors @ vectors[7]))
    (hits,) = collection.search(vectors[7:8], 5)
    assert hits[0][0] == ids[7] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [i for i, _ in hits] == [ids[j] for j in order[:5]]
    (without,) = collection.search(vectors[7:8], 5, exclude=[ids[7]])
    assert [i for i, _ in without] == [ids[j] for j in order[1:6]]
    assert collection.add(images[:3]) == [None, None, None]  # already there: nothing written twice
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
    import time

    settings = filled.settings
    filled.close()
    old = time.time() - 7200
    leftovers = [
        settings.data_dir / "cache" / ".ivf-x.faiss.abc.tmp",
        settings.local_image_dir / "ab" / ".x.jpg.def.tmp",
    ]
    fresh = settings.data_dir / "cache" / ".ivf-x.faiss.new.tmp"  # may belong to a process writing right now
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


def test_an_outgrown_ivf_is_retrained_by_optimize(tmp_path, tiny_model_dir):
    settings = _ivf_settings(tmp_path, tiny_model_dir, n=1000, kind="ivf", nlist=8, nprobe=8)
    with SearchEngine(settings) as engine:
        assert engine.collection._index.trained_on == 1000
        _ivf_settings(tmp_path, tiny_model_dir, n=4500)  # another process grows it 4.5-fold meanwhile
        report = engine.collection.optimize(keep_versions_s=3600)
        assert report["retrained"] and engine.count() == 4500
        assert engine.collection._index.trained_on == 4500
        ids, vectors = (np.concatenate(part) for part in zip(*engine.collection.iter_vectors(), strict=True))
        for row in (0, 1200, 4499):  # rows from before and after the growth find themselves
            (hit,) = engine.search_vectors(vectors[row : row + 1], 1)[0]
            assert hit[0] == ids[row] and hit[1] == pytest.approx(1.0, abs=1e-5)
