"""Hostile and odd uploads: each accepted or refused as specified, nothing of a refused file left behind."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_search.engine import SearchEngine
from clip_search.errors import InvalidImageError
from tests.conftest import ROOT, make_settings, shared_data

GPS_IFD = 0x8825


@pytest.fixture
def uploads(tmp_path: Path, tiny_model_dir: Path):
    # Random tiny-model vectors of different photos are close: only true copies count as near duplicates here.
    settings = make_settings(tmp_path / "data", tiny_model_dir, upload={"near_duplicate_threshold": 0.9999})
    engine = SearchEngine(settings)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[5]).convert("RGB")


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", b"not really")
    return buf.getvalue()


def _made_in_child(tmp_path: Path, name: str, code: str) -> bytes:
    """Big test images are drawn in a child process, so no test process ever holds their pixels."""
    out = tmp_path / name
    if not out.exists():
        subprocess.run([sys.executable, "-c", f"from PIL import Image; import sys; {code}", str(out)], check=True)
    return out.read_bytes()


def _png_bomb(tmp_path: Path) -> bytes:
    # 30,000 x 30,000 one-bit pixels (900 megapixels) compress to about 100 KB.
    return _made_in_child(tmp_path, "bomb.png", "Image.new('1', (30_000, 30_000)).save(sys.argv[1], optimize=True)")


def _huge_jpeg(tmp_path: Path) -> bytes:
    # 100 megapixels of flat grey: a small file that would need 300 MB as RGB pixels.
    return _made_in_child(tmp_path, "100mp.jpg", "Image.new('L', (10_000, 10_000), 128).save(sys.argv[1], quality=50)")


def _gps_rotated(photo: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    exif[0x010F] = "SecretCam"
    exif[0xA431] = "SERIAL-123456"  # BodySerialNumber
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 24.0), "E", (2.0, 21.0, 7.0)
    return _save(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())


def _state(engine: SearchEngine) -> tuple[int, int, list[str], list[str]]:
    files = sorted(str(p.relative_to(engine.settings.data_dir)) for p in engine.settings.local_image_dir.rglob("*"))
    return len(list(engine.collection.records())), engine.count(), sorted(engine.store.list_keys()), files


REJECTED = {
    "truncated.jpg": ("truncated", lambda p, t: _save(p, "JPEG")[:20_000]),
    "bomb.png": ("too large", lambda p, t: _png_bomb(t)),
    "100mp.jpg": ("too large: 10000x10000", lambda p, t: _huge_jpeg(t)),
    "drawing.jpg": (
        "not a supported image format",
        lambda p, t: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
    ),
    "document.jpg": ("not a supported image format", lambda p, t: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
    "page.jpg": ("not a supported image format", lambda p, t: b"<!doctype html><html><body>hi</body></html>"),
    "empty.jpg": ("empty file", lambda p, t: b""),
    "archive.jpg": ("not a supported image format", lambda p, t: _zip()),
    "animation.gif": (
        "not a supported image format \\(accepted: JPEG, PNG, WEBP, HEIF\\)",
        lambda p, t: _save(p, "GIF", save_all=True, append_images=[p.rotate(90)]),
    ),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_hostile_files_are_refused_and_leave_nothing(uploads: SearchEngine, photo, tmp_path: Path, name: str):
    message, make = REJECTED[name]
    seed = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    assert uploads.upload(seed.read_bytes(), filename=seed.name).status == "added"
    data = make(photo, tmp_path)
    before = _state(uploads)

    result = uploads.upload(data, filename=name)

    assert result.status == "rejected"
    assert result.message.startswith(f"{name}: ")
    assert re.search(message, result.message), result.message
    assert _state(uploads) == before  # store, catalog, index and data folder untouched


_MEASURE = """
import json, resource, sys
from pathlib import Path
from clip_search.engine import SearchEngine
from tests.conftest import make_settings
engine = SearchEngine(make_settings(Path(sys.argv[1]), Path(sys.argv[2])))
engine.encoder.warm_up()
out = {}
for name in sys.argv[3:]:
    data = Path(name).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = engine.upload(data, filename=Path(name).name)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out[Path(name).name] = {"status": result.status, "peak_growth_mb": (after - before) / 1024, "peak_mb": after / 1024}
