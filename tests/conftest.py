"""Shared fixtures: a tiny SigLIP built on the spot, settings pointing at a temporary data dir, shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clip_search.config import Settings, load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CLIP_SEARCH_SHARED_DATA", ROOT.parent / "shared" / "data"))

pytest_plugins = ["tests.s3server"]  # the SeaweedFS S3 server fixtures (s3_server, s3_env...)


def shared_data(name: str) -> Path:
    """A data set from ../shared/data; skipped where absent (a user's clone), a failure under CI=true."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data set {path} is missing")
        pytest.skip(f"shared data set {path} not present (see ../shared/README.md)")
    return path


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's cache (``$XDG_CACHE_HOME``: ONNX text towers, the query path chosen) of this test session alone:
    shared by its tests and the processes they start, as a machine's is, and never the developer's own."""
    folder = tmp_path_factory.mktemp("user-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP, written by the same command users run: python -m clip_search.testing tiny-model."""
    out = tmp_path_factory.mktemp("models") / "tiny-siglip"
    done = subprocess.run(
        [sys.executable, "-m", "clip_search.testing", "tiny-model", str(out)], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        pytest.fail(f"python -m clip_search.testing tiny-model failed:\n{done.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clip_search.testing import write_tiny_siglip

    return write_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip", seed=1)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clip_search.testing import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of siglip-base-patch16-224's shapes: what quantisation or ONNX does to a real-size tower."""
    from clip_search.testing import write_tiny_siglip

    return write_tiny_siglip(tmp_path_factory.mktemp("models") / "base-random", base_architecture=True)


def make_settings(data_dir: Path, model_dir: Path, **sections: dict) -> Settings:
    """Settings as a user's config.yaml would give them, in a private data dir, with the tiny model."""
    settings = load_config(ROOT / "config.yaml", env={})
    settings.data_dir = data_dir
    settings.model.id = str(model_dir)
    settings.collection.refresh_s = 0  # every search looks for other processes' commits: deterministic tests
    # The tiny random model's match probabilities mean nothing (it "matches" most photos with some prompt): the
    # upload check is off here, and on in the tests of moderation (with vectors they choose, or a hook).
    settings.moderation.enabled = False
    for section, values in sections.items():
        target = getattr(settings, section)
        for key, value in values.items():
            setattr(target, key, value)
    return settings


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_model_dir)


@pytest.fixture
def engine(settings: Settings):
    from clip_search.engine import SearchEngine

    eng = SearchEngine(settings)
    yield eng
    eng.close()


@pytest.fixture
def cli_env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Environment for running the CLI in a subprocess against a private data dir and the tiny model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CLIP_SEARCH_"))}
    env.update(
        CLIP_SEARCH_MODEL=str(tiny_model_dir),
        CLIP_SEARCH_DATA_DIR=str(tmp_path / "data"),
        CLIP_SEARCH_CONFIG=str(ROOT / "config.yaml"),
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="module")
def client(app):
    """A gradio_client of the test module's own ``app`` fixture (a running app, tests/app_process.py)."""
    from gradio_client import Client

    client = Client(app.url, verbose=False, download_files=False)
    yield client
    client.close()


@pytest.fixture
def threads(request):
    """Run the test with this many search threads (indirect parameter), then put the setting back."""
    from clip_search.collection.scan import search_threads, set_search_threads

    before = search_threads()
    set_search_threads(request.param)
    yield request.param
    set_search_threads(before)


@pytest.fixture
def batch_scan(request):
    """Scan batches this way ("fp32" straight, "bf16" through the bfloat16 copy; indirect parameter), then put
    the setting back."""
    from clip_search.collection.bf16_scan import set_batch_scan

    set_batch_scan(request.param)
    yield request.param
    set_batch_scan("auto")
