"""Uploaders take their photos back with a delete code: from the store, the table and every replica (a second
engine process), on local storage and in a SeaweedFS bucket. Wrong codes all fail alike, and no code is logged.
A replica also sees who may see what: a private upload stays hidden there, an approval shows it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from clip_search.bucket_sync import reindex_bucket
from clip_search.engine import SearchEngine
from clip_search.errors import NotFoundError
from clip_search.moderation import Moderator
from tests.conftest import make_settings, shared_data
from tests.replica_process import Replica
from tests.s3server import make_s3_settings, s3_environment

KEY = "the owner's long passphrase"


def _photos(start: int, n: int) -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[start : start + n]


def _wrong_codes(code: str, other: str) -> list[str | None]:
    image_id, secret = code.split("-", 1)
    return [
        f"{image_id}-{other.split('-', 1)[1]}",  # another uploader's secret on my photo's id
        other.split("-", 1)[0] + f"-{secret}",  # my secret on another photo's id
        code[:-1] + ("A" if code[-1] != "A" else "B"),  # one character off
        f"{int(image_id) + 1}-{secret}",  # no such photo
        secret,  # no id
        "",
        None,
    ]


def _take_back_everywhere(engine: SearchEngine, replica: Replica) -> None:
    photos = _photos(120, 4)
    mine, theirs = (engine.upload(p.read_bytes(), filename=p.name) for p in photos[:2])
    assert replica.ask(wait_count=2, timeout=Replica.REFRESH_S + 5)["count"] == 2
    assert replica.ask(find=str(photos[0]))["id"] == mine.id
    messages = set()
    for wrong in _wrong_codes(mine.delete_code, theirs.delete_code):
        with pytest.raises(NotFoundError) as info:
            engine.delete_mine(wrong)
        messages.add(str(info.value))
    assert messages == {"no photo matches this delete code"}  # the same answer, whatever was wrong
    assert engine.count() == 2 and engine.store.exists(mine.key)

    record = engine.delete_mine(mine.delete_code)
    assert record.id == mine.id and not engine.store.exists(mine.key) and engine.store.exists(theirs.key)
    assert [r.id for r in engine.collection.records()] == [theirs.id]
    assert engine.search_image(photos[0].read_bytes(), k=1)[0].id != mine.id
    assert replica.ask(wait_count=1, timeout=Replica.REFRESH_S + 5)["count"] == 1  # seen by the other process
    assert replica.ask(find=str(photos[0]))["id"] != mine.id
    with pytest.raises(NotFoundError, match="no photo matches this delete code"):
        engine.delete_mine(mine.delete_code)  # the right code, once the photo is gone

    # Who may see what reaches the replica with the rows: a private photo stays hidden there but for its key,
    # a held one until this process approves it.
    private = engine.upload(photos[2].read_bytes(), filename=photos[2].name, owner_key=KEY)
    assert replica.ask(wait_count=2, key=KEY, timeout=Replica.REFRESH_S + 5)["count"] == 2
    assert replica.ask(find=str(photos[2]))["id"] != private.id
    assert replica.ask(find=str(photos[2]), key=KEY)["id"] == private.id
    checks = engine.settings.moderation
    checks.enabled, checks.prompts, checks.hook = True, [], "tests.moderation_hooks:flag_everything"
    engine.moderator = Moderator(checks, engine.encoder)  # an external check that objects to every photo now
    held = engine.upload(photos[3].read_bytes(), filename=photos[3].name)
    assert held.visibility == "held"
    assert replica.ask(wait_count=1, timeout=Replica.REFRESH_S + 5)["count"] == 1
    assert replica.ask(find=str(photos[3]))["id"] != held.id
    engine.approve([held.id])
    assert replica.ask(wait_count=2, timeout=Replica.REFRESH_S + 5)["count"] == 2
    assert replica.ask(find=str(photos[3]))["id"] == held.id

    # A private photo's bytes left without their row (a crash between the two) are never indexed as public.
    engine.collection.remove(private.id)
    assert engine.store.exists(private.key)
    report = reindex_bucket(engine)
    assert report.indexed == 0 and engine.count(engine.viewer(KEY)) == 2


def test_a_delete_code_takes_a_photo_back_everywhere_on_local_storage(cli_env, tiny_model_dir):
    settings = make_settings(Path(cli_env["CLIP_SEARCH_DATA_DIR"]), tiny_model_dir)
    settings.upload.near_duplicate_threshold = 0.9999
    with SearchEngine(settings) as engine:
        replica = Replica(cli_env)
        try:
            _take_back_everywhere(engine, replica)
        finally:
            replica.close()


@pytest.mark.s3
def test_a_delete_code_takes_a_photo_back_everywhere_in_a_bucket(s3_env, cli_env, tiny_model_dir, tmp_path):
    bucket = s3_env.new_bucket()
    settings = make_s3_settings(tmp_path / "disk-a", tiny_model_dir, s3_env, bucket)
    settings.upload.near_duplicate_threshold = 0.9999
    env = s3_environment(s3_env, bucket, **dict(cli_env, CLIP_SEARCH_DATA_DIR=str(tmp_path / "disk-b")))
    with SearchEngine(settings) as engine:
        replica = Replica(env)
        try:
            _take_back_everywhere(engine, replica)
        finally:
            replica.close()


def test_codes_and_keys_are_never_logged(settings, caplog):
    settings.upload.near_duplicate_threshold = 0.9999
    photos = _photos(124, 2)
    with caplog.at_level(logging.DEBUG), SearchEngine(settings) as engine:
        public = engine.upload(photos[0].read_bytes(), filename=photos[0].name)
        private = engine.upload(photos[1].read_bytes(), filename=photos[1].name, owner_key=KEY)
        engine.search_text("a photo", key=KEY)
        for code in (public.delete_code, private.delete_code):
            with pytest.raises(NotFoundError):
                engine.delete_mine(code + "x")
            engine.delete_mine(code)
        assert "delete_code" not in repr(public)  # a logged result would not show it either
    text = caplog.text
    assert caplog.records  # the engine did log (uploads, deletes): just none of these
    for secret in (KEY, public.delete_code, private.delete_code):
        assert secret not in text and secret.split("-", 1)[-1] not in text