print(json.dumps(out))
"""


def test_memory_stays_bounded_while_giants_are_refused(tmp_path: Path, tiny_model_dir: Path):
    _png_bomb(tmp_path), _huge_jpeg(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            str(tmp_path / "data"),
            str(tiny_model_dir),
            str(tmp_path / "bomb.png"),
            str(tmp_path / "100mp.jpg"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print("peak RSS while refusing giants:", figures)
    for name, fig in figures.items():
        assert fig["status"] == "rejected", name
        # Refused from the header: decoding would need ~300 MB (100 MP RGB) or ~900 MB (the bomb as L).
        assert fig["peak_growth_mb"] < 50, (name, fig)


_MEASURE_QUERY = """
import json, resource, sys
from pathlib import Path
from clip_search.engine import SearchEngine
from clip_search.errors import InvalidImageError
from tests.conftest import make_settings
engine = SearchEngine(make_settings(Path(sys.argv[1]), Path(sys.argv[2])))
engine.encoder.warm_up()
data = Path(sys.argv[3]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    engine.search_image(data, 3)
    message = None
except InvalidImageError as exc:
    message = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"message": message, "peak_growth_mb": (after - before) / 1024}))
"""


def test_a_query_image_is_held_to_the_upload_limits_before_decoding(tmp_path: Path, tiny_model_dir: Path):
    """/search_image takes a visitor's file: 88 megapixels of grey PNG (~110 KB) would cost GBs to decode."""
    _made_in_child(tmp_path, "grey.png", "Image.new('L', (9400, 9400), 128).save(sys.argv[1], optimize=True)")
    args = [str(tmp_path / "data"), str(tiny_model_dir), str(tmp_path / "grey.png")]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE_QUERY, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    figure = json.loads(out.stdout.strip().splitlines()[-1])
    assert figure["message"] == "image too large: 9400x9400 is 88.4 megapixels (limit 40.0)", figure
    assert figure["peak_growth_mb"] < 50, figure  # decoding would need ~88 MB as L, ~265 MB as RGB


def test_a_query_image_is_held_to_the_upload_formats_and_size(uploads: SearchEngine, photo, tmp_path: Path):
    gif = _save(photo, "GIF")
    with pytest.raises(InvalidImageError, match=r"not a supported image format \(accepted: JPEG, PNG, WEBP, HEIF\)"):
        uploads.search_image(gif)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\x00" * uploads.settings.upload.max_bytes)
    for query in (big, big.read_bytes()):
        with pytest.raises(InvalidImageError, match=r"file too large \(20.0 MiB; the limit is 20 MiB\)"):
            uploads.search_image(query)
    assert uploads.search_image(_save(photo, "PNG")) == []  # an allowed format is searched (empty collection)


def test_size_limit_is_checked_before_decoding(uploads: SearchEngine):
    limit = uploads.settings.upload.max_bytes
    result = uploads.upload(b"\xff\xd8" + b"\x00" * limit, filename="big.jpg")
    assert result.status == "rejected" and "file too large" in result.message


