"""Run ``python app.py`` in a subprocess on a free 127.0.0.1 port, as a visitor's browser or client would reach it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import requests

from tests.conftest import ROOT

# Distinct photos with the tiny random model are often closer than the default near-duplicate threshold, and the
# tests run many searches in a row from one address.
TEST_CONFIG = """\
upload:
  near_duplicate_threshold: 0.9999
rate_limit:
  searches_per_minute: 1000
  uploads_per_minute: 1000
model:
  warm_up: true
moderation:
  enabled: false  # the tiny random model's probabilities mean nothing; tests that need the check turn it on
"""


@dataclass
class RunningApp:
    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def upload_dir(self) -> Path:
        """Where Gradio keeps uploaded files (GRADIO_TEMP_DIR of the app process)."""
        return self.data_dir.parent / "gradio-uploads"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(model_dir: Path, data_dir: Path, config: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "CLIP_SEARCH_", "GRADIO_"))}
    env.update(
        CLIP_SEARCH_MODEL=str(model_dir),
        CLIP_SEARCH_DATA_DIR=str(data_dir),
        CLIP_SEARCH_CONFIG=str(config),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(data_dir.parent / "gradio-uploads"),  # the app's own, so tests can look inside
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
    )
    return env


@contextmanager
def start_app(
    workdir: Path,
    model_dir: Path,
    *,
    photos: Sequence[Path] = (),
    extra_config: str = "",
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[RunningApp]:
    """Ingest ``photos`` (through the CLI, as a user would), start the app, wait until it answers, stop it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    config = workdir / "config.yaml"
    config.write_text(TEST_CONFIG + extra_config)
    port = free_port()
    env = app_env(model_dir, data_dir, config, port)
    env.update(extra_env or {})
    if photos:
        folder = workdir / "photos"
        folder.mkdir(exist_ok=True)
        for photo in photos:
            target = folder / photo.name
            if not target.exists():
                target.symlink_to(photo.resolve())
        subprocess.run(
            [sys.executable, "-m", "clip_search", "ingest", str(folder), "-q"],
            check=True,
            cwd=workdir,
            env=env,
            capture_output=True,
            timeout=timeout_s,
        )
    log_path = workdir / "app.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    app = RunningApp(f"http://127.0.0.1:{port}", data_dir, log_path, process)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{app.log()}")
            try:
                if requests.get(app.url + "/", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or still busy starting (a loaded CPU)
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {timeout_s} s:\n{app.log()}")
            time.sleep(0.3)
        yield app
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class PageEvent(NamedTuple):
    """One of the page's events as its config describes it: the function, what triggers it, how many inputs."""

    fn: int
    trigger: int
    inputs: int


def search_event(url: str) -> PageEvent:
    """The Search tab's search (Enter in the query box), read from the page's config."""
    config = requests.get(url + "/config", timeout=30).json()
    box = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "search-query")
    dep = next(d for d in config["dependencies"] if [box, "submit"] in [list(t) for t in d["targets"]])
    return PageEvent(dep["id"], box, len(dep["inputs"]))


def search_as_page(
    http: requests.Session, url: str, event: PageEvent, session: str, text: str, k: int = 12, caption: str = ""
) -> dict[str, Any]:
    """One search as the page sends it: join the queue (the Search tab's fields; null for the panel's state, as
    the page sends; ``caption``: the filter's word), read the session's stream until it closes; the event's
    ``process_completed`` message is returned (``output.data``: the panel's values)."""
    fields = [text, "", "", "", "all", caption, "any", "relevance", k]
    data = fields + [None] * (event.inputs - len(fields))
    body = {"data": data, "fn_index": event.fn, "session_hash": session, "trigger_id": event.trigger}
    joined = http.post(url + "/gradio_api/queue/join", json=body, timeout=60)
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    completed = None
    stream = http.get(url + "/gradio_api/queue/data", params={"session_hash": session}, stream=True, timeout=120)
    with stream:
        for line in stream.iter_lines():  # to the stream's end, as a browser does: the connection is then reused
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    completed = message
    if completed is None:
        raise RuntimeError("the stream ended before the search completed")
    return completed


def gallery_items(message: dict[str, Any], position: int = 1) -> list[Any]:
    """The gallery's items in a completed search's output, whether sent as a value or as an update with one."""
    value = message["output"]["data"][position]
    return value["value"] if isinstance(value, dict) else value
