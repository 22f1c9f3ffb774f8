"""``ingest SOURCE --ray``: the Ray Data pipeline through the CLI, on a real Ray runtime (num_cpus=2).

One Ray runtime is started in this test process for the module; the CLI joins it with ``--ray-address`` (the way a
cluster is used), except one test that lets the CLI start its own local runtime. Real photos, the tiny model, a
SeaweedFS bucket; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pytest

from clip_search.engine import SearchEngine
from clip_search.images import sha256_hex
from clip_search.ingest import ingest_folder
from clip_search.ray_stages import is_known
from tests.conftest import ROOT, make_settings, shared_data
from tests.s3server import make_s3_settings, s3_environment

ray = pytest.importorskip("ray", reason="Ray is installed by requirements-cluster.txt (scripts/test.sh)")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray runtime of this module (2 CPUs, as on the CI machine); the CLI joins it as a cluster."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _photos(n: int, start: int = 0) -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[start : start + n]


def _folder(tmp_path: Path, name: str, photos: list[Path]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for src in photos:
        (folder / src.name).symlink_to(src)
    return folder


def _env(cli_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: no RAY_ADDRESS of the user's; RAY_AUTH_MODE as ray.init set it here (token: the
    CLI then reads the cluster's token from ~/.ray/auth_token, as any process joining it must)."""
    env = {k: v for k, v in cli_env.items() if k != "RAY_ADDRESS"}
    if os.environ.get("RAY_AUTH_MODE"):
        env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    return env


def _ingest(env: dict[str, str], source: str, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "clip_search", "ingest", source, "--ray", "--quiet", *flags]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=480)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows(data_dir: Path) -> dict[str, np.ndarray]:
    """key -> vector of every committed row (as another process reads the table)."""
    table = lance.dataset(str(data_dir / "collection.lance")).to_table(columns=["key", "vector"])
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    keys = table.column("key").to_pylist()
    assert len(set(keys)) == len(keys), "duplicate rows"
    return dict(zip(keys, vectors, strict=True))


