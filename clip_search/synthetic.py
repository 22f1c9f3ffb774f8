"""Synthetic collections for benchmarks and tests: N clustered unit vectors written through the real table code.

``python -m clip_search.testing fill DATA_DIR --n N (--model MODEL | --dim D) [--clusters C]``. With ``--model``
the vectors take that model's width and the collection is recorded as made by it, so an engine configured with
that model and ``CLIP_SEARCH_DATA_DIR=DATA_DIR`` opens it. Rows carry placeholder keys (no image bytes exist).
The lookup columns are indexed at the end, as an ingest's housekeeping leaves a collection.
Re-running is safe: row i always gets the same key and id, and rows already there are not written again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clip_search.collection.location import open_table
from clip_search.collection.records import image_id
from clip_search.config import load_config
from clip_search.store import content_key

log = logging.getLogger(__name__)

BATCH = 100_000  # one Lance commit per 100k rows: ~2 s each at 768-d on this kind of machine


def clustered_vectors(n: int, dim: int, *, clusters: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """Rows ``start..start+n`` of a deterministic clustered set: a random centre per row plus noise, unit length.

    The noise keeps rows of one cluster at cosine ~0.7-0.8 to their centre, about as spread as photos of
    one subject are; the centres themselves are random directions (nearly orthogonal in high dimensions).
    """
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng((seed, start))
    which = rng.integers(0, clusters, size=n)
    vectors = centres[which] + rng.standard_normal((n, dim)).astype(np.float32) * np.float32(0.9 / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


WORDS = ("dog", "cat", "beach", "mountain", "street", "food", "car", "bird", "tree", "boat")


def _attributes(start: int, count: int) -> dict[str, list]:
    """Varied, deterministic fields for filter benchmarks: 1 row in 20 an upload, the rest in 10 folders; a caption
    word of 10; 3 sizes (landscape, portrait, square); added over 2025 (row i at i * 5 min, wrapping)."""
    rows = range(start, start + count)
    sizes = [(640, 480), (480, 640), (512, 512)]
    epoch = datetime(2025, 1, 1, tzinfo=UTC)
    return {
        "width": [sizes[i % 3][0] for i in rows],
        "height": [sizes[i % 3][1] for i in rows],
        "source": ["upload" if i % 20 == 0 else f"/synthetic/folder{i % 10}/{i}.jpg" for i in rows],
        "caption": [f"a photo of a {WORDS[(i // 7) % 10]}" for i in rows],
        "added_at": [epoch + timedelta(minutes=5 * (i % 105_000)) for i in rows],
    }


def _model(model: str | None, dim: int | None) -> tuple[str, str, int]:
    """(signature, model id, width): from a real model (loaded once to learn its width) or a bare width."""
    if model is None:
        assert dim is not None
        return f"synthetic-{dim}d", f"synthetic-{dim}d", dim
    from clip_search.config import ModelSettings
    from clip_search.encoder import HFEncoder

    encoder = HFEncoder.from_settings(ModelSettings(id=model, device="cpu"))
    width = int(encoder.encode_text_exact(["a photo"]).shape[1])  # no query path needed for a width
    return encoder.name, model, width


def fill(
    data_dir: Path, n: int, *, model: str | None = None, dim: int | None = None, clusters: int = 1000, seed: int = 0
) -> int:
    """Write rows until the collection in ``data_dir`` holds ``n`` synthetic images; returns rows written."""
    settings = load_config()
    settings.data_dir = Path(data_dir).resolve()
    settings.storage.backend = "local"
    signature, model_id, width = _model(model, dim)
    table = open_table(settings)
    ds = table.latest()
    have = ds.count_rows() if ds is not None else 0
    table.check_model(signature, model_id)
    started = time.perf_counter()
    bar = tqdm(total=n, initial=have, desc="fill", unit="row")
    for start in range(have, n, BATCH):
        count = min(BATCH, n - start)
        shas = [hashlib.sha256(f"synthetic:{seed}:{i}".encode()).hexdigest() for i in range(start, start + count)]
        rows = {
            "id": [image_id(s) for s in shas],
            "key": [content_key(s, "jpg") for s in shas],
            "sha256": shas,
            **_attributes(start, count),
            "metadata": ["{}"] * count,
        }
        vectors = clustered_vectors(count, width, clusters=clusters, seed=seed, start=start)
        table.append_vectors(rows, vectors, model=signature, model_id=model_id)
        bar.update(count)
    bar.close()
    table.index_lookup_columns()  # as ingest's housekeeping leaves a collection
    written = max(0, n - have)
    log.info("wrote %d synthetic rows in %.1f s", written, time.perf_counter() - started)
    return written
