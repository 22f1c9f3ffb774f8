"""Ingest -> search round trips on real photos, re-runs, crashes and bad files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
from PIL import Image

from clip_search.engine import SearchEngine
from clip_search.errors import StorageError
from clip_search.ingest import ingest_folder, ingest_paths, load_captions
from tests.conftest import ROOT, shared_data


def _catalog_rows(data_dir: Path) -> list[tuple[int, str, str]]:
    """The collection table's committed rows, in commit order (read as another process would)."""
    table = lance.dataset(str(data_dir / "collection.lance")).to_table(columns=["id", "key", "sha256"])
    return list(zip(*(table.column(c).to_pylist() for c in ("id", "key", "sha256")), strict=True))


def test_every_ingested_photo_finds_itself_first(engine: SearchEngine):
    folder = shared_data("coco-mini") / "val2017"
    report = ingest_folder(engine, folder, progress=False)
    files = sorted(folder.glob("*.jpg"))
    assert report.added == len(files) and not report.failed
    assert engine.count() == len(files)

    for path in files:
        hits = engine.search_image(path.read_bytes(), k=3)
        assert hits[0].source == str(path), f"{path.name} is not its own top hit"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert Path(hits[0].url).read_bytes() == path.read_bytes()  # the original is what is served

    again = ingest_folder(engine, folder, progress=False)
    assert again.added == 0 and again.already_indexed == len(files)
    assert engine.count() == len(files)


def test_text_search_returns_ranked_hits_with_probabilities(engine: SearchEngine):
    folder = shared_data("coco-mini") / "val2017"
    captions = shared_data("coco-mini") / "annotations" / "captions_val2017.json"
    ingest_folder(engine, folder, captions_file=captions, progress=False)
    hits = engine.search_text("a dog on a beach", k=5)
    assert len(hits) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = engine.encoder.probability(np.array(scores))
    np.testing.assert_allclose([h.probability for h in hits], expected, rtol=1e-4)
    expected_captions = load_captions(captions)
    records = list(engine.collection.records())
    captioned = [r for r in records if r.caption]
    assert len(captioned) == sum(Path(r.source).name in expected_captions for r in records) > 0
    for record in captioned:
        assert record.metadata["captions"] == expected_captions[Path(record.source).name]
        assert record.caption == record.metadata["captions"][0]


