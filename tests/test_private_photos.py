"""Private photos: found only by searches carrying their owner's key, never in anyone else's results, counts,
"more like this" or links; with the tiny model on the real pipeline (engine and CLI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clip_search.engine import SearchEngine
from clip_search.errors import NotFoundError
from clip_search.ingest import ingest_folder
from clip_search.store import content_key
from tests.conftest import ROOT, make_settings, shared_data

KEY = "a long private passphrase"


@pytest.fixture
def collection(tmp_path: Path, tiny_model_dir: Path):
    """Ten public photos (ingested) and two private ones of one owner."""
    settings = make_settings(tmp_path / "data", tiny_model_dir, upload={"near_duplicate_threshold": 0.9999})
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[60:72]
    folder = tmp_path / "public"
    folder.mkdir()
    for photo in photos[:10]:
        shutil.copy(photo, folder / photo.name)
    engine = SearchEngine(settings)
    ingest_folder(engine, folder, progress=False)
    private = [engine.upload(p.read_bytes(), filename=p.name, owner_key=KEY, caption="secret") for p in photos[10:]]
    assert [r.visibility for r in private] == ["private", "private"]
    yield engine, photos, [r.id for r in private]
    engine.close()


def _queries(engine: SearchEngine, photo: Path, public_id: int, key: str | None) -> dict[str, set[int]]:
    """Every kind of query, as a visitor with ``key`` (or none) runs it: the ids each one returns."""
    q = engine.query(key=key)
    pages = [q.plus("a photo").limit(4).page(n) for n in (1, 2, 3)]
    kinds = {
        "text": q.plus("a photo").limit(20),
        "image": q.plus(image=photo.read_bytes()).limit(20),
        "compound": q.plus("a photo").minus("a dog").plus(image=photo.read_bytes(), weight=0.5).limit(20),
        "feedback": q.plus("a photo").like(public_id).limit(20),
        "filter": q.plus("a photo").where(source="upload", caption="secret").limit(20),
        "newest": q.plus("a photo").sort_by("newest").limit(20),
        "browse": q.sort_by("oldest").limit(20),
        "more like this": q.plus(id=public_id).limit(20),
    }
    found = {name: {h.id for h in engine.search(query).hits} for name, query in kinds.items()}
    found["pages"] = {h.id for page in pages for h in engine.search(page).hits}
    return found


def test_private_photos_are_found_only_with_their_key(collection):
    engine, photos, private = collection
    public_id = engine.search_image(photos[0].read_bytes(), k=1)[0].id
    for name, ids in _queries(engine, photos[10], public_id, None).items():
        assert not ids & set(private), name
    for key in ("another long passphrase", f"{KEY} "[:-2]):  # a stranger's key, a near miss
        assert not any(ids & set(private) for ids in _queries(engine, photos[10], public_id, key).values())
    with_key = _queries(engine, photos[10], public_id, KEY)
    for name in ("text", "image", "compound", "feedback", "filter", "newest", "browse", "pages", "more like this"):
        assert set(private) <= with_key[name], name
    assert engine.search_image(photos[10].read_bytes(), k=1, key=KEY)[0].id == private[0]  # its own best match


def test_counts_lookups_and_more_like_this_never_show_them(collection):
    engine, _, private = collection
    owner = engine.viewer(KEY)
    assert (engine.count(), engine.count(owner), engine.stats()["private"]) == (10, 12, 2)
    assert engine.stats()["images"] == 10
    for image_id in private:
        with pytest.raises(NotFoundError, match=f"no image with id {image_id}"):
            engine.get(image_id)
        with pytest.raises(NotFoundError, match=f"no image with id {image_id}"):
            engine.search_similar(image_id)  # someone else's private photo as a query term: "not found"
        assert engine.get(image_id, owner).visibility == "private"
        assert engine.search_similar(image_id, key=KEY)
    assert engine.get_many(private) == {}
    assert set(engine.get_many(private, owner)) == set(private)
    marked = engine.search(engine.query("a photo").like(*private).limit(5))  # marks on unseen photos count for nothing
    plain = engine.search(engine.query("a photo").limit(5))
    assert [(h.id, h.score) for h in marked.hits] == [(h.id, h.score) for h in plain.hits]


def test_a_private_photo_has_an_unguessable_key_and_never_blocks_a_public_copy(collection):
    engine, photos, private = collection
    record = engine.get(private[0], engine.viewer(KEY))
    assert record.key.startswith("images/private/") and record.key != content_key(record.sha256, "jpg")
    assert record.sha256 not in record.key  # its URL says nothing of its content
    hit = engine.search_image(photos[10].read_bytes(), k=1, key=KEY)[0]
    assert hit.url.endswith(record.key.removeprefix("images/")) and hit.visibility == "private"
    # Its owner uploading it again is told it is already among their private photos.
    mine = engine.upload(photos[10].read_bytes(), filename="again.jpg", owner_key=KEY)
    assert mine.status == "duplicate" and mine.id == private[0] and "your private photos" in mine.message
    # A second owner keeps their own private copy, under another id and key: nothing tells them of the first.
    other = engine.upload(photos[10].read_bytes(), filename="theirs.jpg", owner_key="someone else's passphrase")
    assert other.status == "added" and other.id not in private and other.key != record.key
    # A stranger uploading the same photo publicly adds a public copy, told nothing either.
    again = engine.upload(photos[10].read_bytes(), filename="mine.jpg")
    assert again.status == "added" and again.id not in {other.id, *private} and "private" not in again.message
    assert engine.count() == 11 and engine.count(engine.viewer(KEY)) == 13


def test_a_short_passphrase_is_refused_and_private_photos_can_be_switched_off(collection):
    engine, photos, _ = collection
    short = engine.upload(photos[11].read_bytes(), filename="x.jpg", owner_key="short")
    assert short.status == "rejected" and "at least 10 characters" in short.message
    engine.settings.privacy.allow_private = False
    off = engine.upload(photos[11].read_bytes(), filename="x.jpg", owner_key=KEY)
    assert off.status == "rejected" and "switched off" in off.message


def test_the_cli_finds_private_photos_only_with_the_key(collection, cli_env):
    engine, photos, private = collection
    cli_env["CLIP_SEARCH_DATA_DIR"] = str(engine.settings.data_dir)
    engine.close()

    def search(*extra: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-m", "clip_search", "search", "--image", str(photos[10]), "-k", "20", "--json", *extra],
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=ROOT,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return [hit["id"] for hit in json.loads(done.stdout)]

    assert not set(search()) & set(private)
    assert search("--key", KEY)[0] == private[0] and set(private) <= set(search("--key", KEY))
    info = subprocess.run(
        [sys.executable, "-m", "clip_search", "info"], capture_output=True, text=True, env=cli_env, cwd=ROOT
    )
    assert json.loads(info.stdout)["images"] == 10 and json.loads(info.stdout)["private"] == 2
