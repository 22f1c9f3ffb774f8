"""The vector a query stands for, from the unit vectors of its parts and the results marked good or bad.

1. Parts (rclip's arithmetic): ``q0 = sum_i w_i * v_i`` over the unit vectors ``v_i`` of the parts, a minus part
   having a negative weight. Several texts are therefore averaged by weight ("sunset beach" + "ocean waves" finds
   images near both), and a minus part pushes away from what it describes.
2. Relevance feedback (Rocchio): ``q = alpha * q0 / |q0| + beta * mean(good) - gamma * mean(bad)`` over the
   vectors of the images marked good and bad (alpha 1, beta 0.75, gamma 0.25 by default, the textbook values).
   Marks accumulate over rounds: a refined query carries every earlier mark.
3. The result is L2-normalised; an image's ``score`` is its cosine with that vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clip_search.errors import InvalidQueryError

_TINY = 1e-6


@dataclass(frozen=True)
class Feedback:
    """Rocchio's weights: how far good marks pull and bad marks push the query."""

    alpha: float = 1.0
    beta: float = 0.75
    gamma: float = 0.25


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < _TINY:
        raise InvalidQueryError("the query's parts cancel each other out: remove a minus term or change a weight")
    return (vector / norm).astype(np.float32)


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray | None:
    """``sum_i w_i * v_i`` of the parts' unit vectors (step 1), not yet normalised; None without parts."""
    if not vectors:
        return None
    stacked = np.stack([unit(np.asarray(v, dtype=np.float32)) for v in vectors])
    return np.asarray(weights, dtype=np.float32) @ stacked


def query_vector(
    parts: np.ndarray | None,
    good: np.ndarray | None = None,
    bad: np.ndarray | None = None,
    feedback: Feedback = Feedback(),
) -> np.ndarray:
    """The unit query vector (steps 2 and 3) from :func:`combine`'s sum and the good and bad images' vectors."""
    if parts is None and (good is None or not len(good)):
        raise InvalidQueryError("the query is empty: give a text, an image, or results marked good")
    total = np.zeros(0, dtype=np.float32)
    if parts is not None:
        total = feedback.alpha * unit(parts)
    for vectors, weight in ((good, feedback.beta), (bad, -feedback.gamma)):
        if vectors is not None and len(vectors):
            pull = weight * np.asarray(vectors, dtype=np.float32).mean(axis=0)
            total = pull if not len(total) else total + pull
    return unit(total)
