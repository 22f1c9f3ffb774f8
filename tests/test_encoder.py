"""The encoder gives exactly what transformers gives when used the way the SigLIP model card says."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from clip_search.encoder import HFEncoder, model_signature
from clip_search.errors import EmptyQueryError
from tests.conftest import shared_data

TEXTS = ["a dog on a beach", "Two people riding bicycles down a busy street at night.", "cat", "x " * 200]


def _reference(model_dir: Path):
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir, backend="pil")
    return model, processor


def _l2(x: torch.Tensor) -> np.ndarray:
    x = x.float().numpy()
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_text_vectors_match_the_model_card_reference(tiny_model_dir: Path):
    model, processor = _reference(tiny_model_dir)
    # Model card: padding="max_length" (64 tokens), get_text_features, L2 norm. SigLIP was trained without an
    # attention mask over the padding, so the reference passes the input ids alone, as the model card's
    # tokenizer-only example does for the released checkpoints.
    inputs = processor.tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        reference = _l2(model.get_text_features(input_ids=inputs["input_ids"]).pooler_output)

    encoder = HFEncoder(str(tiny_model_dir), batch_size=2)
    ours = encoder.encode_text(TEXTS)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_image_vectors_match_the_model_card_reference(tiny_model_dir: Path):
    folder = shared_data("coco-mini") / "val2017"
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:5]]
    model, processor = _reference(tiny_model_dir)
    with torch.no_grad():
        reference = _l2(model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output)

    ours = HFEncoder(str(tiny_model_dir), batch_size=2).encode_images(images)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_model_loads_lazily_and_once(tiny_model_dir: Path):
    encoder = HFEncoder(str(tiny_model_dir))
    assert not encoder.loaded  # constructing costs nothing
    encoder.encode_text(["hello"])
    model = encoder._model
    encoder.encode_text(["again"])
    assert encoder._model is model


def test_probability_is_siglip_sigmoid(tiny_model_dir: Path):
    encoder = HFEncoder(str(tiny_model_dir))
    scores = np.array([-0.2, 0.0, 0.1, 0.3])
    expected = 1 / (1 + np.exp(-(scores * np.exp(encoder.logit_scale) + encoder.logit_bias)))
    np.testing.assert_allclose(encoder.probability(scores), expected, rtol=1e-6)
    assert encoder.logit_scale == pytest.approx(np.log(117.33), rel=1e-5)
    assert encoder.logit_bias == pytest.approx(-12.93, rel=1e-5)


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_text_is_a_clear_error(tiny_model_dir: Path, query: str):
    with pytest.raises(EmptyQueryError, match="empty"):
        HFEncoder(str(tiny_model_dir)).encode_text([query])


def test_signature_tells_checkpoints_apart(tiny_model_dir: Path, other_tiny_model_dir: Path):
    assert model_signature(str(tiny_model_dir)) != model_signature(str(other_tiny_model_dir))
    assert model_signature(str(tiny_model_dir)) == model_signature(str(tiny_model_dir))
    assert model_signature("google/siglip-base-patch16-224") == "google/siglip-base-patch16-224"


def test_missing_model_is_a_clear_error(tmp_path: Path):
    from clip_search.errors import ClipSearchError

    with pytest.raises(ClipSearchError, match="cannot load model"):
        HFEncoder(str(tmp_path / "no-such-model")).encode_text(["hi"])


def test_clip_checkpoints_work_through_the_same_path(tiny_clip_dir: Path, tmp_path: Path):
    model, processor = _reference(tiny_clip_dir)
    texts = ["a cat", "the dog on the beach"]
    inputs = processor.tokenizer(texts, padding=True, return_tensors="pt")  # CLIP's model card: pad to longest
    images = [Image.new("RGB", (320, 200), "red"), Image.new("RGB", (200, 320), (10, 200, 30))]
    with torch.no_grad():
        ref_text = _l2(model.get_text_features(**inputs).pooler_output)
        ref_image = _l2(model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output)
    encoder = HFEncoder(str(tiny_clip_dir))
    np.testing.assert_allclose(encoder.encode_text(texts), ref_text, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(images), ref_image, atol=1e-5)
    assert encoder.logit_bias is None
    assert encoder.probability(np.array([0.3])) is None  # no calibrated probability without a learned bias

    from clip_search.engine import SearchEngine
    from tests.conftest import make_settings

    with SearchEngine(make_settings(tmp_path / "data", tiny_clip_dir)) as engine:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            assert engine.add_image(buf.getvalue(), source=f"{i}.png").status == "added"
        hits = engine.search_text("a red picture", k=2)
        assert len(hits) == 2 and all(h.probability is None for h in hits)
        assert engine.search_image(images[1], k=1)[0].source == "1.png"
