"""A real browser (Debian's Chromium through Playwright) against the running app, screenshots included.

Screenshots land in test-artifacts/screenshots/. Needs /usr/bin/chromium (``apt-get install chromium``; the test
script installs it); skipped without it, except under CI=true where that is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from tests.app_process import RunningApp, start_app
from tests.conftest import ROOT, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "test-artifacts" / "screenshots"
TIMEOUT_MS = 45_000

# the first n images are in the page and have loaded (below the fold, lazy loading may hold the rest back)
IMAGES_LOADED = """([selector, n]) => {
  const imgs = [...document.querySelectorAll(selector)];
  return imgs.length >= n && imgs.slice(0, n).every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, photos: list[Path]) -> Iterator[RunningApp]:
    with start_app(tmp_path_factory.mktemp("browser-app"), tiny_model_dir, photos=photos[:12]) as running:
        yield running


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _open(page, url: str):
    page.goto(url)
    page.locator("#search-query textarea, #search-query input").first.wait_for()
    return page


def _search(root, text: str) -> None:
    box = root.locator("#search-query textarea, #search-query input").first
    box.fill(text)
    box.press("Enter")


def _wait_images(page, selector: str, n: int = 1, frame=None) -> None:
    target = frame or page
    target.locator(f"{selector} img").first.wait_for()
    target.wait_for_function(IMAGES_LOADED, arg=[f"{selector} img", n], timeout=TIMEOUT_MS)


def _shot(page, name: str) -> None:
    page.wait_for_timeout(300)  # let transitions settle
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_text_search_shows_images_that_load(page, app: RunningApp):
    _open(page, app.url)
    assert "12 images" in page.locator("#cs-header").inner_text()
    _search(page, "   ")  # a mistake gets a message in plain words, not a crash
    toast = page.get_by_text("The text query is empty")
    toast.wait_for()
    assert "Traceback" not in page.content()
    _shot(page, "error-message")
    _search(page, "people walking in a city street")
    _wait_images(page, "#search-gallery", 12)
    status = page.locator("#search-status").inner_text()
    assert "12 results" in status and "people walking in a city street" in status
    captions = page.locator("#search-gallery").inner_text()
    assert "% match · 0." in captions
    _shot(page, "search")


def test_header_links_to_the_api_page(page, app: RunningApp):
    _open(page, app.url)
    page.locator("#cs-header a.cs-api").click()
    page.get_by_text("API documentation").wait_for()
    for name in ("/search", "/search_image", "/upload"):
        assert page.get_by_text(name, exact=True).count() >= 1
    _shot(page, "api-page")


def test_open_a_result_and_more_like_this(page, app: RunningApp):
    _open(page, app.url)
    page.get_by_role("button", name="a red brick wall").click()  # an example query runs at once
    _wait_images(page, "#search-gallery", 12)
    page.locator("#search-gallery img").nth(1).click()
    details = page.locator("#search-details")
    details.wait_for(state="visible")
    title = details.locator("h3").inner_text()
    assert title.startswith("Image ") and "Match" in details.inner_text()
    image_id = title.split()[1]
    _shot(page, "result-details")
    page.locator("#search-more").click()
    page.wait_for_function(
        "id => document.querySelector('#search-status').innerText.includes(`like image ${id}`)", arg=image_id
    )
    _wait_images(page, "#search-gallery", 11)
    assert "similarity" in page.locator("#search-gallery").inner_text()
    assert details.is_visible() and details.locator("h3").inner_text() == title  # the source, beside its results
    _shot(page, "more-like-this")


def test_details_of_an_opened_result_are_in_view(page, app: RunningApp):
    _open(page, app.url)
    page.get_by_role("button", name="a red brick wall").click()
    _wait_images(page, "#search-gallery", 12)
    page.locator("#search-gallery img").nth(5).click()
    page.locator("#search-details").wait_for(state="visible")
    page.wait_for_timeout(800)  # the scroll
    top = page.evaluate("() => document.querySelector('#search-details').getBoundingClientRect().top")
    assert 0 <= top < 900 - 100, top  # its heading and first rows show without scrolling, at 1280 x 900


def test_thumbnail_labels_are_whole_on_a_phone(browser, app: RunningApp):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        _open(page, app.url)
        page.get_by_role("button", name="a red brick wall").click()
        _wait_images(page, "#search-gallery", 4)
        labels = page.evaluate(
            "() => [...document.querySelectorAll('#search-gallery .caption-label')]"
            ".map(e => [e.innerText, e.scrollWidth <= e.clientWidth + 1])"
        )
        _shot(page, "phone-results")
        assert labels and all(whole for _, whole in labels), labels
    finally:
        context.close()


def test_image_search_tab(page, app: RunningApp, photos: list[Path]):
    _open(page, app.url)
    page.get_by_role("tab", name="Image-Search").click()
    page.locator("#image-query input[type=file]").set_input_files(str(photos[5]))
    page.locator("#image-query img").first.wait_for()
    page.locator("#image-button").click()
    _wait_images(page, "#image-gallery", 12)
    assert "similarity 1.00" in page.locator("#image-gallery").inner_text()
    _shot(page, "image-search")


