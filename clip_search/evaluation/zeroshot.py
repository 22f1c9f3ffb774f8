"""Zero-shot classification: which of a few labels does an image show, with no training.

Each label is written into several prompt templates ("a photo of a {}."), the prompts are embedded, and their
L2-normalised vectors are averaged and normalised again (prompt ensembling). The image's cosine with each label's
vector becomes a probability through SigLIP's own sigmoid, ``sigmoid(cos * exp(scale) + bias)``: every label is
judged on its own, so "cat" and "pet" can both be likely and "car" unlikely, and the values need not sum to 1.
A CLIP checkpoint has no calibrated bias; there the fallback is a softmax over the given labels (which always sums
to 1, so it can only say which label is *more* likely), and the result says so (``method == "softmax"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image

from clip_search.encoder import l2_normalize
from clip_search.errors import ClipSearchError

# A small ensemble in the spirit of CLIP's ImageNet prompts; SigLIP was trained on web alt-text, where such phrasings
# are common.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)


class LabelProbability(NamedTuple):
    label: str
    probability: float


@dataclass(frozen=True)
class ZeroShotResult:
    """Labels best first with their probabilities; ``method`` says how those were computed."""

    labels: list[LabelProbability]
    method: Literal["sigmoid", "softmax"]
    cosines: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "labels": [{"label": lp.label, "probability": lp.probability} for lp in self.labels],
            "cosines": self.cosines,
        }


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """``"cat, dog,car"`` or a list -> unique non-empty labels in the given order."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out: list[str] = []
    for item in items:
        label = " ".join(str(item).split())
        if label and label not in out:
            out.append(label)
    if not out:
        raise ClipSearchError('give at least one label, e.g. --labels "cat,dog,car"')
    return out


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    templates = tuple(templates) if templates else DEFAULT_TEMPLATES
    for template in templates:
        if "{}" not in template:
            raise ClipSearchError(f"prompt template {template!r} has no {{}} where the label goes")
    return templates


def label_vectors(
    encoder: Any,
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """(len(labels), dim): each label's prompts embedded, averaged, re-normalised.

    ``encode`` replaces ``encoder.encode_text`` (the evaluation passes its cached text embedder).
    """
    templates = check_templates(templates)
    prompts = [template.format(label) for label in labels for template in templates]
    vectors = l2_normalize((encode or encoder.encode_text)(prompts)).reshape(len(labels), len(templates), -1)
    return l2_normalize(vectors.mean(axis=1))


def probabilities(encoder: Any, cosines: np.ndarray) -> tuple[np.ndarray, Literal["sigmoid", "softmax"]]:
    """SigLIP's per-label sigmoid, or for a model without one a softmax over the labels (last axis)."""
    cosines = np.asarray(cosines, dtype=np.float64)
    sigmoid = encoder.probability(cosines)
    if sigmoid is not None:
        return np.asarray(sigmoid, dtype=np.float64), "sigmoid"
    scale = getattr(encoder, "logit_scale", None)
    logits = cosines * (np.exp(scale) if scale is not None else 100.0)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True), "softmax"


def classify_vector(
    encoder: Any,
    image_vector: np.ndarray,
    labels: str | Sequence[str],
    templates: Sequence[str] | None = None,
) -> ZeroShotResult:
    """Zero-shot labels for an already embedded image."""
    names = parse_labels(labels)
    cosines = label_vectors(encoder, names, templates) @ l2_normalize(np.asarray(image_vector))
    probs, method = probabilities(encoder, cosines)
    order = np.argsort(-probs, kind="stable")
    return ZeroShotResult(
        labels=[LabelProbability(names[i], round(float(probs[i]), 6)) for i in order],
        method=method,
        cosines={names[i]: round(float(cosines[i]), 6) for i in order},
    )


def classify_image(
    encoder: Any,
    image: Image.Image,
    labels: str | Sequence[str],
    templates: Sequence[str] | None = None,
) -> ZeroShotResult:
    """Zero-shot labels for a decoded RGB image (decode bytes with :func:`clip_search.images.decode_image`)."""
    vector = encoder.encode_pixels(encoder.preprocess(image.convert("RGB"))[None])[0]
    return classify_vector(encoder, vector, labels, templates)
