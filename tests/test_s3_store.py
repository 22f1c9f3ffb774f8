"""The S3 image store against a real SeaweedFS, checked over plain HTTP the way a browser sees it."""

from __future__ import annotations

import io
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from clip_search.engine import SearchEngine
from clip_search.errors import NotFoundError, StorageError
from clip_search.images import sha256_hex
from clip_search.ingest import ingest_folder
from clip_search.store import content_key
from clip_search.store_s3 import S3ImageStore
from tests.conftest import shared_data
from tests.s3server import SeaweedS3, make_s3_settings

pytestmark = pytest.mark.s3


def _photos(n: int) -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:n]


@pytest.fixture
def bucket(s3_env: SeaweedS3) -> str:
    return s3_env.new_bucket()


@pytest.fixture
def store(s3_env: SeaweedS3, bucket: str, tmp_path: Path, tiny_model_dir: Path) -> S3ImageStore:
    return S3ImageStore.from_settings(make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket))


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_put_get_exists_delete_and_idempotent_reput(store: S3ImageStore, s3_env: SeaweedS3, bucket: str):
    data = _photos(1)[0].read_bytes()
    key = content_key(sha256_hex(data), "jpg")
    assert key.startswith(f"images/{key[7:9]}/") and key.endswith(".jpg")
    assert not store.exists(key)
    store.put(key, data, "image/jpeg")
    assert store.exists(key) and store.get(key) == data
    head = s3_env.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] == len(data)

    store.put(key, data, "image/jpeg")  # a re-put of the same content key: nothing rewritten
    assert s3_env.client().head_object(Bucket=bucket, Key=key)["LastModified"] == head["LastModified"]

    store.delete(key)
    store.delete(key)  # deleting what is not there is fine
    assert not store.exists(key)
    with pytest.raises(NotFoundError):
        store.get(key)
    with pytest.raises(StorageError):
        store.put("../etc/passwd", b"x", "text/plain")


def test_listing_pages_through_every_key_under_the_prefix(s3_env: SeaweedS3, bucket: str, store: S3ImageStore):
    store.prefix = "deploy-a"
    store.page_size = 2  # force several listing requests
    keys = sorted(content_key(sha256_hex(bytes([i])), "jpg") for i in range(7))
    for key in keys:
        store.put(key, b"x", "image/jpeg")
    store.put_object("index/other.json", b"{}", "application/json")
    s3_env.client().put_object(Bucket=bucket, Key="images/aa/outside-the-prefix.jpg", Body=b"x")
    assert sorted(store.list_keys()) == keys
    assert list(store.list_keys("index/")) == ["index/other.json"]
    raw = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"deploy-a/{keys[0]}" in raw


def test_presigned_url_serves_exact_bytes_and_content_type_over_plain_http(s3_env, bucket, tmp_path, tiny_model_dir):
    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket)
    with SearchEngine(settings) as engine:
        photo = _photos(1)[0].read_bytes()
        jpg = engine.add_image(photo, source="a.jpg")
        png = engine.add_image(_png_bytes(), source="claims-to-be.jpg")  # named .jpg, decoded as PNG
        assert jpg.status == png.status == "added"
        assert png.key.endswith(".png")
        for result, data, ctype in ((jpg, photo, "image/jpeg"), (png, _png_bytes(), "image/png")):
            url = engine.store.url(result.key)
            query = parse_qs(urlsplit(url).query)
            assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["3600"]
            response = requests.get(url, timeout=10)  # no AWS headers: what a browser <img> does
            assert response.status_code == 200
            assert response.content == data
            assert response.headers["Content-Type"] == ctype
        hit = engine.search_image(photo, k=1)[0]
        assert hit.key == jpg.key and requests.get(hit.url, timeout=10).content == photo


def test_expired_tampered_and_anonymous_requests_are_refused(s3_env: SeaweedS3, bucket: str, store: S3ImageStore):
    data = _photos(1)[0].read_bytes()
    key = content_key(sha256_hex(data), "jpg")
    other = content_key(sha256_hex(b"other"), "jpg")
    store.put(key, data, "image/jpeg")
    store.put(other, b"other", "image/jpeg")

    assert requests.get(f"{s3_env.endpoint}/{bucket}/{key}", timeout=10).status_code == 403  # anonymous

    url = store.presigned_url(key)
    assert requests.get(url, timeout=10).content == data
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert requests.get(url.replace(signature, flipped), timeout=10).status_code == 403
    assert requests.get(url.replace(key, other), timeout=10).status_code == 403  # signature is for one key
    assert requests.put(url, data=b"overwrite", timeout=10).status_code == 403  # GET only
    assert store.get(key) == data

    store.presign_expiry_s = 1
    store._urls.clear()
    short = store.presigned_url(key)
    assert requests.get(short, timeout=10).status_code == 200
    time.sleep(2)
    expired = requests.get(short, timeout=10)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    fresh = store.presigned_url(key)  # the cache never hands out a URL past its expiry
    assert fresh != short and requests.get(fresh, timeout=10).status_code == 200


def test_presigned_urls_are_cached_for_half_their_life(store: S3ImageStore):
    now = [1000.0]
    store._clock = lambda: now[0]
    store.presign_expiry_s = 600
    first = store.presigned_url("images/ab/x.jpg")
    signed = store.presign_count
    for _ in range(50):  # one result page, searched again and again
        assert store.presigned_url("images/ab/x.jpg") == first
    assert store.presign_count == signed
    now[0] += 299
    assert store.presigned_url("images/ab/x.jpg") == first
    now[0] += 2  # past half its life: signed again, so every URL handed out has >= 300 s left
    store.presigned_url("images/ab/x.jpg")
    assert store.presign_count == signed + 1
    store.presigned_url("images/cd/y.jpg")  # each key its own URL
    assert store.presign_count == signed + 2


def test_web_copies_are_resized_jpegs_in_the_bucket(s3_env: SeaweedS3, bucket, tmp_path, tiny_model_dir):
    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket)
    settings.storage.web_copy_max_side = 96
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in _photos(3):
        (folder / src.name).write_bytes(src.read_bytes())
    with SearchEngine(settings) as engine:
        report = ingest_folder(engine, folder, progress=False)
        assert report.added == 3
        for record in engine.collection.records():
            response = requests.get(engine.store.url(record.key), timeout=10)
            assert response.headers["Content-Type"] == "image/jpeg"
            img = Image.open(io.BytesIO(response.content))
            assert img.format == "JPEG" and max(img.size) == 96
            assert (record.width, record.height) == Image.open(record.source).size  # the original's size
