"""scripts/unsplash_lite.py against a stand-in for Unsplash's image server on 127.0.0.1 (nothing leaves the machine).

The server serves real JPEGs from coco-mini and misbehaves on purpose for some photo ids: a 429 with Retry-After
(then the photo), a 404, a connection that drops half-way through the body.
"""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clip_search.ingest import load_captions
from tests.conftest import ROOT, shared_data

SCRIPT = ROOT / "scripts" / "unsplash_lite.py"
# The real photos.tsv000's columns, shortened (the dataset's DOCS.md lists them all).
COLUMNS = (
    "photo_id photo_url photo_image_url photo_submitted_at photo_featured photo_width photo_height "
    "photo_aspect_ratio photo_description photographer_username photographer_first_name photographer_last_name "
    "exif_camera_make photo_location_name stats_views stats_downloads ai_description ai_primary_landmark_name"
).split()
GOOD = ["aaa111", "bbb222", "ccc333"]


@dataclass
class ImageServer:
    """Requests it saw: (monotonic time, path, query, headers) in arrival order."""

    jpegs: dict[str, bytes]
    url: str = ""
    seen: list[tuple[float, str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, photo_id: str) -> list[tuple[float, str, dict[str, str], dict[str, str]]]:
        with self.lock:
            return [r for r in self.seen if r[1] == f"/photo-{photo_id}"]


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold the test's server

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            with server.lock:
                server.seen.append(
                    (time.monotonic(), parts.path, dict(urllib.parse.parse_qsl(parts.query)), dict(self.headers))
                )
            photo_id = parts.path.removeprefix("/photo-")
            if photo_id == "missing" or photo_id not in server.jpegs:
                return self._send(404, b"not found")
            if photo_id == "ratelimited" and len(server.requests_for(photo_id)) == 1:
                return self._send(429, b"slow down", {"Retry-After": "1"})
            body = server.jpegs[photo_id]
            if photo_id == "truncated":
                self.close_connection = True
                return self._send(200, body[: len(body) // 2], {"Content-Length": str(len(body))})
            self._send(200, body)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "image/jpeg" if status == 200 else "text/plain")
            headers = {"Content-Length": str(len(body)), **(headers or {})}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def jpegs() -> dict[str, bytes]:
    files = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:5]
    ids = [*GOOD, "ratelimited", "truncated"]
    return {photo_id: path.read_bytes() for photo_id, path in zip(ids, files, strict=True)}


@pytest.fixture
def image_server(jpegs: dict[str, bytes]) -> Iterator[ImageServer]:
    state = ImageServer(jpegs)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


DESCRIPTIONS = {
    "aaa111": ('Sunset, over the "old" pier', "a pier at sunset"),
    "bbb222": ("", "a bowl of fruit on a table"),
    "ccc333": ("", ""),
}


def write_tsv(path: Path, server: ImageServer, ids: list[str]) -> Path:
    """A photos.tsv000 as the dataset ships it: tab-separated, a header row, quotes where a field needs them."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS, delimiter="\t")
        writer.writeheader()
        for photo_id in ids:
            human, ai = DESCRIPTIONS.get(photo_id, ("", ""))
            writer.writerow(
                {
                    "photo_id": photo_id,
                    "photo_url": f"https://unsplash.com/photos/{photo_id}",
                    "photo_image_url": f"{server.url}/photo-{photo_id}?ixid=abc",
                    "photo_description": human,
                    "ai_description": ai,
                    "photo_width": "4000",
                }
            )
    return path


def run(tsv: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), str(tsv), str(folder), "-q", "--backoff", "0.05", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_downloads_at_the_chosen_width_with_captions_for_ingest(tmp_path: Path, image_server: ImageServer, jpegs):
    write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    done = run(tmp_path, tmp_path / "photos", "--width", "640")  # the unzipped dataset's folder
    assert done.returncode == 0, done.stdout + done.stderr
    assert "downloaded 3, skipped 0 (already there), failed 0" in done.stdout
    for photo_id in GOOD:
        assert (tmp_path / "photos" / f"{photo_id}.jpg").read_bytes() == jpegs[photo_id]
        ((_, _, query, headers),) = image_server.requests_for(photo_id)
        assert query == {"ixid": "abc", "w": "640", "q": "80", "fm": "jpg"}
        assert "clip-search" in headers["User-Agent"]
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == [
        "aaa111.jpg",
        "bbb222.jpg",
        "captions.csv",
        "ccc333.jpg",
    ]  # no temporary file left
    assert load_captions(tmp_path / "photos" / "captions.csv") == {
        "aaa111.jpg": ['Sunset, over the "old" pier', "a pier at sunset"],
        "bbb222.jpg": ["a bowl of fruit on a table"],
    }


def test_a_rerun_downloads_nothing(tmp_path: Path, image_server: ImageServer):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    assert run(tsv, tmp_path / "photos").returncode == 0
    asked = len(image_server.seen)
    again = run(tsv, tmp_path / "photos")
    assert again.returncode == 0
    assert "downloaded 0, skipped 3" in again.stdout
    assert len(image_server.seen) == asked


def test_limit_takes_the_first_photos(tmp_path: Path, image_server: ImageServer):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    done = run(tsv, tmp_path / "photos", "--limit", "2")
    assert "downloaded 2, skipped 0" in done.stdout
    assert not (tmp_path / "photos" / "ccc333.jpg").exists() and not image_server.requests_for("ccc333")


def test_429_is_retried_after_the_time_the_server_asks(tmp_path: Path, image_server: ImageServer, jpegs):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, ["ratelimited"])
    done = run(tsv, tmp_path / "photos")
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "photos" / "ratelimited.jpg").read_bytes() == jpegs["ratelimited"]
    first, second = image_server.requests_for("ratelimited")
    assert second[0] - first[0] >= 0.9  # Retry-After: 1, not the 0.05 s backoff


def test_404_and_truncated_downloads_fail_without_leaving_a_file(tmp_path: Path, image_server: ImageServer):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, ["aaa111", "missing", "truncated"])
    done = run(tsv, tmp_path / "photos", "--retries", "2")
    assert done.returncode == 1
    assert "downloaded 1, skipped 0 (already there), failed 2" in done.stdout
    assert "failed missing: HTTP 404" in done.stdout
    assert "failed truncated: truncated" in done.stdout and "after 3 attempts" in done.stdout
    assert len(image_server.requests_for("missing")) == 1  # a 404 is not retried
    assert len(image_server.requests_for("truncated")) == 3
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["aaa111.jpg", "captions.csv"]


def test_requests_to_one_host_keep_to_the_rate_limit(tmp_path: Path, image_server: ImageServer):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    assert run(tsv, tmp_path / "photos", "--rate", "5", "--workers", "3").returncode == 0
    starts = sorted(t for t, *_ in image_server.seen)
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(starts))  # 5/s: 0.2 s apart


def test_the_zip_as_downloaded_works_too(tmp_path: Path, image_server: ImageServer):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    archive = tmp_path / "unsplash-research-dataset-lite-latest.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tsv, "photos.tsv000")
    done = run(archive, tmp_path / "photos", "--limit", "1")
    assert done.returncode == 0 and "downloaded 1, skipped 0" in done.stdout


@pytest.mark.slow
def test_the_folder_ingests_with_its_captions(tmp_path: Path, image_server: ImageServer, cli_env: dict[str, str]):
    tsv = write_tsv(tmp_path / "photos.tsv000", image_server, GOOD)
    assert run(tsv, tmp_path / "photos").returncode == 0
    folder, captions = tmp_path / "photos", tmp_path / "photos" / "captions.csv"
    cli = [sys.executable, "-m", "clip_search"]
    ingest_command = [*cli, "ingest", str(folder), "--captions", str(captions), "--json", "-q"]
    ingest = subprocess.run(ingest_command, env=cli_env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["added"] == 3
    search = subprocess.run(
        [*cli, "search", "fruit", "--json", "-k", "3"], env=cli_env, capture_output=True, text=True, timeout=300
    )
    hits = {Path(hit["source"] or hit["key"]).name: hit["caption"] for hit in json.loads(search.stdout)}
    assert hits == {
        "aaa111.jpg": 'Sunset, over the "old" pier',
        "bbb222.jpg": "a bowl of fruit on a table",
        "ccc333.jpg": None,
    }