ACCEPTED = {
    "cmyk.jpg": lambda p: _save(p.convert("CMYK"), "JPEG", quality=92),
    "grey16.png": lambda p: _save(Image.fromarray(np.asarray(p.convert("L"), dtype=np.uint16) * 257), "PNG"),
    "phone.heic": lambda p: _save(p, "HEIF", quality=90),
    "animated.webp": lambda p: _save(p, "WEBP", save_all=True, append_images=[Image.new("RGB", p.size, "red")]),
    "rgba.png": lambda p: _save(p.convert("RGBA"), "PNG"),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_odd_but_real_photos_are_accepted_as_clean_copies(uploads: SearchEngine, photo, name: str):
    result = uploads.upload(ACCEPTED[name](photo), filename=name, caption="  a   photo \n")
    assert result.status == "added", result.message
    stored = Image.open(io.BytesIO(uploads.store.get(result.key)))
    assert stored.mode == "RGB" and stored.size == photo.size
    assert not stored.getexif() and "exif" not in stored.info and "icc_profile" not in stored.info
    assert getattr(stored, "n_frames", 1) == 1
    record = uploads.get(result.id)
    assert record.caption == "a photo"
    assert record.source == "upload" and record.metadata == {"filename": name}
    # It is what an image search for the same picture finds first.
    assert uploads.search_image(photo, k=1)[0].id == result.id or name in ("cmyk.jpg", "grey16.png")


def test_gps_and_camera_data_are_dropped_and_orientation_applied(uploads: SearchEngine, photo):
    data = _gps_rotated(photo)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)  # the upload really carries GPS
    result = uploads.upload(data, filename="holiday.jpg")
    assert result.status == "added"
    stored_bytes = uploads.store.get(result.key)
    for secret in (b"SecretCam", b"SERIAL-123456", b"Exif"):
        assert secret not in stored_bytes
    stored = Image.open(io.BytesIO(stored_bytes))
    assert stored.size == photo.size  # upright: the rotation was applied to the pixels
    diff = np.abs(np.asarray(stored, dtype=int) - np.asarray(photo, dtype=int)).mean()
    assert diff < 6
    record = uploads.get(result.id)
    assert (record.width, record.height) == photo.size
    assert stored_bytes != data and record.sha256 != record.source_sha256


def test_keep_metadata_stores_the_original(tmp_path: Path, tiny_model_dir: Path, photo):
    settings = make_settings(tmp_path / "d", tiny_model_dir, upload={"keep_metadata": True})
    with SearchEngine(settings) as engine:
        data = _gps_rotated(photo)
        result = engine.upload(data, filename="mine.jpg")
        assert engine.store.get(result.key) == data


def test_exact_duplicate_names_the_existing_image(uploads: SearchEngine, photo):
    first = uploads.upload(_save(photo, "JPEG"), filename="a.jpg")
    again = uploads.upload(_save(photo, "JPEG"), filename="b.jpg")
    assert again.status == "duplicate" and again.duplicate_of == first.id
    assert f"already in the collection as image {first.id}" in again.message
    # Same pixels, different file bytes (metadata added): still the same image once normalised.
    exif = Image.Exif()
    exif[0x010F] = "OtherCam"
    third = uploads.upload(_save(photo, "JPEG", exif=exif.tobytes()), filename="c.jpg")
    assert third.status in ("duplicate", "rejected") and third.duplicate_of == first.id
    assert uploads.count() == 1


def test_near_duplicates_rejected_or_added_by_config(tmp_path: Path, tiny_model_dir: Path, photo):
    original = _save(photo, "JPEG", quality=95)
    recompressed = _save(photo, "JPEG", quality=60)
    for action, status in (("reject", "rejected"), ("add", "added")):
        settings = make_settings(
            tmp_path / action,
            tiny_model_dir,
            upload={"near_duplicate_threshold": 0.99, "near_duplicate_action": action},
        )
        with SearchEngine(settings) as engine:
            first = engine.upload(original, filename="a.jpg")
            second = engine.upload(recompressed, filename="b.jpg")
            assert second.status == status, second.message
            assert f"near duplicate of image {first.id}" in second.message
            assert second.duplicate_of == first.id
            assert engine.count() == (1 if action == "reject" else 2)


def test_too_many_files_in_one_request(uploads: SearchEngine, photo):
    uploads.settings.upload.max_files = 2
    files = [(f"{i}.jpg", _save(photo.rotate(i * 90), "JPEG")) for i in range(3)]
    results = uploads.upload_many(files)
    assert [r.status for r in results][:2] == ["added", "added"]
    assert results[2].status == "rejected" and "too many files" in results[2].message


def test_temp_files_are_not_left_behind(uploads: SearchEngine, photo, tmp_path: Path):
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    uploads.upload(b"garbage", filename="x.jpg")
    uploads.upload(_save(photo, "JPEG"), filename="y.jpg")
    leftovers = {n for n in set(os.listdir(tempfile.gettempdir())) - before if not n.startswith("pytest")}
    assert not leftovers
    assert not list(uploads.settings.data_dir.rglob(".*.tmp"))


def test_root_is_importable():
    assert (ROOT / "clip_search" / "engine.py").exists()
