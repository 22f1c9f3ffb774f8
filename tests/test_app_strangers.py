"""Photos from strangers through the running app and gradio_client: private photos behind a key, delete codes,
uploads held for review, the admin endpoints; and no code or key ever in the app's log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from tests.app_process import RunningApp, start_app
from tests.conftest import shared_data
from tests.moderation_hooks import FLAGGED_ENV, size_of

pytestmark = pytest.mark.slow

ADMIN = "an-admin-token-for-tests"
# The content check with the hook alone (the tiny model's probabilities mean nothing): it flags the sizes listed.
MODERATION = """
moderation:
  enabled: true
  prompts: []
  hook: tests.moderation_hooks:flag_listed
  action: hold
"""


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[100:116]


@pytest.fixture(scope="module")
def flagged(photos: list[Path]) -> Path:
    """The photo the "external classifier" objects to (its size is unique among these photos)."""
    sizes = [size_of(p.read_bytes()) for p in photos]
    return next(p for p, size in zip(photos[:10], sizes, strict=False) if sizes.count(size) == 1)


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir: Path, photos: list[Path], flagged: Path) -> Iterator[RunningApp]:
    workdir = tmp_path_factory.mktemp("strangers-app")
    listed = workdir / "flagged.txt"
    listed.write_text(size_of(flagged.read_bytes()))
    env = {"CLIP_SEARCH_ADMIN_TOKEN": ADMIN, FLAGGED_ENV: str(listed), "CLIP_SEARCH_KEY_SALT": "a test deployment"}
    public = [p for p in photos[:10] if p != flagged]
    with start_app(workdir, tiny_model_dir, photos=public, extra_config=MODERATION, extra_env=env) as running:
        yield running


def _images(client: Client) -> int:
    return client.predict(api_name="/stats")["images"]


def _ids(client: Client, photo: Path, key: str | None = None) -> list[int]:
    """The results of an image search, with a visitor key when given (the key goes in /query's JSON)."""
    query = {"k": 20} if key is None else {"k": 20, "key": key}
    return [h["id"] for h in client.predict(query, handle_file(str(photo)), api_name="/query")["hits"]]


def _query(client: Client, **query) -> set[int]:
    return {h["id"] for h in client.predict(query, None, api_name="/query")["hits"]}


def _error(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    return str(info.value)


def test_a_private_upload_is_found_only_with_its_key(client: Client, app: RunningApp, photos: list[Path]):
    before = _images(client)
    message, added, results = client.predict(
        [handle_file(str(photos[12])), handle_file(str(photos[13]))], "", "", True, "", api_name="/upload"
    )
    key = results[0]["visitor_key"]
    assert [r["visibility"] for r in results] == ["private", "private"] and results[1]["visitor_key"] == key
    assert key in message and all(r["delete_code"] in message for r in results)  # shown to the uploader, once
    private = [r["id"] for r in results]
    assert _images(client) == before  # not in the public count
    assert not set(_ids(client, photos[12])) & set(private)
    assert not set(_ids(client, photos[12], "not the right key at all")) & set(private)
    assert _ids(client, photos[12], key)[0] == private[0]
    _, _, hits = client.predict("a photo", 20, api_name="/search")
    assert not {h["id"] for h in hits} & set(private)
    assert set(private) <= _query(client, text="a photo", k=20, key=key)
    page = client.predict({"text": "a photo", "k": 20, "key": key}, None, api_name="/query")
    assert "key" not in page["query"]  # never echoed
    assert not _query(client, text="a photo", k=20) & set(private)
    # "More like this" of a private photo is "not found" without its key; of a public one, it leaves them out.
    assert "No image with id" in _error(lambda: client.predict(private[0], 5, api_name="/more_like_this"))
    assert private[1] in _query(client, parts=[{"id": private[0]}], k=20, key=key)
    public_id = _ids(client, photos[0])[0]
    _, _, hits = client.predict(public_id, 20, api_name="/more_like_this")
    assert not {h["id"] for h in hits} & set(private)
    # Its link is served only to the key holder, and says nothing of the photo's content.
    link = added[0]["image"]["url"]
    assert "/images/private/" in link and requests.get(link, timeout=10).status_code == 200


def test_delete_codes_take_a_photo_back_and_wrong_codes_all_fail_alike(client: Client, app: RunningApp, photos):
    _, shown, mine = client.predict([handle_file(str(photos[14]))], "", "", api_name="/upload")  # as older clients call
    _, _, theirs = client.predict([handle_file(str(photos[15]))], "", "", api_name="/upload")
    code, other = mine[0]["delete_code"], theirs[0]["delete_code"]
    image_id = mine[0]["id"]
    assert re.fullmatch(rf"{image_id}-[\w-]{{24}}", code)
    count = _images(client)
    answers = {
        _error(lambda c=c: client.predict(c, api_name="/delete_mine"))
        for c in (
            f"{image_id}-{other.split('-', 1)[1]}",  # another visitor's secret for my photo
            code[:-1] + ("A" if code[-1] != "A" else "B"),  # one character off
            f"{image_id + 1}-{code.split('-', 1)[1]}",  # an id with no photo
            "not a code",
        )
    }
    assert len(answers) == 1 and "No photo matches this delete code" in answers.pop()
    assert _images(client) == count and image_id in _ids(client, photos[14])
    assert (
        client.predict(code, api_name="/delete_mine")
        == f"Deleted image {image_id}: it is gone from the collection and the storage."
    )
    assert _images(client) == count - 1 and image_id not in _ids(client, photos[14])
    assert "No photo matches" in _error(lambda: client.predict(code, api_name="/delete_mine"))  # already gone
    assert requests.get(shown[0]["image"]["url"], timeout=10).status_code == 404  # gone from the store too


def test_a_flagged_upload_is_held_until_an_admin_approves_it(client: Client, flagged: Path):
    count = _images(client)
    message, added, results = client.predict([handle_file(str(flagged))], "", "", api_name="/upload")
    held = results[0]
    assert held["visibility"] == "held" and held["delete_code"] and added == []
    assert "held for review" in message and _images(client) == count
    assert held["id"] not in _ids(client, flagged)
    assert "admin token is missing or wrong" in _error(lambda: client.predict("wrong", 10, api_name="/review"))
    listed = client.predict(ADMIN, 10, api_name="/review")
    assert [row["id"] for row in listed] == [held["id"]] and listed[0]["client_id"].startswith("c-")
    newest = client.predict(ADMIN, 50, "", api_name="/uploads")
    assert newest[0]["id"] == held["id"] and {"moderation_score", "client_id", "visibility"} <= set(newest[0])
    mine = client.predict(ADMIN, 50, newest[0]["client_id"], api_name="/uploads")
    assert held["id"] in {row["id"] for row in mine}
    assert client.predict(str(held["id"]), ADMIN, api_name="/approve") == f"Approved image {held['id']}."
    assert _images(client) == count + 1 and _ids(client, flagged)[0] == held["id"]
    assert client.predict(ADMIN, 10, api_name="/review") == []


def test_admin_endpoints_need_the_token_and_delete_in_bulk(client: Client, photos: list[Path]):
    assert "admin token is missing or wrong" in _error(lambda: client.predict("1, 2", "nope", api_name="/delete"))
    ids = _ids(client, photos[0])[:2]
    count = _images(client)
    answer = client.predict(f"{ids[0]}, {ids[1]}", ADMIN, api_name="/delete")
    assert answer.startswith(f"Deleted images {ids[0]}, {ids[1]}.") and _images(client) == count - 2


def test_codes_and_keys_never_reach_the_log(client: Client, app: RunningApp, photos: list[Path]):
    _, _, results = client.predict(
        [handle_file(str(photos[13]))], "", "", True, "my own long passphrase", api_name="/upload"
    )
    code = results[0]["delete_code"]
    _query(client, text="a photo", k=5, key="my own long passphrase")
    client.predict(code, api_name="/delete_mine")
    _, _, generated = client.predict([handle_file(str(photos[14]))], "", "", True, "", api_name="/upload")
    log = app.log()
    assert "my own long passphrase" not in log and code not in log and code.split("-", 1)[1] not in log
    assert generated[0]["visitor_key"] not in log and generated[0]["delete_code"].split("-", 1)[1] not in log
