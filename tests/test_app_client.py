"""The running app through gradio_client, as a script or another app would use it (see docs/app.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from gradio_client import Client, handle_file

from clip_search.app.text import MORE_MARKER, RESULTS_MARKER
from tests.app_process import RunningApp, search_as_page, search_event, start_app
from tests.conftest import shared_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, photos: list[Path]) -> Iterator[RunningApp]:
    with start_app(tmp_path_factory.mktemp("client-app"), tiny_model_dir, photos=photos[:12]) as running:
        yield running


def test_endpoints_are_named(client: Client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/search", "/search_image", "/more_like_this", "/query", "/upload", "/stats"} <= names
    assert "/delete" not in names  # no admin token configured: no delete endpoint at all


def test_search(client: Client, app: RunningApp):
    message, gallery, hits = client.predict("a dog playing in the snow", 5, api_name="/search")
    assert len(gallery) == len(hits) == 5
    assert "a dog playing in the snow" in message
    assert all(0 <= h["probability"] <= 1 and -1 <= h["score"] <= 1 for h in hits)
    assert gallery[0]["caption"].endswith(f"match · {hits[0]['score']:.2f}")
    # the gallery's image is served from the image folder, in place
    url = gallery[0]["image"]["url"]
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/")
    assert url.startswith(f"{app.url}/images/")  # the app's own link, never the server's folder layout


def test_nothing_outside_the_image_folder_is_served(app: RunningApp):
    for path in (app.data_dir / "catalog.sqlite", app.data_dir.parent / "config.yaml", Path("/etc/passwd")):
        response = requests.get(f"{app.url}/gradio_api/file={path}", timeout=10)
        assert response.status_code == 403, path


def test_search_errors_are_plain_words(client: Client):
    with pytest.raises(Exception, match="empty") as info:
        client.predict("   ", 5, api_name="/search")
    assert "Traceback" not in str(info.value)


def test_search_by_image(client: Client, photos: list[Path]):
    message, _gallery, hits = client.predict(handle_file(str(photos[4])), 3, "", api_name="/search_image")
    assert hits[0]["source"] == photos[4].name and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["probability"] is None and "most similar" in message


def test_search_by_private_url_is_refused(client: Client, app: RunningApp):
    with pytest.raises(Exception, match="private or local"):
        client.predict(None, 3, f"{app.url}/", api_name="/search_image")


def test_more_like_this(client: Client):
    _, _, hits = client.predict("a kitchen", 1, api_name="/search")
    _, _, similar = client.predict(hits[0]["id"], 4, api_name="/more_like_this")
    assert len(similar) == 4 and hits[0]["id"] not in [h["id"] for h in similar]


def test_query_gives_the_same_results_as_search_and_the_engine(client: Client, app: RunningApp, tiny_model_dir: Path):
    _, gallery, hits = client.predict("a dog playing in the snow", 5, api_name="/search")
    page = client.predict('{"text": "a dog playing in the snow", "k": 5}', None, api_name="/query")
    assert [h["id"] for h in page["hits"]] == [h["id"] for h in hits]
    assert [h["url"] for h in page["hits"]] == [item["image"]["url"] for item in gallery]  # as the browser gets them
    assert page["has_more"] and page["next_start"] == 5 and page["start"] == 0
    assert all("/" not in h["source"] for h in page["hits"])  # file names, not the server's folders
    # a query with a minus term, a filter and an order, sent as an object: the engine's own answer
    query = {"text": "a city street", "minus": ["cars"], "filters": {"orientation": "landscape"}, "k": 4, "page": 2}
    page = client.predict(query, None, api_name="/query")
    from clip_search.engine import SearchEngine
    from tests.conftest import make_settings

    with SearchEngine(make_settings(app.data_dir, tiny_model_dir)) as engine:
        expected = engine.query("a city street").minus("cars").where(orientation="landscape").limit(4).page(2).run()
    assert [h["id"] for h in page["hits"]] == [h.id for h in expected.hits] and page["start"] == 4
    assert page["query"]["filters"] == {"orientation": "landscape"}


def test_query_with_an_image_and_words(client: Client, photos: list[Path]):
    page = client.predict('{"text": "at night", "k": 3}', handle_file(str(photos[4])), api_name="/query")
    assert len(page["hits"]) == 3 and page["hits"][0]["probability"] is None
    assert page["query"]["parts"] == [{"text": "at night", "weight": 1.0}, {"image": True, "weight": 1.0}]


def test_query_bad_json_is_a_clear_message(client: Client, app: RunningApp):
    with pytest.raises(Exception, match="not valid JSON") as info:
        client.predict('{"text": "a dog", ', None, api_name="/query")
    assert "Traceback" not in str(info.value) and "&quot;" not in str(info.value)
    with pytest.raises(Exception, match="nknown query field colour"):
        client.predict({"text": "a dog", "colour": "red"}, None, api_name="/query")
    assert "Traceback" not in app.log()


def test_upload_then_find_it(client: Client, app: RunningApp, photos: list[Path], tmp_path: Path):
    new_photo = photos[40]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    before = client.predict(api_name="/stats")["images"]
    message, added, results = client.predict(
        [handle_file(str(new_photo)), handle_file(str(notes))], "uploaded in a test", "", api_name="/upload"
    )
    assert [r["status"] for r in results] == ["added", "rejected"]
    assert results[1]["file"] == "notes.txt" and results[1]["message"]
    assert len(added) == 1 and "1 added" in message and "1 rejected" in message
    assert client.predict(api_name="/stats")["images"] == before + 1
    # Gradio's temporary copies are gone: the kept photo lives in the store, the refused file nowhere.
    leftovers = [p.name for p in app.upload_dir.rglob("*") if p.is_file()]
    assert "notes.txt" not in leftovers and new_photo.name not in leftovers
    _, _, hits = client.predict(handle_file(str(new_photo)), 1, "", api_name="/search_image")
    assert hits[0]["id"] == results[0]["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["caption"] == "uploaded in a test"
    # the same photo again is recognised
    _, _, again = client.predict([handle_file(str(new_photo))], "", "", api_name="/upload")
    assert again[0]["status"] == "duplicate" and again[0]["duplicate_of"] == results[0]["id"]


@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")  # inside gradio's queue (pandas 3)
def test_an_upload_does_not_hold_up_searches(tmp_path: Path, tiny_model_dir: Path, photos: list[Path], monkeypatch):
    """A slow upload (a big batch on a CPU) runs in its own concurrency group: other visitors' searches go on."""
    import threading
    import time

    from clip_search.app import build, enable_queue
    from clip_search.engine import SearchEngine
    from clip_search.ingest import ingest_paths
    from tests.app_process import free_port
    from tests.conftest import make_settings

    engine = SearchEngine(make_settings(tmp_path / "data", tiny_model_dir, upload={"near_duplicate_threshold": 0.9999}))
    ingest_paths(engine, photos[:6], progress=False)
    uploading = threading.Event()
    real_upload = engine.upload

    def slow_upload(data: bytes, **kwargs):
        uploading.set()
        time.sleep(4)
        return real_upload(data, **kwargs)

    monkeypatch.setattr(engine, "upload", slow_upload)
    demo = enable_queue(build.build_app(engine), engine)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **build.launch_options(engine)
    )
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False, download_files=False)
        job = client.submit([handle_file(str(photos[30]))], "", "", api_name="/upload")
        assert uploading.wait(15)
        started = time.monotonic()
        _, _, hits = client.predict("a dog", 3, api_name="/search")
        assert len(hits) == 3 and time.monotonic() - started < 2.5
        assert not job.done()  # the upload was still being processed while the search ran
        assert job.result(timeout=30)[2][0]["status"] == "added"
        client.close()
    finally:
        demo.close()
        engine.close()


def test_a_search_sends_the_gallery_its_items_and_the_status_says_what_shows(app: RunningApp):
    """The page's search answers with the gallery's items, never with an update of the gallery or of "Load more"
    (an update costs the app a rebuild of the component, ~10 ms): the status line's markers show or hide them
    (tests/test_browser*.py check what a visitor then sees)."""
    event = search_event(app.url)
    with requests.Session() as http:

        def panel(text: str, caption: str = "") -> tuple[str, Any]:
            message = search_as_page(http, app.url, event, uuid.uuid4().hex[:11], text, 5, caption=caption)
            assert message["success"], message
            status, gallery, *_ = message["output"]["data"]  # status, gallery, state, details, marks
            return status, gallery

        status, gallery = panel("a dog")  # 12 photos, 5 a page: results, and more of them
        assert isinstance(gallery, list) and len(gallery) == 5
        assert gallery[0]["image"]["url"].startswith(f"{app.url}/images/")
        assert RESULTS_MARKER in status and MORE_MARKER in status
        status, gallery = panel("a cat", caption="nosuchword")  # nothing matches
        assert gallery == [] and RESULTS_MARKER not in status and MORE_MARKER not in status
