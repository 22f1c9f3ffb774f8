"""An upload's near-duplicate check reads a few cells of a large flat collection, not every vector, and still finds
the photo it copies; removals, additions and rows the uploader may not see are followed (clip_search.collection.cells).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from clip_search.collection import Collection, CollectionTable, NewImage
from clip_search.collection.cells import MIN_ROWS, Cells
from clip_search.collection.vector_index import FlatIndex
from clip_search.collection.visibility import PRIVATE, PUBLIC_VIEWER, owned_by
from clip_search.synthetic import clustered_vectors

N, DIM = MIN_ROWS + 5_000, 96


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def near_copies(rng: np.random.Generator, originals: np.ndarray, cosine: float) -> np.ndarray:
    """Vectors at exactly ``cosine`` to each original (a resized or re-compressed photo sits at 0.97-0.99)."""
    noise = unit(rng.standard_normal(originals.shape))
    noise = unit(noise - (noise * originals).sum(1, keepdims=True) * originals)
    return unit(cosine * originals + np.sqrt(1 - cosine**2) * noise)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_vectors(N, DIM, clusters=200, seed=3)


@pytest.fixture
def index(vectors: np.ndarray) -> FlatIndex:
    index = FlatIndex(DIM)
    index.add(np.arange(N) + 10, vectors)
    rows, removals = index.cells_snapshot()
    assert index.install_cells(Cells.build(rows), removals)
    return index


def _exact_nearest(index: FlatIndex, queries: np.ndarray) -> np.ndarray:
    return index.search(queries, 1)[1][:, 0]


@pytest.mark.parametrize("cosine", [0.97, 0.99])
def test_cells_find_what_an_exact_scan_finds_reading_a_few_percent_of_the_rows(index, vectors, cosine):
    rng = np.random.default_rng(1)
    picked = rng.choice(N, 200, replace=False)
    copies = near_copies(rng, vectors[picked], cosine)
    found = [index.nearest(copy[None]) for copy in copies]
    assert np.mean([f[0] for f in found] == _exact_nearest(index, copies)) >= 0.99
    for copy, (image_id, score) in zip(copies, found, strict=True):  # scores are exact cosines, whatever found
        assert score == pytest.approx(float(vectors[image_id - 10] @ copy), abs=1e-5)
    read = np.mean([len(index._cells.candidates(copy)) for copy in copies])
    assert read < 0.1 * N


def test_cells_follow_removals_and_additions(index, vectors):
    rng = np.random.default_rng(2)
    gone = np.arange(10, N + 10, 3)
    index.remove(gone)  # holes filled by rows from the end: the cells move with them
    new = unit(rng.standard_normal((500, DIM)))
    index.add(np.arange(500) + 10 * N, new)
    copies_old = near_copies(rng, vectors[1:300:3], 0.98)  # rows 1, 4, 7...: ids 11, 14, ... were kept
    copies_new = near_copies(rng, new[:100], 0.98)
    for copy in np.concatenate([copies_old, copies_new]):
        image_id, _ = index.nearest(copy[None])
        assert image_id not in set(gone.tolist())
    assert np.mean([index.nearest(c[None])[0] for c in copies_new] == np.arange(100) + 10 * N) >= 0.99
    assert np.mean([index.nearest(c[None])[0] for c in copies_old] == np.arange(1, 300, 3) + 10) >= 0.99


def test_cells_built_before_a_removal_are_not_installed(vectors):
    index = FlatIndex(DIM)
    index.add(np.arange(N), vectors)
    rows, removals = index.cells_snapshot()
    cells = Cells.build(rows)
    index.remove(np.array([5]))  # moved a row while the cells were being built
    assert not index.install_cells(cells, removals)
    assert index.cells_trained_on == 0  # checks go on scanning every vector, exactly
    assert index.nearest(vectors[7][None])[0] == 7


def test_a_row_the_uploader_may_not_see_is_never_its_near_duplicate(index, vectors):
    copy = near_copies(np.random.default_rng(4), vectors[42:43], 0.99)
    assert index.nearest(copy)[0] == 52
    image_id, _ = index.nearest(copy, blocked=np.array([52]))
    assert image_id != 52


def _image(i: int, vector: np.ndarray, **fields) -> NewImage:
    sha = hashlib.sha256(f"near-dup-{i}".encode()).hexdigest()
    return NewImage(key=f"images/{sha}.jpg", sha256=sha, width=1, height=1, embedding=vector, **fields)


def test_a_large_collection_builds_its_cells_in_the_background(tmp_path, vectors):
    table = CollectionTable(str(tmp_path))
    Collection(table, model="m", model_id="m", background=False).add([_image(i, v) for i, v in enumerate(vectors)])
    collection = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", refresh_s=3600)
    try:
        assert collection.wait_for_cells(timeout=120)
        assert collection._index.cells_trained_on == N
        rng = np.random.default_rng(5)
        photo = unit(rng.standard_normal(DIM))
        secret = _image(-1, photo, visibility=PRIVATE, owner_hash="owner-a")
        collection.add([secret])  # labelled into its cell on arrival
        copy = near_copies(rng, photo[None], 0.99)[0]
        assert collection.nearest(copy, viewer=owned_by("owner-a")) == (secret.id, pytest.approx(0.99, abs=1e-4))
        assert collection.nearest(copy, viewer=PUBLIC_VIEWER)[0] != secret.id  # a stranger's private photo
        original = near_copies(rng, vectors[9:10], 0.99)[0]
        assert collection.nearest(original)[0] == _image(9, vectors[9]).id
    finally:
        collection.close()
