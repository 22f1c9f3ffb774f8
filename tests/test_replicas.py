"""Several processes, one collection: replicas uploading at once, a CLI ingest beside the app, deletes seen live."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lance
import pytest

from clip_search.engine import SearchEngine
from tests.conftest import ROOT, make_settings, shared_data
from tests.replica_process import Replica
from tests.s3server import s3_environment

REFRESH_S = 1.0


def _photos(start: int, n: int) -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[start : start + n]


def _two_replicas_upload_at_once(env_a: dict[str, str], env_b: dict[str, str]) -> None:
    photos = {"a": _photos(0, 20), "b": _photos(20, 20)}
    replicas = {"a": Replica(env_a, REFRESH_S), "b": Replica(env_b, REFRESH_S)}
    try:
        for name, replica in replicas.items():  # both upload at the same time
            replica.send(upload=[str(p) for p in photos[name]])
        ids = {}
        for name, replica in replicas.items():
            answer = replica.read()
            assert answer["status"] == ["added"] * 20, answer
            ids.update(zip(photos[name], answer["ids"], strict=True))
        for replica in replicas.values():  # each sees all 40 without a restart, within refresh_s + 1 s
            assert replica.ask(wait_count=40, timeout=REFRESH_S + 1) == {"count": 40, "stats": 40}
            for path, image_id in ids.items():
                hit = replica.ask(find=str(path))
                assert hit["id"] == image_id and hit["score"] == pytest.approx(1.0, abs=1e-4)
        victim = photos["a"][3]
        assert replicas["b"].ask(delete=ids[victim]) == {"deleted": ids[victim]}  # a photo uploaded through A
        assert replicas["a"].ask(wait_count=39, timeout=REFRESH_S + 1)["count"] == 39
        assert replicas["a"].ask(find=str(victim))["id"] != ids[victim]
    finally:
        for replica in replicas.values():
            replica.close()


def test_two_replicas_on_one_local_directory(cli_env):
    _two_replicas_upload_at_once(cli_env, cli_env)


@pytest.mark.s3
def test_two_replicas_on_one_bucket(s3_server, cli_env, tmp_path):
    bucket = s3_server.new_bucket()
    env_a = s3_environment(s3_server, bucket, **dict(cli_env, CLIP_SEARCH_DATA_DIR=str(tmp_path / "disk-a")))
    env_b = s3_environment(s3_server, bucket, **dict(cli_env, CLIP_SEARCH_DATA_DIR=str(tmp_path / "disk-b")))
    _two_replicas_upload_at_once(env_a, env_b)


def test_cli_ingest_beside_the_app_is_seen_without_restart(cli_env, tiny_model_dir, tmp_path):
    settings = make_settings(Path(cli_env["CLIP_SEARCH_DATA_DIR"]), tiny_model_dir, collection={"refresh_s": 0.5})
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in _photos(50, 10):
        shutil.copy(src, folder / src.name)
    with SearchEngine(settings) as app:
        assert app.count() == 0
        done = subprocess.run(
            [sys.executable, "-m", "clip_search", "ingest", str(folder), "-q"],
            env=cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 5
        while app.count() < 10 and time.monotonic() < deadline:  # the background refresh, no search needed
            time.sleep(0.05)
        assert app.count() == 10 and app.stats()["images"] == 10
        for src in _photos(50, 10):
            hit = app.search_image(src.read_bytes(), k=1)[0]
            assert Path(hit.source).name == src.name and hit.score == pytest.approx(1.0, abs=1e-4)


def test_storage_optimize_while_the_app_reads(cli_env, tiny_model_dir, tmp_path):
    """One commit per upload leaves many small fragments; compacting them beside a running app loses nothing."""
    settings = make_settings(Path(cli_env["CLIP_SEARCH_DATA_DIR"]), tiny_model_dir, collection={"refresh_s": 0})
    photos = _photos(60, 12)
    with SearchEngine(settings) as app:
        ids = {p: app.add_image(p.read_bytes(), source=str(p)).id for p in photos}
        table = app.settings.data_dir / "collection.lance"
        before = len(lance.dataset(str(table)).get_fragments())
        assert before == 12
        done = subprocess.run(
            [sys.executable, "-m", "clip_search", "storage", "optimize", "--keep-versions-s", "0"],
            env=cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["fragments_after"] == 1
        assert len(lance.dataset(str(table)).get_fragments()) == 1
        for path, image_id in ids.items():  # the app follows the compaction: same images, same ids
            hit = app.search_image(path.read_bytes(), k=1)[0]
            assert hit.id == image_id and hit.source == str(path)
        assert app.count() == 12
        app.delete(ids[photos[0]])
        assert app.count() == 11
    with SearchEngine(settings) as reopened:
        assert reopened.count() == 11
