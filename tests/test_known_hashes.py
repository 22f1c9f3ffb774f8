"""Exact-copy checks answer from the content hashes held in memory and never miss a copy: rows loaded at open,
committed here, or committed by another writer (clip_search.collection.hashes)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from clip_search.collection import Collection, CollectionTable, NewImage
from clip_search.collection.hashes import KnownHashes, prefixes


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_prefixes_and_membership():
    column = pa.array([sha("a"), None, "not-a-hash", sha("b").upper(), sha("c")])
    assert prefixes(column).tolist() == [int(sha("a")[:16], 16), int(sha("c")[:16], 16)]
    hashes = KnownHashes()
    assert hashes.may_contain(sha("zzz"))  # not loaded yet: the table has to say
    hashes.load(pa.table({"sha256": [sha("a"), sha("c")], "source_sha256": [None, sha("d")]}))
    assert hashes.may_contain(sha("a")) and hashes.may_contain(None, sha("d"))
    assert not hashes.may_contain(sha("b"), None)
    hashes.add([sha("b"), None])
    assert hashes.may_contain(sha("b")) and not hashes.may_contain(sha("e"))
    assert hashes.may_contain("ABC")  # not a hash it can read: ask the table


def _image(i: int, rng: np.random.Generator) -> NewImage:
    vector = rng.standard_normal(16).astype(np.float32)
    return NewImage(
        key=f"images/{i}.jpg",
        sha256=sha(f"stored {i}"),
        source_sha256=sha(f"original {i}"),
        width=1,
        height=1,
        embedding=vector / np.linalg.norm(vector),
    )


def test_copies_are_found_from_the_open_from_here_and_from_another_process(tmp_path):
    rng = np.random.default_rng(0)
    first = [_image(i, rng) for i in range(50)]
    Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", background=False).add(first)
    here = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", refresh_s=0)
    there = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", background=False)
    try:
        here.wait_for_cells(timeout=60)
        assert here._hashes.ready
        assert here.find_by_sha256(first[7].source_sha256).id == first[7].id  # loaded at the open
        assert here.find_by_sha256(sha("never stored"), None) is None
        mine = _image(100, rng)
        here.add([mine])
        assert here.find_by_sha256(None, mine.source_sha256).id == mine.id  # committed here
        theirs = _image(200, rng)
        there.add([theirs])  # another writer: seen here at the next refresh (refresh_s 0: every call)
        here.refresh()
        assert here.find_by_sha256(theirs.sha256).id == theirs.id
        assert here.find_by_sha256(theirs.source_sha256).id == theirs.id
    finally:
        here.close()
        there.close()


def test_a_collection_made_here_from_nothing_finds_its_copies(tmp_path):
    rng = np.random.default_rng(1)
    collection = Collection(CollectionTable(str(tmp_path)), model="m", model_id="m", refresh_s=0)
    try:
        image = _image(1, rng)
        assert collection.find_by_sha256(image.sha256) is None
        collection.add([image])
        assert collection.find_by_sha256(image.source_sha256).id == image.id
    finally:
        collection.close()
