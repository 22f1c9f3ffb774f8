"""The upload check: is a visitor's photo close to a description of unwanted content?

Zero-shot, with the collection's own model: the text vectors of ``moderation.prompts`` are computed once (at the
first check) and each upload's vector is compared with them, one dot product per prompt. The score is SigLIP's
match probability with the closest prompt (calibrated per image-text pair, so a threshold means the same for
every photo); for a model without a learned bias (CLIP) it is a cosine margin: the best prompt's cosine minus the
best of ``neutral_prompts``. An optional hook (``module:function``) may flag a photo too, from its bytes.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clip_search.config import ModerationSettings
from clip_search.encoder import Encoder
from clip_search.errors import ConfigError

log = logging.getLogger(__name__)

Hook = Callable[[bytes, str], bool]


@dataclass(frozen=True)
class Verdict:
    """What the check found: the score (probability, or cosine margin for CLIP) and whether it flags the photo."""

    score: float
    flagged: bool


class Moderator:
    """Scores upload vectors against the configured prompts (thread-safe; the prompts are embedded once)."""

    def __init__(self, settings: ModerationSettings, encoder: Encoder) -> None:
        self.settings = settings
        self.encoder = encoder
        self.hook = load_hook(settings.hook) if settings.hook else None
        self._prompts: np.ndarray | None = None
        self._neutral: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def prompt_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The prompts' and neutral prompts' text vectors, embedded at the first call (the app calls it at start
        when ``model.warm_up`` is on, so the first visitor's upload does not wait for them)."""
        if self._prompts is None:
            with self._lock:
                if self._prompts is None:
                    self._neutral = np.asarray(self.encoder.encode_text(self.settings.neutral_prompts), np.float32)
                    self._prompts = np.asarray(self.encoder.encode_text(self.settings.prompts), np.float32)
        return self._prompts, self._neutral  # type: ignore[return-value]

    def score(self, vector: np.ndarray) -> float:
        """The photo's score: the closest prompt's match probability, or its cosine margin (no probability)."""
        prompts, neutral = self.prompt_vectors()
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        cosines = prompts @ vector
        probabilities = self.encoder.probability(cosines)
        if probabilities is not None:
            return float(np.max(probabilities))
        return float(cosines.max() - (neutral @ vector).max())

    def check(self, vector: np.ndarray, data: bytes, content_type: str) -> Verdict:
        """Score the photo and say whether it is flagged (by the prompts, or by the hook). Without prompts the
        hook alone decides (score 0)."""
        score, flagged = 0.0, False
        if self.settings.prompts:
            score = self.score(vector)
            flagged = score >= (self.settings.threshold if self._has_probability() else self.settings.margin)
        if not flagged and self.hook is not None:
            flagged = self._ask_hook(data, content_type)
        return Verdict(round(score, 6), flagged)

    def _has_probability(self) -> bool:
        return self.encoder.probability(np.zeros(1, dtype=np.float32)) is not None

    def _ask_hook(self, data: bytes, content_type: str) -> bool:
        try:
            return bool(self.hook(data, content_type))  # type: ignore[misc]
        except Exception:  # the external check is down or broken: flag rather than let the photo through unseen
            log.exception("the moderation hook %s failed; the photo is flagged", self.settings.hook)
            return True


def load_hook(spec: str) -> Hook:
    """The function ``module:function`` names, imported at start so a typo fails before the first upload."""
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"moderation.hook {spec!r} cannot be loaded: {exc}") from None
    if not callable(function):
        raise ConfigError(f"moderation.hook {spec!r} is not a function")
    return function
