"""A synthetic encoder whose right answers are known, and tiny data sets for it (used by the evaluation tests).

Each synthetic image is a solid colour that encodes an integer id (red * 256 + green, lossless PNG). The encoder
reads the id back from the decoded pixels, so the images go through the real decode path, and maps it to a fixed
random unit vector ``table[key(id)]``; a text maps to ``table[first integer in it]``. With ``key`` chosen so that
an image and its captions (or its class prompts) share the same integer, retrieval is perfect; with ``key`` a
random reassignment plus a little noise, it is a random ranking.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DIM = 128


class OracleEncoder:
    """Implements the engine's Encoder protocol (and what the evaluation uses of HFEncoder)."""

    input_size = 8
    logit_scale = float(np.log(10.0))
    logit_bias = -5.0

    def __init__(
        self, key: Callable[[int], int] = lambda i: i, *, noise: float = 0.0, seed: int = 0, name: str = "oracle"
    ):
        self.key = key
        self.noise = noise
        self.name = name
        rng = np.random.default_rng(1234)
        table = rng.normal(size=(70_000, DIM)).astype(np.float32)
        self.table = table / np.linalg.norm(table, axis=1, keepdims=True)
        self._rng = np.random.default_rng(seed)
        self.calls = {"text": 0, "pixels": 0}

    @staticmethod
    def image_id(pixels: np.ndarray) -> int:
        r, g = round(float(pixels[0])), round(float(pixels[1]))
        return r * 256 + g

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        self.calls["pixels"] += len(pixel_values)
        out = np.stack([self.table[self.key(self.image_id(p))] for p in pixel_values])
        if self.noise:
            out = out + self._rng.normal(scale=self.noise, size=out.shape).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_pixels(np.stack([self.preprocess(img) for img in images]))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        self.calls["text"] += len(texts)
        ids = [int(re.search(r"\d+", t).group()) for t in texts]
        return self.table[ids].copy()

    def probability(self, scores: np.ndarray) -> np.ndarray | None:
        logits = np.asarray(scores, dtype=np.float64) * np.exp(self.logit_scale) + self.logit_bias
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def id_image(path: Path, ident: int, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (ident // 256, ident % 256, 77)).save(path, format="PNG")
    return path


WORDS = "apple river stone cloud maple tiger lemon violin candle harbor meadow rocket".split()


def make_captioned(root: Path, n_images: int, captions_per_image: int = 5) -> Path:
    """images/NNNN.png (id = index) and captions.csv: image i's captions read "photo <i> ..." plus a word of its own."""
    rows = []
    for i in range(n_images):
        name = f"{i:04d}.png"
        id_image(root / "images" / name, i)
        unique = f"tag{i}x"  # a word only this image's captions use (for the keyword baseline)
        for j in range(captions_per_image):
            rows.append((name, f"photo {i} of a {WORDS[(i + j) % len(WORDS)]} {unique} view {j}"))
    with (root / "captions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return root


def make_labelled(root: Path, n_classes: int, per_class: int) -> Path:
    """k<c>/img_<n>.png with id = c * 1000 + n; classes.csv names class c "thing <c>"."""
    for c in range(n_classes):
        for n in range(per_class):
            id_image(root / f"k{c}" / f"img_{c * per_class + n:04d}.png", c * 1000 + n)
    with (root / "classes.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["folder", "name"])
        writer.writerows([(f"k{c}", f"thing {c}") for c in range(n_classes)])
    return root
