"""Memory per visitor: many new sessions must not grow the app without bound (issue 14, item 11).

Gradio keeps, per session, a copy of the page's settings and every output it sent, and a message queue; the app
keeps only a small query dict and result ids per results panel, and at most ``app.max_sessions`` sessions and
message queues (Gradio's defaults: 10,000 and 2,000, about 1 GB for this page). Sessions are driven over plain
HTTP, as browsers do: join the queue, read the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.app_process import PageEvent, RunningApp, gallery_items, search_as_page, search_event, start_app
from tests.conftest import shared_data

pytestmark = pytest.mark.slow

SESSIONS = 2000
WARM_UP = 20  # fewer than app.max_sessions (100): the sessions kept until it is reached are measured too
# Issue 14's bound. Measured (2026-12-01, 2 cores shared with other jobs, load ~7): 24 MB, and 32 MB with two busy
# loops running beside it (load ~11). Before the message queues were bounded and app.max_sessions lowered to 100:
# 41 MB quiet, 62 MB during a full CI run; with Gradio's default capacity of 10,000 sessions: 430 MB.
MAX_GROWTH_MB = 50


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningApp]:
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:24]
    extra = "rate_limit:\n  searches_per_minute: 0\n"  # every visitor comes from 127.0.0.1 here
    with start_app(tmp_path_factory.mktemp("memory-app"), tiny_model_dir, photos=photos, extra_config=extra) as app:
        yield app


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def visit(url: str, event: PageEvent, text: str) -> None:
    """A new visitor (a fresh session) searches once and reads the results, as the page does."""
    with requests.Session() as http:
        message = search_as_page(http, url, event, uuid.uuid4().hex[:11], text)
    assert message.get("success"), message
    assert len(gallery_items(message)) == 12


def visits(url: str, n: int) -> None:
    event = search_event(url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: visit(url, event, f"a photo of thing number {i % 40}"), range(n)))


def test_new_sessions_do_not_grow_memory_without_bound(app: RunningApp):
    visits(app.url, WARM_UP)  # warm up: caches, thread pools, the first sessions
    before = rss_mb(app.process.pid)
    visits(app.url, SESSIONS)
    growth = rss_mb(app.process.pid) - before
    print(f"{SESSIONS} new sessions: RSS +{growth:.1f} MB")
    assert growth < MAX_GROWTH_MB, f"{SESSIONS} sessions grew the app by {growth:.0f} MB"
