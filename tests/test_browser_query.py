"""The Search tab's query controls in a real browser (Debian's Chromium through Playwright): negative terms,
filters, Load more, 👍/👎 with Refine, More like this beside its source image, and a phone-sized screen.

One app for the whole module (app starts are slow); see tests/test_browser.py for the browser fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests import test_browser
from tests.app_process import RunningApp, start_app
from tests.test_browser import SHOTS, TIMEOUT_MS, _open, _search, _shot, _wait_images

browser, page, photos = test_browser.browser, test_browser.page, test_browser.photos  # the same fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, photos: list[Path]) -> Iterator[RunningApp]:
    """12 ingested photos and one visitor's upload (the only image whose source is "upload")."""
    with start_app(tmp_path_factory.mktemp("browser-query-app"), tiny_model_dir, photos=photos[:12]) as running:
        client = Client(running.url, verbose=False, download_files=False)
        _, _, results = client.predict([handle_file(str(photos[30]))], "an uploaded photo", "", api_name="/upload")
        assert results[0]["status"] == "added"
        client.close()
        yield running


def _status(page) -> str:
    return page.locator("#search-status").inner_text()


def _wait_status(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#search-status').innerText.includes(t)", arg=text)


def _srcs(page) -> list[str]:
    return page.evaluate(
        "() => [...document.querySelectorAll('#search-gallery img')].map(i => i.src)"
        ".filter((s, i, all) => all.indexOf(s) === i)"
    )


def _set_k(page, k: int) -> None:
    box = page.locator("#search-k input[type=number]")
    box.fill(str(k))
    box.press("Tab")


def test_negative_terms_change_the_results(page, app: RunningApp):
    _open(page, app.url)
    _search(page, "a city street")
    _wait_status(page, "12 results")
    _wait_images(page, "#search-gallery", 12)
    plain = _srcs(page)
    without = page.locator("#search-without input, #search-without textarea").first
    without.fill("cars, people")
    without.press("Enter")  # Enter in the negative-terms field searches too
    _wait_status(page, "without cars, people")
    _wait_images(page, "#search-gallery", 12)
    assert _srcs(page) != plain
    _shot(page, "search-without")


def test_source_filter_shows_only_uploads(page, app: RunningApp):
    _open(page, app.url)
    page.locator("#search-filters").get_by_text("Filters").click()
    source = page.locator("#filter-source input")
    source.click()
    page.get_by_role("option", name="Uploads only").click()
    _search(page, "a photo")
    _wait_status(page, "filtered by source")
    _wait_images(page, "#search-gallery", 1)
    assert "1 result " in _status(page) + " "
    assert len(_srcs(page)) == 1
    page.locator("#search-gallery img").first.click()
    details = page.locator("#search-details")
    details.wait_for(state="visible")
    assert "an uploaded photo" in details.inner_text()
    _shot(page, "search-filter-uploads")


def _wait_count(page, n: int) -> None:
    """The gallery shows ``n`` distinct images, all loaded."""
    page.wait_for_function(
        """n => {
          const imgs = [...document.querySelectorAll('#search-gallery .grid-wrap img')];
          return new Set(imgs.map((i) => i.src)).size === n && imgs.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=n,
    )


def test_load_more_appends_the_next_page(page, app: RunningApp):
    _open(page, app.url)
    _set_k(page, 5)
    _search(page, "a kitchen")
    _wait_count(page, 5)
    first = _srcs(page)
    page.locator("#search-load-more").click()
    _wait_count(page, 10)
    after = _srcs(page)
    assert after[:5] == first and len(set(after)) == 10
    assert "closest 10" in _status(page) or "10 results" in _status(page)
    page.locator("#search-load-more").click()
    _wait_count(page, 13)
    page.locator("#search-load-more").wait_for(state="hidden")  # nothing more to load
    _shot(page, "search-load-more")


def test_marks_and_refine(page, app: RunningApp):
    _open(page, app.url)
    _search(page, "a bowl of fruit")
    _wait_images(page, "#search-gallery", 12)
    page.locator("#search-gallery img").nth(1).click()
    details = page.locator("#search-details")
    details.wait_for(state="visible")
    page.locator("#search-good").click()
    marks = page.locator("#search-marks")
    page.wait_for_function("() => document.querySelector('#search-marks').innerText.includes('1 marked good, 0')")
    page.locator("#search-gallery .thumbnails button").nth(0).click()  # another result, from the preview strip
    page.wait_for_timeout(300)
    bad_title = details.locator("h3").inner_text()
    page.locator("#search-bad").click()
    page.wait_for_function("() => document.querySelector('#search-marks').innerText.includes('1 marked good, 1')")
    page.locator("#search-refine").click()
    _wait_status(page, "1 marked good, 1 marked bad")
    _wait_images(page, "#search-gallery", 1)
    assert "Refine" in marks.inner_text()
    assert bad_title.startswith("Image ")
    _shot(page, "search-refine")


def test_more_like_this_shows_its_source_image(page, app: RunningApp):
    _open(page, app.url)
    _search(page, "a red brick wall")
    _wait_images(page, "#search-gallery", 12)
    page.locator("#search-gallery img").nth(2).click()
    details = page.locator("#search-details")
    details.wait_for(state="visible")
    image_id = details.locator("h3").inner_text().split()[1]
    page.locator("#search-opened img").first.wait_for()
    source_src = page.locator("#search-opened img").first.get_attribute("src")
    page.locator("#search-more").click()
    _wait_status(page, f"like image {image_id}")
    _wait_images(page, "#search-gallery", 12)
    assert details.is_visible() and details.locator("h3").inner_text().split()[1] == image_id
    assert page.locator("#search-opened img").first.get_attribute("src") == source_src
    assert source_src not in _srcs(page)  # the source is beside its results, not among them
    assert "similarity" in page.locator("#search-gallery").inner_text()
    box = details.bounding_box()
    assert box and box["y"] < page.viewport_size["height"]  # the details panel is still in view
    _shot(page, "more-like-this-source")


FOCUSED = "() => { const e = document.activeElement; const o = e && e.closest('[id]'); return o ? o.id : ''; }"


def _tab_through(page, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        page.keyboard.press("Tab")
        seen.append(page.evaluate(FOCUSED))
    return seen


def test_phone_width_controls_are_visible_and_reachable_by_keyboard(browser, app: RunningApp):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        _open(page, app.url)
        for selector in (
            "#search-query",
            "#search-button",
            "#search-without",
            "#search-sort",
            "#search-k",
            "#search-filters",
        ):
            box = page.locator(selector).first.bounding_box()
            assert box and box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= 391, selector
        page.locator("#search-query textarea, #search-query input").first.focus()
        seen = _tab_through(page, 12)
        for wanted in ("search-button", "search-without", "search-sort", "search-k", "search-filters"):
            assert wanted in seen, (wanted, seen)
        # the filters open from the keyboard, and their fields follow in the tab order
        page.locator("#search-filters button, #search-filters .label-wrap").first.focus()
        page.keyboard.press("Enter")
        page.locator("#filter-after").wait_for(state="visible")
        seen = _tab_through(page, 8)
        for wanted in ("filter-after", "filter-before", "filter-source", "filter-caption", "filter-orientation"):
            assert wanted in seen, (wanted, seen)
        # a search typed and sent from the keyboard; the result actions too
        box = page.locator("#search-query textarea, #search-query input").first
        box.focus()
        page.keyboard.type("a dog")
        page.keyboard.press("Enter")
        _wait_images(page, "#search-gallery", 4)
        load_more = page.locator("#search-load-more")
        assert load_more.is_visible()
        lm = load_more.bounding_box()
        assert lm and lm["x"] + lm["width"] <= 391
        page.locator("#search-gallery button.thumbnail-item").first.focus()
        page.keyboard.press("Enter")
        page.locator("#search-details").wait_for(state="visible")
        for selector in ("#search-good", "#search-bad", "#search-refine", "#search-more", "#search-close"):
            button = page.locator(selector)
            assert button.is_visible() and button.is_enabled(), selector
            button.focus()
            assert page.evaluate(FOCUSED) == selector[1:]
            b = button.bounding_box()
            assert b and b["x"] + b["width"] <= 391, selector
        page.locator("#search-good").press("Enter")
        page.wait_for_function("() => document.querySelector('#search-marks').innerText.includes('1 marked good')")
        page.screenshot(path=str(SHOTS / "phone-390.png"), full_page=True)
    finally:
        context.close()


def test_image_search_with_words(page, app: RunningApp, photos: list[Path]):
    _open(page, app.url)
    page.get_by_role("tab", name="Image-Search").click()
    page.locator("#image-query input[type=file]").set_input_files(str(photos[5]))
    page.locator("#image-query img").first.wait_for()
    words = page.locator("#image-text input, #image-text textarea").first
    words.fill("at night")
    words.press("Enter")
    page.wait_for_function("() => document.querySelector('#image-status').innerText.includes('plus “at night”')")
    _wait_images(page, "#image-gallery", 12)
    assert "similarity" in page.locator("#image-gallery").inner_text()
    _shot(page, "image-search-with-words")
