"""A newcomer's first start without the model: one short message with the ways out, never a traceback.

The hub is replaced by addresses on 127.0.0.1 (HF_ENDPOINT): a closed port for "no internet", a small server
that answers like the hub does for a repository that does not exist. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.app_process import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 120  # imports of torch + transformers on a busy 2-core machine; the failure itself is immediate
COMMANDS = {
    "app": [sys.executable, str(ROOT / "app.py")],
    "cli-search": [sys.executable, "-m", "clip_search", "search", "x"],
}


def _env(tmp_path: Path, model: str, hub: str) -> dict[str, str]:
    skip = ("S3_", "AWS_", "CLIP_SEARCH_", "GRADIO_", "HF_", "HUGGINGFACE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        CLIP_SEARCH_MODEL=model,
        CLIP_SEARCH_DATA_DIR=str(tmp_path / "data"),
        CLIP_SEARCH_CONFIG=str(ROOT / "config.yaml"),
        HF_HOME=str(tmp_path / "hf-home"),  # an empty model cache, as on a new machine
        HF_ENDPOINT=hub,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(free_port()),
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONPATH=str(ROOT),
    )
    return env


def _run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        COMMANDS[command], env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=None
    )


def _assert_short_message(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    err = done.stderr
    assert done.returncode != 0, f"exited 0:\n{err}"
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 10, f"{len(err.splitlines())} lines:\n{err}"
    assert "Retrying" not in err  # no retry loop against a hub that cannot be reached
    for way_out in ("a hub id", "a local directory", "python -m clip_search.testing tiny-model DIR"):
        assert way_out in err, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def closed_hub() -> str:
    """A hub address where nothing listens: what a machine without internet sees."""
    return f"http://127.0.0.1:{free_port()}"


class _NoSuchRepo(BaseHTTPRequestHandler):
    """Answers every request as the hub answers for a repository that does not exist (or is private)."""

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(401)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub_without_the_model() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_local_directory(command: str, tmp_path: Path, closed_hub: str):
    missing = tmp_path / "models" / "siglip-base"
    done = _run(command, _env(tmp_path, str(missing), closed_hub), tmp_path)
    _assert_short_message(done, str(missing), "there is no directory")
    assert not (tmp_path / "data").exists()  # nothing was created for a model that cannot be loaded


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hub_unreachable_and_model_not_cached(command: str, tmp_path: Path, closed_hub: str):
    done = _run(command, _env(tmp_path, "google/siglip-base-patch16-224", closed_hub), tmp_path)
    _assert_short_message(done, "google/siglip-base-patch16-224", "cannot be reached", "not in the local cache")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hub_has_no_such_model(command: str, tmp_path: Path, hub_without_the_model: str):
    done = _run(command, _env(tmp_path, "google/siglip-base-patch16-22", hub_without_the_model), tmp_path)
    _assert_short_message(done, "google/siglip-base-patch16-22", "no such model on the hub")


def _put_in_hub_cache(model_dir: Path, hf_home: Path, repo_id: str) -> None:
    """Lay a checkpoint out as huggingface_hub's cache does after a download (refs/main -> snapshots/COMMIT)."""
    commit = "0" * 40
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_unreachable_but_model_cached_still_works(tmp_path: Path, tiny_model_dir: Path, closed_hub: str):
    env = _env(tmp_path, "clip-search/tiny-siglip", closed_hub)
    _put_in_hub_cache(tiny_model_dir, Path(env["HF_HOME"]), "clip-search/tiny-siglip")
    done = _run("cli-search", env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the collection is empty" in done.stderr and "Traceback" not in done.stderr