def _stored(data_dir: Path) -> set[str]:
    root = data_dir / "images"
    return {"images/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_ray_ingest_equals_plain_ingest_and_a_running_engine_sees_it(ray_address, cli_env, tiny_model_dir, tmp_path):
    photos = _photos(24)
    folder = _folder(tmp_path, "photos", photos)
    data_dir = Path(cli_env["CLIP_SEARCH_DATA_DIR"])
    settings = make_settings(data_dir, tiny_model_dir)
    with SearchEngine(settings) as running:  # opened before the job, kept open across it (an app)
        assert running.count() == 0
        report = json.loads(_ingest(_env(cli_env), str(folder), "--ray-address", ray_address, "--json").stdout)
        assert (report["added"], report["failed"], report["collection_size"]) == (24, [], 24)
        running.collection.refresh()
        assert running.count() == 24
        for path in photos:
            hit = running.search_image(path.read_bytes(), k=1)[0]
            assert hit.source == str(folder / path.name) and hit.score == pytest.approx(1.0, abs=1e-4)
            assert Path(hit.url).read_bytes() == path.read_bytes()

    again = json.loads(_ingest(_env(cli_env), str(folder), "--ray-address", ray_address, "--json").stdout)
    assert (again["added"], again["already_indexed"]) == (0, 24)

    plain_dir = tmp_path / "plain"
    with SearchEngine(make_settings(plain_dir, tiny_model_dir)) as engine:
        assert ingest_folder(engine, folder, progress=False).added == 24
    ray_rows, plain_rows = _rows(data_dir), _rows(plain_dir)
    assert set(ray_rows) == set(plain_rows) == _stored(data_dir)
    for key, vector in plain_rows.items():
        np.testing.assert_allclose(ray_rows[key], vector, atol=1e-5)


def test_killed_driver_then_rerun_gives_exactly_the_full_set(ray_address, cli_env, tmp_path):
    folder = _folder(tmp_path, "photos", _photos(80))
    data_dir = Path(cli_env["CLIP_SEARCH_DATA_DIR"])
    config = tmp_path / "small-batches.yaml"
    config.write_text("model:\n  batch_size: 2\n")
    env = dict(_env(cli_env), CLIP_SEARCH_CONFIG=str(config))
    cmd = [sys.executable, "-m", "clip_search", "ingest", str(folder), "--ray", "--ray-address", ray_address, "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed: dict[str, np.ndarray] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not committed:
        try:
            committed = _rows(data_dir) if (data_dir / "collection.lance").exists() else {}
        except (OSError, ValueError):
            committed = {}
        time.sleep(0.05)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _rows(data_dir)
    assert 0 < len(partial) < 80
    assert set(partial) <= _stored(data_dir), "a committed row without its image"

    report = json.loads(subprocess.run([*cmd, "--json"], env=env, cwd=ROOT, capture_output=True, text=True).stdout)
    assert report["already_indexed"] >= len(partial) and report["added"] == 80 - report["already_indexed"]
    rows = _rows(data_dir)
    assert len(rows) == 80
    assert set(rows) == _stored(data_dir)  # every row has its image, and no image is left without a row
    for key, vector in partial.items():
        np.testing.assert_array_equal(rows[key], vector)  # nothing committed before the kill was rewritten
    table = lance.dataset(str(data_dir / "collection.lance"))  # the job's many commits compacted, lookups indexed
    assert len(table.get_fragments()) == 1
    indexed = {name for index in table.describe_indices() for name in index.field_names}
    assert {"id", "sha256", "source_sha256", "key"} <= indexed


@pytest.mark.s3
def test_source_and_collection_in_a_bucket(ray_address, s3_server, cli_env, tiny_model_dir, s3_env, tmp_path):
    bucket = s3_server.new_bucket()
    photos = _photos(12, start=40)
    client = s3_server.client()
    for path in photos:
        client.put_object(Bucket=bucket, Key=f"incoming/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=bucket, Key="incoming/.hidden.jpg", Body=b"not looked at")
    client.put_object(Bucket=bucket, Key="incoming/broken.jpg", Body=photos[0].read_bytes()[:2000])
    env = s3_environment(s3_server, bucket, **_env(cli_env))
    done = _ingest(env, f"s3://{bucket}/incoming", "--ray-address", ray_address, "--json")
    report = json.loads(done.stdout)
    assert report["added"] == 12
    assert [Path(f["file"]).name for f in report["failed"]] == ["broken.jpg"]
    assert "truncated" in report["failed"][0]["reason"]

    settings = make_s3_settings(tmp_path / "app", tiny_model_dir, s3_env, bucket)
    with SearchEngine(settings) as engine:
        assert engine.count() == 12
        for path in photos:
            hit = engine.search_image(path.read_bytes(), k=1)[0]
            assert hit.source == f"s3://{bucket}/incoming/{path.name}" and hit.score == pytest.approx(1.0, abs=1e-4)
            assert engine.store.get(hit.key) == path.read_bytes()
    assert not (Path(cli_env["CLIP_SEARCH_DATA_DIR"]) / "images").exists()  # nothing on the driver's disk


def test_bad_files_are_listed_on_a_local_runtime(cli_env, tmp_path):
    """No --ray-address: the CLI starts (and stops) a local Ray runtime of its own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = _photos(4, start=100)
    for src in sources:
        shutil.copy(src, folder / src.name)
    shutil.copy(sources[0], folder / "same-bytes-again.jpg")
    whole = sources[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    (folder / "empty.jpg").write_bytes(b"")
    done = _ingest(_env(cli_env), str(folder), "--ray-cpus", "2")
    assert done.stdout.startswith("added 4, already indexed 0, duplicates 1, failed 3"), done.stdout
    assert "images/s" in done.stdout
    lines = done.stdout.splitlines()
    reasons = {line.split(":")[0].strip(): line for line in lines if line.startswith("  ")}
    assert set(reasons) == {str(folder / n) for n in ("truncated.jpg", "notes.jpg", "empty.jpg")}
    assert "truncated" in reasons[str(folder / "truncated.jpg")]
    assert "not a supported image format" in reasons[str(folder / "notes.jpg")]
    assert "empty" in reasons[str(folder / "empty.jpg")]
    assert "collection: 4 images" in done.stdout


def test_without_ray_one_line_says_what_to_install(cli_env, tmp_path):
    shim = tmp_path / "no-ray" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('blocked by the test', name='ray')\n")
    env = dict(_env(cli_env), PYTHONPATH=f"{shim.parent}{os.pathsep}{ROOT}")
    folder = _folder(tmp_path, "photos", _photos(1))
    done = _ingest(env, str(folder), check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --ray needs Ray Data, which is not installed (ray): "
        'pip install -r requirements-cluster.txt (or: pip install "ray[data]==2.60.0")'
    ]


def test_known_digests_lookup():
    hashes = sorted(sha256_hex(bytes([i])) for i in range(50))
    digests = np.array(sorted(bytes.fromhex(h) for h in hashes[::2]), dtype="S32")
    assert all(is_known(digests, h) == (i % 2 == 0) for i, h in enumerate(hashes))
    assert not is_known(np.array([], dtype="S32"), hashes[0])


def test_a_workers_own_error_reaches_the_user_as_one_message(ray_address):
    from clip_search.ray_ingest import _user_error

    def _fails_in_a_worker() -> None:  # defined here: shipped to the worker by value
        from clip_search.errors import StorageError

        raise StorageError("cannot write to the bucket: check S3_ENDPOINT_URL")

    with pytest.raises(Exception) as failure:
        ray.get(ray.remote(_fails_in_a_worker).remote())
    found = _user_error(failure.value)
    assert found is not None and str(found) == "cannot write to the bucket: check S3_ENDPOINT_URL"
    assert _user_error(RuntimeError("something else")) is None
