"""What a visitor or an API client meets when they send something wrong: plain words, never a traceback in the
answer or in the log, never a server path (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from tests.app_process import RunningApp, start_app
from tests.conftest import shared_data

pytestmark = pytest.mark.slow

ADMIN = "adm1n-for-tests"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningApp]:
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[:4]
    workdir = tmp_path_factory.mktemp("visitor-errors")
    with start_app(workdir, tiny_model_dir, photos=photos, extra_env={"CLIP_SEARCH_ADMIN_TOKEN": ADMIN}) as running:
        yield running


def _error(client: Client, *args: object, api_name: str) -> str:
    with pytest.raises(Exception) as info:  # gradio_client raises its own AppError
        client.predict(*args, api_name=api_name)
    return str(info.value)


def _raw_call(app: RunningApp, api_name: str, body: str) -> str:
    """An API call with a body gradio_client cannot send (NaN is not JSON, but Python's parser takes it)."""
    posted = requests.post(
        f"{app.url}/gradio_api/call/{api_name}", data=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert posted.status_code == 200, posted.text
    event = posted.json()["event_id"]
    return requests.get(f"{app.url}/gradio_api/call/{api_name}/{event}", timeout=60).text


def test_a_text_file_named_jpg_is_named_as_such(client: Client, tmp_path: Path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello, I am a shopping list")
    message = _error(client, handle_file(str(notes)), 3, "", api_name="/search_image")
    assert "Not a supported image format (accepted: JPEG, PNG, WEBP, HEIF)" in message
    assert "upstream" not in message


@pytest.mark.parametrize(("image_id", "ids"), [(1e20, str(10**20)), (-3, "-3"), ("seven", "seven, 12")])
def test_ids_that_name_no_image(client: Client, image_id: object, ids: str):
    assert "No image with id" in _error(client, image_id, 3, api_name="/more_like_this")
    expected = "No image with that id" if ids.isdigit() else "Image ids are whole numbers"
    assert expected in _error(client, ids, ADMIN, api_name="/delete")


@pytest.mark.parametrize(("k", "expected"), [(0, 1), (-5, 1), (1e9, 4), (2.0, 2)])
def test_out_of_range_result_counts_are_clamped(client: Client, k: float, expected: int):
    _message, gallery, hits = client.predict("a dog", k, api_name="/search")
    assert len(hits) == len(gallery) == expected  # the collection holds 4


def test_a_result_count_that_is_not_a_number_is_refused_in_words(client: Client):
    message = _error(client, "a dog", "ten", api_name="/search")
    assert "The number of results must be a number from 1 to 100" in message


def test_nan_is_answered_in_words(app: RunningApp):
    answers = [
        _raw_call(app, "search", '{"data": ["a dog", NaN]}'),
        _raw_call(app, "more_like_this", '{"data": [NaN, 3]}'),
        _raw_call(app, "delete", f'{{"data": [NaN, {json.dumps(ADMIN)}]}}'),
    ]
    assert "The number of results must be a number" in answers[0]
    assert "Click a result first" in answers[1]
    assert "Image ids are whole numbers" in answers[2]


def test_api_results_hold_no_server_path(client: Client, app: RunningApp):
    _message, gallery, hits = client.predict("a dog", 4, api_name="/search")
    _message, similar, _hits = client.predict(hits[0]["id"], 2, api_name="/more_like_this")
    answer = json.dumps([gallery, hits, similar, client.predict(api_name="/stats")])
    assert str(app.data_dir.parent) not in answer and "/tmp/" not in answer
    url = gallery[0]["image"]["url"]
    assert url.startswith(f"{app.url}/images/")  # the app's own link, served from the image folder
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/")
    for escape in ("/images/../catalog.lance", "/images/%2e%2e/config.yaml", "/images/../../config.yaml"):
        assert requests.get(app.url + escape, timeout=10).status_code == 404, escape


def test_an_upload_leaves_nothing_in_the_upload_folder(client: Client, app: RunningApp):
    def files() -> set[Path]:
        return {p for p in app.upload_dir.rglob("*") if p.is_file()}

    photo = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[20]
    before = files()  # query images of the searches above stay in Gradio's cache until its clean-up
    _message, _added, results = client.predict([handle_file(str(photo))], "", "", api_name="/upload")
    assert results[0]["status"] == "added"
    left = files() - before
    assert not left, left  # neither the photo's copy nor an empty temporary file per photo


def test_the_log_has_no_traceback(client: Client, app: RunningApp, tmp_path: Path):
    """Last in this module: every refusal above was routine, so the operator's log holds no traceback."""
    test_a_text_file_named_jpg_is_named_as_such(client, tmp_path)
    test_a_result_count_that_is_not_a_number_is_refused_in_words(client)
    assert "Traceback" not in app.log(), app.log()[-3000:]
