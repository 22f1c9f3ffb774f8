"""The upload check: a photo close to a moderation prompt is refused or held (and then seen by nobody until an
admin approves it); one far from every prompt passes.

The vectors are chosen by the test (the check is arithmetic on them); decoding, storing, the table, the index and
every read path are the real ones, with the tiny model's image processor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from clip_search.encoder import HFEncoder
from clip_search.engine import SearchEngine
from clip_search.errors import ConfigError, NotFoundError
from clip_search.store import is_private_key
from tests.conftest import make_settings, shared_data
from tests.moderation_hooks import FLAGGED_ENV, size_of

DIM = 64  # the tiny model's width, so the collection opens with its signature
PROMPTS = ["an unwanted photo", "another unwanted photo"]
NEUTRAL = ["a photo"]


def _unit(*weights: tuple[int, float]) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    for axis, weight in weights:
        vector[axis] = weight
    return vector / np.linalg.norm(vector)


class ChosenVectors:
    """An encoder whose vectors the test chooses: texts by a table, each image the next vector of a queue.
    Decoding and preprocessing are the tiny model's; ``probability`` is SigLIP's formula with a chosen scale and
    bias, or None (a CLIP model) when ``clip`` is set."""

    def __init__(self, real: HFEncoder, *, clip: bool = False) -> None:
        self.real = real
        self.name = real.name
        self.clip = clip
        self.texts = {PROMPTS[0]: _unit((0, 1)), PROMPTS[1]: _unit((1, 1)), NEUTRAL[0]: _unit((2, 1))}
        self.queue: list[np.ndarray] = []
        self.text_calls = 0

    @property
    def input_size(self) -> int:
        return self.real.input_size

    def preprocess(self, image):
        return self.real.preprocess(image)

    def encode_text(self, texts):
        self.text_calls += len(texts)
        return np.stack([self.texts[t] for t in texts])

    def encode_pixels(self, pixels):
        return np.stack([self.queue.pop(0) for _ in range(len(pixels))])

    def encode_images(self, images):
        return self.encode_pixels(images)

    def probability(self, scores):
        if self.clip:
            return None
        return (1 / (1 + np.exp(-(np.asarray(scores, dtype=np.float64) * 10 - 5)))).astype(np.float32)


CLOSE = _unit((0, 0.9), (40, 0.19**0.5))  # cosine 0.9 with the first prompt: probability 0.98
FAR = [_unit((10 + n, 1)) for n in range(8)]  # orthogonal to every prompt (probability 0.007) and to each other


@pytest.fixture
def photos() -> list[Path]:
    return sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[40:48]


def _engine(tmp_path: Path, tiny_model_dir: Path, *, clip: bool = False, **moderation) -> SearchEngine:
    settings = make_settings(
        tmp_path / "data",
        tiny_model_dir,
        moderation={"enabled": True, "prompts": PROMPTS, "neutral_prompts": NEUTRAL, "threshold": 0.5, **moderation},
    )
    return SearchEngine(settings, encoder=ChosenVectors(HFEncoder(str(tiny_model_dir)), clip=clip))


def _upload(engine: SearchEngine, photo: Path, vector: np.ndarray, **kwargs):
    engine.encoder.queue.append(vector)
    return engine.upload(photo.read_bytes(), filename=photo.name, **kwargs)


def test_close_to_a_prompt_is_rejected_and_nothing_is_kept_far_passes(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir, action="reject") as engine:
        refused = _upload(engine, photos[0], CLOSE)
        assert refused.status == "rejected" and refused.delete_code is None
        assert refused.message == f"{photos[0].name}: refused by this site's content check"
        assert list(engine.store.list_keys()) == [] and len(list(engine.collection.records())) == 0
        passed = _upload(engine, photos[1], FAR[0])
        assert passed.status == "added" and passed.visibility == "public"
        assert engine.count() == 1 and engine.uploads()[0].moderation_score == pytest.approx(0.0067, abs=1e-3)


def test_a_held_photo_is_invisible_everywhere_until_approved(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir, action="hold") as engine:
        public = [_upload(engine, p, v) for p, v in zip(photos[:3], FAR, strict=False)]
        held = _upload(engine, photos[3], CLOSE, caption="flagged")
        assert [r.visibility for r in public] == ["public"] * 3
        assert (held.status, held.visibility) == ("added", "held") and held.delete_code
        assert "held for review" in held.message
        assert engine.store.exists(held.key)  # stored, only not shown
        assert is_private_key(held.key)  # at a random key: no one fetches it by its content, sync skips it
        engine.encoder.texts["what the held photo shows"] = CLOSE

        def everywhere() -> list[set[int]]:
            texts = engine.query("what the held photo shows").limit(10)
            return [
                {h.id for h in engine.search(texts).hits},
                {h.id for h in engine.search(texts.sort_by("newest")).hits},
                {h.id for h in engine.search(texts.where(source="upload", caption="flagged")).hits},
                {h.id for h in engine.search(engine.query().sort_by("newest").limit(10)).hits},  # the listing
                {h.id for h in engine.search_similar(public[0].id, k=10)},  # more like this of another photo
                set(engine.get_many([r.id for r in [*public, held]])),
            ]

        assert all(held.id not in found for found in everywhere())
        assert (engine.count(), engine.stats()["images"], engine.stats()["held"]) == (3, 3, 1)
        with pytest.raises(NotFoundError):
            engine.search_similar(held.id)
        with pytest.raises(NotFoundError):
            engine.get(held.id)
        assert [r.id for r in engine.held()] == [held.id]
        assert engine.held()[0].moderation_score == pytest.approx(0.982, abs=1e-3)

        assert engine.approve([held.id, public[0].id]) == [held.id]  # only held photos can be approved
        assert all(held.id in found for found in everywhere())
        assert (engine.count(), engine.stats()["held"], engine.held()) == (4, 0, [])
        assert engine.get(held.id).visibility == "public"


def test_rejecting_a_held_photo_deletes_it(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir) as engine:
        kept = _upload(engine, photos[0], FAR[0])
        held = _upload(engine, photos[1], CLOSE)
        assert [r.id for r in engine.reject([held.id, kept.id])] == [held.id]  # a public photo is not "rejected"
        assert not engine.store.exists(held.key) and engine.held() == []
        assert engine.count() == 1 and len(list(engine.collection.records())) == 1


def test_a_held_private_photo_becomes_private_to_its_owner(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir) as engine:
        held = _upload(engine, photos[0], CLOSE, owner_key="correct horse battery")
        assert held.visibility == "held"
        owner = engine.viewer("correct horse battery")
        assert engine.count(owner) == 0  # held: not even its owner sees it yet
        engine.approve([held.id])
        assert engine.count() == 0 and engine.count(owner) == 1
        assert engine.get(held.id, owner).visibility == "private"


def test_clip_models_are_judged_by_a_cosine_margin(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir, clip=True, margin=0.2) as engine:
        near_prompt = _upload(engine, photos[0], CLOSE)  # prompt 0.9 - neutral 0.0
        assert near_prompt.visibility == "held"
        both = _upload(engine, photos[1], _unit((0, 1), (2, 1)))  # as close to "a photo" as to a prompt: margin 0
        assert both.visibility == "public"
        assert [r.moderation_score for r in engine.uploads()] == [pytest.approx(0.0), pytest.approx(0.9, abs=1e-3)]


def test_the_prompts_are_embedded_once_at_the_first_upload(tmp_path, tiny_model_dir, photos):
    with _engine(tmp_path, tiny_model_dir) as engine:
        assert engine.encoder.text_calls == 0  # nothing at start
        _upload(engine, photos[0], FAR[0])
        assert engine.encoder.text_calls == len(PROMPTS) + len(NEUTRAL)
        _upload(engine, photos[1], FAR[1])
        assert engine.encoder.text_calls == len(PROMPTS) + len(NEUTRAL)


def test_a_hook_can_flag_a_photo_and_a_broken_hook_flags_it(tmp_path, tiny_model_dir, photos, monkeypatch, caplog):
    listed = tmp_path / "flagged.txt"
    listed.write_text(size_of(photos[1].read_bytes()))
    assert size_of(photos[0].read_bytes()) != size_of(photos[1].read_bytes())
    monkeypatch.setenv(FLAGGED_ENV, str(listed))
    with _engine(tmp_path / "a", tiny_model_dir, hook="tests.moderation_hooks:flag_listed") as engine:
        assert _upload(engine, photos[0], FAR[0]).visibility == "public"
        assert _upload(engine, photos[1], FAR[1]).visibility == "held"  # far from the prompts, flagged by the hook
    with _engine(tmp_path / "b", tiny_model_dir, hook="tests.moderation_hooks:broken", action="reject") as engine:
        with caplog.at_level(logging.ERROR, logger="clip_search.moderation"):
            assert _upload(engine, photos[2], FAR[2]).status == "rejected"
        assert "moderation hook tests.moderation_hooks:broken failed" in caplog.text


def test_a_hook_that_cannot_be_loaded_stops_the_start(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"moderation\.hook .tests\.moderation_hooks:missing. cannot be loaded"):
        _engine(tmp_path, tiny_model_dir, hook="tests.moderation_hooks:missing")