def test_captions_from_csv_and_coco(tmp_path: Path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("image,caption\na.jpg,first\na.jpg,second\nsub/b.jpg,third\n")
    assert load_captions(csv_file) == {"a.jpg": ["first", "second"], "b.jpg": ["third"]}
    coco = load_captions(shared_data("coco-mini") / "annotations" / "captions_val2017.json")
    assert len(coco) == 79 and all(len(v) >= 5 for v in coco.values())  # 79 val2017 photos have captions


def test_bad_files_are_reported_and_the_rest_indexed(engine: SearchEngine, tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:4]
    for src in sources:
        shutil.copy(src, folder / src.name)
    whole = sources[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("ignored: not an image extension")

    report = ingest_folder(engine, folder, progress=False)
    assert report.added == 4
    reasons = dict((Path(f).name, r) for f, r in report.failed)
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.jpg"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a supported image format" in reasons["notes.jpg"]
    assert "empty" in reasons["empty.jpg"]
    summary = report.summary()
    for name in reasons:
        assert name in summary


def test_summary_of_a_run_with_nothing_new_says_so():
    from clip_search.ingest import IngestReport

    summary = IngestReport(already_indexed=14, seconds=0.043).summary()
    assert summary.startswith("nothing new: added 0, already indexed 14") and "in 43 ms" in summary
    assert "0.0 s" not in summary and "images/s" not in summary
    busy = IngestReport(added=10, seconds=2.0).summary()
    assert "in 2.0 s (5.0 images/s)" in busy and not busy.startswith("nothing new")


def test_same_bytes_under_two_names_are_stored_once(engine: SearchEngine, tmp_path: Path):
    src = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    folder = tmp_path / "dupes"
    folder.mkdir()
    shutil.copy(src, folder / "a.jpg")
    shutil.copy(src, folder / "b.jpg")
    report = ingest_folder(engine, folder, progress=False)
    assert (report.added, report.duplicates) == (1, 1)
    assert len(list(engine.store.list_keys())) == 1


def test_non_web_formats_are_stored_as_jpeg(engine: SearchEngine, tmp_path: Path):
    src = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    folder = tmp_path / "tiff"
    folder.mkdir()
    Image.open(src).save(folder / "scan.tif", format="TIFF")
    ingest_folder(engine, folder, progress=False)
    (key,) = list(engine.store.list_keys())
    assert key.endswith(".jpg")
    assert Image.open(io.BytesIO(engine.store.get(key))).format == "JPEG"


def test_an_ingest_clears_half_written_images_of_a_writer_killed_while_it_ran(engine: SearchEngine, tmp_path: Path):
    root = engine.settings.local_image_dir
    orphan = root / "ab" / ".abcd.jpg.x1y2z3.tmp"  # appears after the engine's open swept the folder
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\xff\xd8 half a jpeg")
    then = time.time() - 5  # its writer died a few seconds ago: no one holds it
    os.utime(orphan, (then, then))
    src = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(src, folder / "a.jpg")
    assert ingest_folder(engine, folder, progress=False).added == 1
    assert not orphan.exists()
    assert [p.name for p in root.rglob("*") if p.is_file()] == [Path(next(engine.store.list_keys())).name]


def test_killed_ingest_resumes_to_exactly_the_full_set(cli_env: dict[str, str], tmp_path: Path):
    folder = shared_data("coco-mini") / "val2017"
    total = len(list(folder.glob("*.jpg")))
    data_dir = Path(cli_env["CLIP_SEARCH_DATA_DIR"])
    config = tmp_path / "small-batches.yaml"
    config.write_text("model:\n  batch_size: 2\ningest:\n  decode_workers: 1\n")
    env = dict(cli_env, CLIP_SEARCH_CONFIG=str(config))
    cmd = [sys.executable, "-m", "clip_search", "ingest", str(folder), "--quiet"]

    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (data_dir / "collection.lance").exists():
            try:
                committed = len(_catalog_rows(data_dir))
            except (OSError, ValueError):
                committed = 0
            if committed >= 20:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _catalog_rows(data_dir)
    assert 20 <= len(partial) < total

    done = subprocess.run([*cmd, "--json"], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["already_indexed"] >= len(partial)
    rows = _catalog_rows(data_dir)
    assert len(rows) == total
    assert len({sha for _, _, sha in rows}) == total
    assert rows[: len(partial)] == partial  # nothing committed before the kill was lost or rewritten
    images = data_dir / "images"
    assert all((images / key.removeprefix("images/")).is_file() for _, key, _ in rows)

    out = subprocess.run(
        [sys.executable, "-m", "clip_search", "search", "--image", str(sorted(folder.glob("*.jpg"))[-1]), "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    hits = json.loads(out.stdout)
    assert hits[0]["source"] == str(sorted(folder.glob("*.jpg"))[-1])


def test_ctrl_c_keeps_whole_batches_and_a_rerun_finishes(cli_env: dict[str, str], tmp_path: Path):
    """SIGINT mid-run: the batch being committed in the background lands whole, the summary says 'interrupted',
    and the same command then adds exactly the rest."""
    folder = shared_data("coco-mini") / "val2017"
    total = len(list(folder.glob("*.jpg")))
    data_dir = Path(cli_env["CLIP_SEARCH_DATA_DIR"])
    config = tmp_path / "small-batches.yaml"
    config.write_text("model:\n  batch_size: 2\n")
    env = dict(cli_env, CLIP_SEARCH_CONFIG=str(config))
    cmd = [sys.executable, "-m", "clip_search", "ingest", str(folder), "--quiet", "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(_catalog_rows(data_dir)) >= 2:  # the first batch landed: interrupt early, with ~150 photos to go
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be interrupted: {proc.stderr.read()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    report = json.loads(out)
    assert report["added"] < total, "the ingest finished before the signal reached it"
    assert report["interrupted"] is True, err
    partial = _catalog_rows(data_dir)
    assert report["added"] == len(partial) < total
    images = data_dir / "images"
    assert all((images / key.removeprefix("images/")).is_file() for _, key, _ in partial)

    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["added"] == total - len(partial)
    assert len({sha for _, _, sha in _catalog_rows(data_dir)}) == total


def test_a_store_failure_stops_the_ingest_with_earlier_batches_committed(settings, tmp_path: Path):
    """The store fails for one photo of the third batch (its folder cannot be made): the error reaches the caller,
    the two batches before it are in the collection, nothing of the failing batch is."""
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:10]
    prefixes = [hashlib.sha256(p.read_bytes()).hexdigest()[:2] for p in photos]
    failing = next(i for i in range(4, 10) if prefixes[i] not in prefixes[:i])
    first_bad_batch = failing // 2 * 2
    settings.model.batch_size = 2
    engine = SearchEngine(settings)
    try:
        blocked = settings.data_dir / settings.storage.local_dir / prefixes[failing]
        blocked.parent.mkdir(parents=True, exist_ok=True)
        blocked.write_bytes(b"a file where the store wants a folder")
        with pytest.raises(StorageError, match="cannot write"):
            ingest_paths(engine, photos, progress=False)
        committed = {sha for _, _, sha in _catalog_rows(settings.data_dir)}
        assert committed == {hashlib.sha256(p.read_bytes()).hexdigest() for p in photos[:first_bad_batch]}
    finally:
        engine.close()
