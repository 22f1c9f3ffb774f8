"""The blog embed as a web component, ``<gradio-app src=...>``, in a real browser (Debian's Chromium).

A blog page on one loopback server loads the ``gradio.js`` loader that the installed gradio package ships (the
same file Gradio's CDN serves for this version) from that server, and embeds the app running on another
loopback port: a second origin, as a blog and a Space are. Nothing is fetched from outside the machine.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import gradio
import pytest

from tests.app_process import RunningApp, start_app
from tests.conftest import shared_data
from tests.test_browser import IMAGES_LOADED, SHOTS, TIMEOUT_MS, browser, page  # noqa: F401 - fixtures used below

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOADER_DIR = Path(gradio.__file__).parent / "templates" / "frontend"  # gradio.js and the assets/ it imports
COMPONENT = "gradio-app"

BLOG_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>My photo blog</title>
<script type="module" src="/gradio/gradio.js"></script></head>
<body style="font-family: sans-serif; max-width: 1000px; margin: 2rem auto">
<h1>My photo blog</h1><p>Search my photos:</p>
<gradio-app src="{app_url}"></gradio-app>
<p>Thanks for reading.</p>
</body></html>
"""


class _BlogHandler(SimpleHTTPRequestHandler):
    """Serves the site's folder and remembers what was asked for (to show where the loader came from)."""

    requested: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        self.requested.append(self.path)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, photos: list[Path]) -> Iterator[RunningApp]:
    with start_app(tmp_path_factory.mktemp("embed-app"), tiny_model_dir, photos=photos[:8]) as running:
        yield running


@pytest.fixture(scope="module")
def blog(tmp_path_factory: pytest.TempPathFactory, app: RunningApp) -> Iterator[str]:
    """A static site on 127.0.0.1 (another port than the app's): the blog page and the self-hosted loader."""
    assert (LOADER_DIR / "gradio.js").is_file(), f"the gradio package ships no loader in {LOADER_DIR}"
    site = tmp_path_factory.mktemp("blog")
    (site / "gradio").mkdir()  # what docs/app.md says to copy to a blog: gradio.js and its assets/ folder
    (site / "gradio" / "gradio.js").symlink_to(LOADER_DIR / "gradio.js")
    (site / "gradio" / "assets").symlink_to(LOADER_DIR / "assets", target_is_directory=True)
    (site / "index.html").write_text(BLOG_PAGE.format(app_url=app.url))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_BlogHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _open_blog(page, blog_url: str):  # noqa: F811 - the page fixture imported above
    page.goto(blog_url)
    page.locator(f"{COMPONENT} #search-query textarea, {COMPONENT} #search-query input").first.wait_for()
    assert page.title() == "My photo blog"  # the app lives inside the blog's page, not instead of it
    return page.locator(COMPONENT)


def test_text_search_through_the_web_component(page, blog: str):  # noqa: F811
    embedded = _open_blog(page, blog)
    assert "8 images" in embedded.locator("#cs-header").inner_text()
    box = embedded.locator("#search-query textarea, #search-query input").first
    box.fill("a plate of food")
    box.press("Enter")
    page.wait_for_function(IMAGES_LOADED, arg=[f"{COMPONENT} #search-gallery img", 8], timeout=TIMEOUT_MS)
    status = embedded.locator("#search-status").inner_text()
    assert "8 results" in status and "a plate of food" in status
    assert page.get_by_text("Thanks for reading.").is_visible()  # the blog's own text is still there
    assert "/gradio/gradio.js" in _BlogHandler.requested  # the self-hosted loader, not a CDN's
    page.screenshot(path=str(SHOTS / "embed-component-search.png"), full_page=True)


def test_upload_through_the_web_component(page, blog: str, photos: list[Path]):  # noqa: F811
    new_photo = photos[40]
    embedded = _open_blog(page, blog)
    embedded.get_by_role("tab", name="Upload").click()
    embedded.locator("#upload-files input[type=file]").set_input_files(str(new_photo))
    embedded.locator("#upload-caption textarea, #upload-caption input").first.fill("uploaded from a blog")
    embedded.locator("#upload-button").click()
    embedded.locator("#upload-status table").wait_for()
    status = embedded.locator("#upload-status").inner_text()
    assert "1 added" in status and new_photo.name in status
    page.wait_for_function(IMAGES_LOADED, arg=[f"{COMPONENT} #upload-gallery img", 1], timeout=TIMEOUT_MS)
    page.wait_for_function(
        "sel => document.querySelector(sel).innerText.includes('9 images')", arg=f"{COMPONENT} #cs-header"
    )
    page.screenshot(path=str(SHOTS / "embed-component-upload.png"), full_page=True)
