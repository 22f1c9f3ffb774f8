"""The whole collection lives in the bucket: wiped disks, start-up errors, a stopped server, two writers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from clip_search.bucket_sync import reindex_bucket
from clip_search.collection import image_id
from clip_search.engine import SearchEngine
from clip_search.errors import StorageError
from clip_search.images import sha256_hex
from clip_search.ingest import ingest_folder
from clip_search.store import content_key
from tests.conftest import ROOT, shared_data
from tests.s3server import SeaweedS3, make_s3_settings, s3_environment

pytestmark = pytest.mark.s3

QUERIES = ("a dog", "a red car", "people eating pizza")


def _photos(start: int, n: int) -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[start : start + n]


def _folder(tmp_path: Path, name: str, photos: list[Path]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for src in photos:
        shutil.copy(src, folder / src.name)
    return folder


def _results(engine: SearchEngine) -> list[list[tuple[str, float]]]:
    return [[(h.key, round(h.score, 5)) for h in engine.search_text(q, k=8)] for q in QUERIES]


def _bucket_keys(server: SeaweedS3, bucket: str) -> dict[str, str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _run_cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clip_search", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wipe_local_state(data_dir: Path) -> None:
    """What a Space restart does to its disk: everything under the data dir gone."""
    shutil.rmtree(data_dir, ignore_errors=True)


def test_cli_ingest_into_the_bucket_then_wiped_disk_gives_the_same_search_results(s3_server, cli_env, tmp_path):
    bucket = s3_server.new_bucket()
    env = s3_environment(s3_server, bucket, **cli_env)
    data_dir = Path(cli_env["CLIP_SEARCH_DATA_DIR"])
    photos = _photos(0, 16)
    done = _run_cli(env, "ingest", str(_folder(tmp_path, "photos", photos)), "-q")
    assert done.returncode == 0, done.stderr

    keys = _bucket_keys(s3_server, bucket)
    assert {content_key(sha256_hex(p.read_bytes()), "jpg") for p in photos} <= set(keys)
    assert any(k.startswith("collection.lance/") for k in keys)  # the table lives in the bucket
    assert not (data_dir / "images").exists()  # no image kept on the local disk

    def search() -> list:
        out = _run_cli(env, "search", "a dog on a beach", "-k", "10", "--json")
        assert out.returncode == 0, out.stderr
        return [(h["id"], h["key"], h["score"], h["caption"], h["source"]) for h in json.loads(out.stdout)]

    before = search()
    assert len(before) == 10
    _wipe_local_state(data_dir)
    assert search() == before  # read from the bucket's table: same ids, same scores, same sources


def test_wiped_disk_keeps_ids_and_results(s3_env, tmp_path, tiny_model_dir):
    bucket = s3_env.new_bucket()
    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket)
    with SearchEngine(settings) as engine:
        ingest_folder(engine, _folder(tmp_path, "photos", _photos(20, 12)), progress=False)
        before = _results(engine)
        ids = {r.key: r.id for r in engine.collection.records()}
    _wipe_local_state(settings.data_dir)
    with SearchEngine(settings) as engine:
        assert _results(engine) == before
        assert {r.key: r.id for r in engine.collection.records()} == ids
        assert {Path(r.source).name for r in engine.collection.records()} == {p.name for p in _photos(20, 12)}


def test_a_deleted_image_does_not_come_back_on_restore(s3_env, tmp_path, tiny_model_dir):
    bucket = s3_env.new_bucket()
    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket)
    replica_a = make_s3_settings(tmp_path / "replica-a", tiny_model_dir, s3_env, bucket)
    replica_b = make_s3_settings(tmp_path / "replica-b", tiny_model_dir, s3_env, bucket)
    with SearchEngine(settings) as engine:
        ingest_folder(engine, _folder(tmp_path, "photos", _photos(40, 4)), progress=False)
        victim = list(engine.collection.records())[1]
    for replica in (replica_a, replica_b):  # two other instances that hold the photo
        with SearchEngine(replica) as other:
            assert other.count() == 4
    with SearchEngine(settings) as engine:
        engine.delete(victim.id)
    with SearchEngine(replica_a) as other:  # opened after the deletion elsewhere
        assert other.count() == 3 and other.collection.find_by_sha256(victim.sha256) is None
    _wipe_local_state(settings.data_dir)
    with SearchEngine(settings) as engine:
        assert engine.count() == 3
        assert engine.collection.find_by_sha256(victim.sha256) is None
        assert not engine.store.exists(victim.key)
        again = engine.add_image(Path(victim.source).read_bytes(), source=victim.source)  # uploaded again
        assert again.status == "added"
    with SearchEngine(replica_b) as other:  # saw the deletion and the newer upload: keeps the photo
        assert other.count() == 4 and other.collection.find_by_sha256(victim.sha256) is not None
    _wipe_local_state(settings.data_dir)
    with SearchEngine(settings) as engine:
        assert engine.count() == 4


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong-secret", r"wrong credentials .*SignatureDoesNotMatch.*check AWS_SECRET_ACCESS_KEY"),
        ("unknown-key", r"wrong credentials .*InvalidAccessKeyId.*check AWS_ACCESS_KEY_ID"),
        ("missing-bucket", r"bucket '[\w-]+' does not exist .*python -m clip_search storage init"),
        ("read-only-key", r"access denied to writing index/write-check .*s3:PutObject"),
        ("nothing-listening", r"cannot reach the endpoint http://127\.0\.0\.1:\d+ .*Check S3_ENDPOINT_URL"),
    ],
)
def test_start_up_errors_say_what_to_fix_and_lose_nothing(s3_env, tmp_path, tiny_model_dir, monkeypatch, case, message):
    bucket = s3_env.new_bucket()
    settings = make_s3_settings(tmp_path / "data", tiny_model_dir, s3_env, bucket)
    with SearchEngine(settings) as engine:
        ingest_folder(engine, _folder(tmp_path, "photos", _photos(50, 3)), progress=False)
        before = _results(engine)
    in_bucket = _bucket_keys(s3_env, bucket)
    local = {p.name: p.read_bytes() for p in settings.data_dir.iterdir() if p.is_file()}

    if case == "wrong-secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "unknown-key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    elif case == "missing-bucket":
        settings.storage.s3.bucket = "no-such-bucket-here"
    elif case == "read-only-key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.reader_access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.reader_secret_key)
    else:
        from tests.s3server import pick_ports

        settings.storage.s3.endpoint_url = f"http://127.0.0.1:{pick_ports()['s3']}"
    with pytest.raises(StorageError, match=message):
        SearchEngine(settings)

    assert _bucket_keys(s3_env, bucket) == in_bucket
    assert {p.name: p.read_bytes() for p in settings.data_dir.iterdir() if p.is_file()} == local
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key)  # fixed: starts with everything there
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    with SearchEngine(make_s3_settings(settings.data_dir, tiny_model_dir, s3_env, bucket)) as engine:
        assert _results(engine) == before


def test_cli_prints_the_start_up_error_and_exits_2(s3_server, cli_env):
    env = s3_environment(s3_server, "no-such-bucket-here", **cli_env)
    done = _run_cli(env, "info", timeout=120)
    assert done.returncode == 2
    assert "error: S3: the bucket 'no-such-bucket-here' does not exist" in done.stderr
    assert "python -m clip_search storage init" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stopped_server_loses_nothing_and_leaves_no_half_indexed_image(private_s3_server, tmp_path, tiny_model_dir):
    server = private_s3_server
    env = s3_environment(server, None)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        bucket = server.new_bucket()
        settings = make_s3_settings(tmp_path / "data", tiny_model_dir, server, bucket)
        late = _photos(70, 1)[0].read_bytes()
        engine = SearchEngine(settings)
        try:
            ingest_folder(engine, _folder(tmp_path, "photos", _photos(60, 6)), progress=False)
            before = _results(engine)
            server.stop()
            with pytest.raises(StorageError, match="cannot reach the endpoint"):
                engine.add_image(late, source="late.jpg")
            assert engine.count() == 6
            assert image_id(sha256_hex(late)) not in engine.collection  # nothing half-indexed
            assert _results(engine) == before  # searching still works: URLs are signed locally
        finally:
            engine.close()
        with pytest.raises(StorageError, match=r"cannot reach the endpoint .*that the server is running"):
            SearchEngine(settings)

        server.start()  # same data directory, same ports
        settings.storage.s3.endpoint_url = server.endpoint
        _wipe_local_state(settings.data_dir)
        with SearchEngine(settings) as engine:
            assert engine.count() == 6 and _results(engine) == before
            for record in engine.collection.records():
                assert requests.get(engine.store.url(record.key), timeout=10).status_code == 200
            assert engine.add_image(late, source="late.jpg").status == "added"


def test_two_processes_uploading_to_one_bucket_lose_nothing(s3_env, cli_env, tmp_path, tiny_model_dir):
    bucket = s3_env.new_bucket()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["model"]["batch_size"] = 2  # many small commits, interleaved between the two writers
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    shared = _photos(80, 1)
    sets = {"a": _photos(81, 9) + shared, "b": _photos(90, 9) + shared}
    procs = {}
    for name, photos in sets.items():
        env = s3_environment(
            s3_env,
            bucket,
            **dict(cli_env, CLIP_SEARCH_CONFIG=str(config_file), CLIP_SEARCH_DATA_DIR=str(tmp_path / f"data-{name}")),
        )
        folder = _folder(tmp_path, f"photos-{name}", photos)
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "clip_search", "ingest", str(folder), "-q", "--json"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            env,
        )
    added = {}
    for name, (proc, _) in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        added[name] = json.loads(out)["added"]
        assert added[name] >= 9, f"writer {name} did not add all its photos"
    # The shared photo is added by whichever writer commits it first (by both, in the rare case that both commit
    # it in the same instant: the collection then holds one image under its one content-derived id).
    assert sum(added.values()) in (19, 20)

    every = {p.name: p for photos in sets.values() for p in photos}
    assert len(every) == 19
    for name in ("a", "b", "fresh"):  # both writers start again, and a third instance on an empty disk
        settings = make_s3_settings(tmp_path / f"data-{name}", tiny_model_dir, s3_env, bucket)
        with SearchEngine(settings) as engine:
            assert engine.count() == 19, name
            for path in every.values():
                data = path.read_bytes()
                hit = engine.search_image(data, k=1)[0]
                assert hit.key == content_key(sha256_hex(data), "jpg"), f"{name}: {path.name} is missing"
                assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_storage_init_check_and_sync(s3_server, cli_env, tmp_path, tiny_model_dir, monkeypatch):
    env = s3_environment(s3_server, "made-by-init", **cli_env)
    done = _run_cli(env, "storage", "init", "--cors-origin", "https://me-photos.hf.space", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout
    client = s3_server.client()
    rules = client.get_bucket_cors(Bucket="made-by-init")["CORSRules"]
    assert rules[0]["AllowedOrigins"] == ["https://me-photos.hf.space"] and set(rules[0]["AllowedMethods"]) == {
        "GET",
        "HEAD",
    }

    # A bucket filled by another tool: two content-keyed photos and one under a name of its own.
    photos = _photos(100, 3)
    for path in photos[:2]:
        data = path.read_bytes()
        client.put_object(Bucket="made-by-init", Key=content_key(sha256_hex(data), "jpg"), Body=data)
    client.put_object(Bucket="made-by-init", Key="images/holiday/IMG_0001.jpg", Body=photos[2].read_bytes())
    done = _run_cli(env, "storage", "sync")
    assert done.returncode == 0, done.stderr
    assert "3 indexed now" in done.stdout and "collection: 3 images" in done.stdout

    check = _run_cli(env, "storage", "check", timeout=60)
    assert check.returncode == 0, check.stderr
    facts = json.loads(check.stdout)
    assert facts["table"]["rows"] == 3 and facts["images"] == 4

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, env[key])
    settings = make_s3_settings(Path(cli_env["CLIP_SEARCH_DATA_DIR"]), tiny_model_dir, s3_server, "made-by-init")
    with SearchEngine(settings) as engine:
        again = reindex_bucket(engine)
        assert again.indexed == 0 and engine.count() == 3
        hit = engine.search_image(photos[2].read_bytes(), k=1)[0]
        assert hit.key == content_key(sha256_hex(photos[2].read_bytes()), "jpg")
        response = requests.get(hit.url, headers={"Origin": "https://me-photos.hf.space"}, timeout=10)
        assert response.content == photos[2].read_bytes()
        assert response.headers["Access-Control-Allow-Origin"] == "https://me-photos.hf.space"
