"""The local image folder: keys map to files under it and nowhere else, and result links cost no disk access."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_search.errors import StorageError
from clip_search.images import sha256_hex
from clip_search.store import LocalImageStore, content_key

BAD_KEYS = [
    "images/../outside.jpg",
    "images/ab/../../outside.jpg",
    "images/ab/./x.jpg",
    "images//x.jpg",
    "images/",
    "images/ab\\..\\..\\x.jpg",
    "images/ab/x\0.jpg",
    "other/ab/x.jpg",
    "/etc/passwd",
]


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images")


def test_a_stored_image_is_the_file_its_url_names(store: LocalImageStore):
    data = b"\xff\xd8 a jpeg, as far as the store cares"
    key = content_key(sha256_hex(data), "jpg")
    store.put(key, data, "image/jpeg")
    url = store.url(key)
    assert url == str(store.path(key)) and Path(url).read_bytes() == data
    assert store.relative(key) == f"{key.removeprefix('images/')}" and Path(url).parent.parent == store.root


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_would_leave_the_folder_are_refused(store: LocalImageStore, key: str):
    for use in (store.url, store.path, store.exists, store.get, store.delete):
        with pytest.raises(StorageError, match="invalid image key"):
            use(key)
    with pytest.raises(StorageError, match="invalid image key"):
        store.put(key, b"x", "image/jpeg")
    assert not (store.root.parent / "outside.jpg").exists()


def test_a_link_inside_the_folder_that_leads_out_is_refused(store: LocalImageStore, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    (store.root / "ab").mkdir(parents=True)
    (store.root / "ab" / "link.jpg").symlink_to(secret)
    with pytest.raises(StorageError, match="invalid image key"):
        store.get("images/ab/link.jpg")