def test_upload_a_photo_and_find_it(page, app: RunningApp, photos: list[Path]):
    new_photo = photos[50]
    _open(page, app.url)
    page.get_by_role("tab", name="Upload").click()
    page.locator("#upload-files input[type=file]").set_input_files(str(new_photo))
    page.locator("#upload-caption textarea, #upload-caption input").first.fill("a photo uploaded from the browser")
    page.locator("#upload-button").click()
    page.locator("#upload-status table").wait_for()
    status = page.locator("#upload-status").inner_text()
    assert "1 added" in status and new_photo.name in status
    _wait_images(page, "#upload-gallery", 1)
    page.wait_for_function("() => document.querySelector('#cs-header').innerText.includes('13 images')")
    _shot(page, "upload")

    page.get_by_role("tab", name="Image-Search").click()
    page.locator("#image-query input[type=file]").set_input_files(str(new_photo))
    page.locator("#image-query img").first.wait_for()
    page.locator("#image-button").click()
    _wait_images(page, "#image-gallery", 1)
    page.locator("#image-gallery img").first.click()
    details = page.locator("#image-details")
    details.wait_for(state="visible")
    text = details.inner_text()
    assert new_photo.name in text and "a photo uploaded from the browser" in text and "1.000" in text


def test_a_private_photo_shows_only_with_its_key(page, browser, app: RunningApp, photos: list[Path]):
    public = f"{Client(app.url, verbose=False, download_files=False).predict(api_name='/stats')['images']} images"
    _open(page, app.url)
    # the header is the page's at first, then the count at the page's load: wait for that one (earlier tests added)
    page.wait_for_function("(count) => document.querySelector('#cs-header').innerText.includes(count)", arg=public)
    page.get_by_role("tab", name="Upload").click()
    page.locator("#upload-files input[type=file]").set_input_files(str(photos[60]))
    page.locator("#upload-caption textarea, #upload-caption input").first.fill("confidential")
    page.locator("#upload-private input[type=checkbox]").check()
    page.locator("#upload-button").click()
    page.locator("#upload-status table").wait_for()
    status = page.locator("#upload-status").inner_text()
    key = re.search(r"Your key for these private photos: (\S+?)\.? Keep it", status).group(1)
    assert "Added as private image" in status
    _wait_images(page, "#upload-gallery", 1)  # its uploader sees it
    page.wait_for_timeout(1000)  # the header's refresh after an upload
    assert public in page.locator("#cs-header").inner_text()  # not counted among the public images
    _shot(page, "upload-private")

    context = browser.new_context(viewport={"width": 1280, "height": 900})  # another visitor, later
    try:
        other = context.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        _open(other, app.url)
        other.locator("#search-filters").get_by_text("Filters").click()
        other.locator("#filter-caption textarea, #filter-caption input").first.fill("confidential")
        _search(other, "a photo")
        other.wait_for_function("() => document.querySelector('#search-status').innerText.includes('No results')")
        assert "/images/private/" not in other.content()  # without the key: not even a link
        other.locator("#search-private").get_by_text("Your private photos").click()
        other.locator("#search-key input, #search-key textarea").first.fill(key)
        _search(other, "a photo")
        _wait_images(other, "#search-gallery", 1)
        sources = other.eval_on_selector_all("#search-gallery img", "imgs => imgs.map((img) => img.src)")
        assert len(sources) == 1 and "/images/private/" in sources[0]
        _shot(other, "search-private")
    finally:
        context.close()


def test_embedded_in_an_iframe(page, app: RunningApp):
    page.set_content(
        "<!doctype html><html><head><title>My blog</title></head>"
        "<body style='font-family: sans-serif; max-width: 1000px; margin: 2rem auto'>"
        "<h1>My photo blog</h1><p>Search my photos:</p>"
        f"<iframe src='{app.url}/' width='100%' height='1000' style='border: 1px solid #ccc'></iframe>"
        "</body></html>"
    )
    frame = page.frame_locator("iframe")
    box = frame.locator("#search-query textarea, #search-query input").first
    box.wait_for()
    _search(frame, "a plate of food")
    frame.locator("#search-gallery img").first.wait_for()
    inner = page.frames[1]
    inner.wait_for_function(IMAGES_LOADED, arg=["#search-gallery img", 4], timeout=TIMEOUT_MS)
    assert "12 results" in frame.locator("#search-status").inner_text()
    _shot(page, "iframe-embed")


@pytest.fixture(scope="module")
def empty_app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningApp]:
    # min_probability 1.0: with the random test model every text query is then a weak match
    extra = "search:\n  min_probability: 1.0\n"
    with start_app(tmp_path_factory.mktemp("empty-app"), tiny_model_dir, extra_config=extra) as running:
        yield running


def test_empty_collection_says_how_to_add_photos_then_weak_matches(page, empty_app: RunningApp):
    _open(page, empty_app.url)
    notice = page.locator("#cs-empty")
    notice.wait_for(state="visible")
    text = notice.inner_text()
    assert "The collection is empty" in text and "Upload" in text and "ingest --samples" in text
    assert "0 images" in page.locator("#cs-header").inner_text()
    _shot(page, "empty-collection")

    page.locator("#cs-add-samples").click()
    notice.wait_for(state="hidden")
    assert "0 images" not in page.locator("#cs-header").inner_text()
    _search(page, "a cat")
    _wait_images(page, "#search-gallery", 5)
    status = page.locator("#search-status").inner_text()
    assert "No good match" in status and "closest" in status
    _shot(page, "no-good-match")
