"""The hidden rows in the collection: a viewer's results are exactly the ranking of the rows it may see, few hidden
rows or many; a second collection on the same table (as a replica) follows new hidden rows, approvals and
deletions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from clip_search.collection import Collection, CollectionTable, NewImage
from clip_search.collection.visibility import OPERATOR, PUBLIC_VIEWER, owned_by

DIM = 16


def _images(n: int, *, seed: int, visibility=None, owner=None) -> list[NewImage]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        NewImage(
            key=f"images/{seed}-{i}.jpg",
            sha256=hashlib.sha256(f"{seed}-{i}".encode()).hexdigest(),
            width=1,
            height=1,
            embedding=vector,
            visibility=visibility,
            owner_hash=owner,
        )
        for i, vector in enumerate(vectors)
    ]


def _exact(images: list[NewImage], query: np.ndarray, k: int) -> list[int]:
    scores = np.stack([img.embedding for img in images]) @ query
    order = sorted(range(len(images)), key=lambda i: (-scores[i], images[i].id))
    return [images[i].id for i in order[:k]]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("hidden", [7, 5000])  # a few, and more than the public rows
def test_results_are_the_ranking_of_what_the_viewer_may_see(tmp_path: Path, hidden: int, kind: str):
    public = _images(3000, seed=1)
    mine = _images(5, seed=2, visibility="private", owner="mine")
    others = _images(hidden, seed=3, visibility="private", owner="theirs")
    held = _images(5, seed=4, visibility="held")
    writer = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", background=False)
    for batch in (public, mine, others, held):
        writer.add(batch)
    writer.close()
    # Opened again, as a replica or a restart would: an IVF index probing every list (so exact) if asked for.
    collection = Collection(
        CollectionTable(str(tmp_path)), model="m", model_id="m", index_kind=kind, nlist=8, nprobe=8, background=False
    )
    assert collection._index.kind == kind
    queries = np.stack([img.embedding for img in (*mine[:2], *others[:2], *held[:2], *public[:2])])
    for viewer, visible in (
        (PUBLIC_VIEWER, public),
        (owned_by("mine"), public + mine),
        (OPERATOR, public + mine + others + held),
    ):
        assert collection.count(viewer) == len(visible)
        found = collection.search(queries, 10, viewer=viewer)
        for query, hits in zip(queries, found, strict=True):
            assert [i for i, _ in hits] == _exact(visible, query, 10)
        ids, _ = collection.matching(None, viewer=viewer)
        assert set(ids.tolist()) == {img.id for img in visible}
    assert collection.hidden_counts() == {"private": 5 + hidden, "held": 5}
    collection.close()


def test_a_second_collection_follows_hidden_rows_approvals_and_deletions(tmp_path: Path):
    table_dir = str(tmp_path)
    writer = Collection(CollectionTable(table_dir), model="m", model_id="m", background=False)
    writer.add(_images(20, seed=5))
    reader = Collection(CollectionTable(table_dir), model="m", model_id="m", background=False, refresh_s=0)
    held = _images(3, seed=6, visibility="held")
    private = _images(2, seed=7, visibility="private", owner="someone")
    writer.add(held)
    writer.add(private)
    reader.refresh()
    assert (reader.count(), reader.count(owned_by("someone")), reader.count(OPERATOR)) == (20, 22, 25)
    query = held[0].embedding[None]
    assert held[0].id not in [i for i, _ in reader.search(query, 5)[0]]
    assert reader.get(held[0].id) is None and reader.get(held[0].id, OPERATOR) is not None

    assert writer.approve([held[0].id, private[0].id]) == [held[0].id]  # only held rows are approved
    reader.refresh()
    assert reader.count() == 21 and reader.search(query, 1)[0][0][0] == held[0].id
    assert reader.get(held[0].id).visibility == "public"  # the row read again, not the cached one

    writer.remove_many([held[1].id, private[0].id])
    reader.refresh()
    assert (reader.count(), reader.count(owned_by("someone")), reader.hidden_counts()) == (
        21,
        22,
        {"private": 1, "held": 1},
    )
    writer.close()
    reader.close()
