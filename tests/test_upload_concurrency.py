"""Many visitors at once, and a process killed mid-upload: every reported upload lands exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clip_search.engine import SearchEngine
from tests.conftest import ROOT, make_settings, shared_data


@pytest.fixture
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


def _settings(tmp_path: Path, tiny_model_dir: Path):
    return make_settings(tmp_path / "data", tiny_model_dir, upload={"near_duplicate_threshold": 0.9999})


def test_twenty_concurrent_uploads_with_searches(tmp_path: Path, tiny_model_dir: Path, photos: list[Path]):
    engine = SearchEngine(_settings(tmp_path, tiny_model_dir))
    engine.encoder.warm_up()
    files = photos[:20]
    stop = threading.Event()
    errors: list[BaseException] = []
    observed: list[tuple[int, int, int]] = []  # (count before, hits, count after) per search

    def search_loop(n: int) -> None:
        query = photos[40 + n].read_bytes()
        while not stop.is_set():
            try:
                before = engine.count()
                hits = engine.search_image(query, k=100)
                after = engine.count()
                observed.append((before, len(hits), after))
                records = engine.collection.get_many([h.id for h in hits])
                assert len(records) == len(hits)
            except BaseException as exc:  # collected and reported below
                errors.append(exc)
                return

    searchers = [threading.Thread(target=search_loop, args=(i,)) for i in range(3)]
    for t in searchers:
        t.start()
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda p: engine.upload(p.read_bytes(), filename=p.name), files))
    finally:
        stop.set()
        for t in searchers:
            t.join()
    assert not errors, errors
    assert [r.status for r in results] == ["added"] * 20, [r.message for r in results]
    assert len({r.id for r in results}) == 20
    assert engine.count() == len(list(engine.collection.records())) == 20
    assert observed, "the searches ran"
    # A search sees whole uploads only: every id it returns is a committed row, and never more than exist.
    assert all(before <= hits <= after for before, hits, after in observed)
    for path, result in zip(files, results, strict=True):
        assert engine.search_image(path.read_bytes(), k=1)[0].id == result.id
    engine.close()


def test_same_photo_from_many_visitors_at_once_lands_once(tmp_path: Path, tiny_model_dir: Path, photos: list[Path]):
    engine = SearchEngine(_settings(tmp_path, tiny_model_dir))
    data = photos[0].read_bytes()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: engine.upload(data, filename=f"copy{i}.jpg"), range(8)))
    statuses = sorted(r.status for r in results)
    assert statuses.count("added") == 1 and statuses.count("duplicate") == 7
    added = next(r for r in results if r.status == "added")
    assert all(r.duplicate_of == added.id for r in results if r.status == "duplicate")
    assert engine.count() == 1 and len(list(engine.store.list_keys())) == 1
    engine.close()


_UPLOADER = """
import sys
from pathlib import Path
from clip_search.engine import SearchEngine
from tests.conftest import make_settings
engine = SearchEngine(make_settings(Path(sys.argv[1]), Path(sys.argv[2]),
                      upload={"near_duplicate_threshold": 0.9999}))
engine.encoder.warm_up()
print("READY", flush=True)
for name in sys.argv[3:]:
    result = engine.upload(Path(name).read_bytes(), filename=Path(name).name)
    if result.status == "added":
        print("ADDED", result.id, Path(name).name, flush=True)
"""


def test_sigkill_at_any_point_of_an_upload_loses_nothing_reported(
    tmp_path: Path, tiny_model_dir: Path, photos: list[Path]
):
    data_dir = tmp_path / "data"
    reported: dict[int, str] = {}
    rng = random.Random(7)
    pending = photos[:45]
    for _round in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _UPLOADER, str(data_dir), str(tiny_model_dir), *map(str, pending)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout.readline().strip() == "READY"
        wanted = rng.randint(2, 6)
        for got, line in enumerate(proc.stdout, 1):
            _, image_id, name = line.split()
            reported[int(image_id)] = name
            if got >= wanted:
                break
        time.sleep(rng.uniform(0, 0.08))  # land somewhere inside the next upload
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        engine = SearchEngine(make_settings(data_dir, tiny_model_dir))
        try:
            records = {r.id: r for r in engine.collection.records()}
            assert set(reported) <= set(records), "an upload reported as added is missing"
            assert engine.count() == len(records), "index and catalog disagree"
            for record in records.values():
                assert engine.store.exists(record.key), f"catalog row {record.id} without its image"
            for image_id, name in reported.items():
                hit = engine.search_image((photos[0].parent / name).read_bytes(), k=1)[0]
                assert hit.id == image_id
            done = {r.metadata["filename"] for r in records.values()}
        finally:
            engine.close()
        pending = [p for p in pending if p.name not in done]
    assert len(reported) >= 8
