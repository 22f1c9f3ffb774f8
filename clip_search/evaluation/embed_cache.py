"""Embeddings of evaluation data cached on disk, so re-running after a metric change does not re-embed.

A vector is stored under the encoder's identity (``encoder.name``, which for a local checkpoint includes a
fingerprint of its weights, plus the settings that change vectors) and the SHA-256 of its input: the file's bytes
for an image, the UTF-8 text for a caption or prompt. Renaming or moving a data set keeps its cache; editing a photo
or swapping the model misses it. Layout::

    CACHE_DIR/<model slug>-<hash>/images/<chunk>.npz   (arrays ``keys`` and ``vectors``)
    CACHE_DIR/<model slug>-<hash>/texts/<chunk>.npz

Each run that embeds something new writes one chunk; many chunks are merged into one now and then.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the decode/preprocess path changes what a vector means
MAX_CHUNKS = 32


def default_cache_dir() -> Path:
    """``$CLIP_SEARCH_EVAL_CACHE``, else ``$XDG_CACHE_HOME/clip-search/eval`` (``~/.cache/clip-search/eval``)."""
    explicit = os.environ.get("CLIP_SEARCH_EVAL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clip-search" / "eval"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encoder_identity(encoder: Any, kind: str) -> str:
    """What makes two vectors of the same input comparable: the model signature and vector-changing settings."""
    parts = [f"v{CACHE_VERSION}", str(getattr(encoder, "name", type(encoder).__name__))]
    quantize = getattr(encoder, "quantize", "none")
    if quantize and quantize != "none":
        parts.append(f"quantize={quantize}")
    if kind == "texts":
        parts.append(f"max_text_tokens={getattr(encoder, 'max_text_tokens', '')}")
        path = getattr(encoder, "query_path", "fp32")
        if path != "fp32":
            parts.append(f"query_path={path}")
    return "|".join(parts)


class EmbeddingCache:
    """Vectors by content hash for one encoder; ``root=None`` keeps them in memory only (no disk writes)."""

    def __init__(self, root: str | Path | None, encoder: Any) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.encoder = encoder
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    def _folder(self, kind: str) -> Path | None:
        if self.root is None:
            return None
        identity = encoder_identity(self.encoder, kind)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(getattr(self.encoder, "name", "model")))[-48:].strip("_.")
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        return self.root / f"{slug or 'model'}-{digest}" / kind

    def load(self, kind: str) -> None:
        """Read the cached vectors of ``kind`` ("images" or "texts") now rather than on first use."""
        self._load(kind)

    def _load(self, kind: str) -> dict[str, np.ndarray]:
        if kind in self._memory:
            return self._memory[kind]
        table: dict[str, np.ndarray] = {}
        folder = self._folder(kind)
        if folder is not None and folder.is_dir():
            for chunk in sorted(folder.glob("*.npz")):
                try:
                    with np.load(chunk, allow_pickle=False) as data:
                        table.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("ignoring unreadable embedding cache file %s: %s", chunk, exc)
        self._memory[kind] = table
        return table

    def get(self, kind: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        table = self._load(kind)
        return {k: table[k] for k in keys if k in table}

    def put(self, kind: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Remember new vectors (and write them as one chunk when the cache is on disk)."""
        if not len(keys):
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        table = self._load(kind)
        table.update(zip(keys, vectors, strict=True))
        folder = self._folder(kind)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        chunks = sorted(folder.glob("*.npz"))
        if len(chunks) >= MAX_CHUNKS:  # merge everything known into one chunk
            all_keys = list(table)
            merged = self._write(folder, all_keys, np.stack([table[k] for k in all_keys]))
            for old in chunks:
                if old != merged:
                    old.unlink(missing_ok=True)
        else:
            self._write(folder, list(keys), vectors)

    @staticmethod
    def _write(folder: Path, keys: list[str], vectors: np.ndarray) -> Path:
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16] + ".npz"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=np.asarray(keys), vectors=vectors)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.debug("cached %d vectors in %s", len(keys), folder / name)
        return folder / name
