"""The engine: what the CLI, the notebooks and the app call. It knows nothing of Gradio.

It ties the pieces together: an :class:`Encoder` for text and images, a :class:`Collection` (the Lance table
and the FAISS index derived from it) and an :class:`ImageStore`. Images enter through :meth:`SearchEngine.prepare`
(decode, choose the bytes to store, preprocess for the model) and :meth:`SearchEngine.commit` (embed, store the
bytes, then commit the row: the commit point).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from clip_search.collection import Collection, ImageRecord, NewImage
from clip_search.collection.location import open_collection
from clip_search.collection.migrate import migrate_legacy
from clip_search.collection.scan import set_search_threads
from clip_search.config import Settings, load_config
from clip_search.encoder import Encoder, HFEncoder
from clip_search.errors import (
    ClipSearchError,
    ConfigError,
    EmptyQueryError,
    InvalidImageError,
    InvalidQueryError,
    NotFoundError,
)
from clip_search.images import (
    DecodedImage,
    decode_image,
    encode_web_copy,
    model_draft_side,
    sha256_hex,
    web_format,
)
from clip_search.search import Query, QueryRunner, SearchHit, SearchPage
from clip_search.search.query import Part
from clip_search.store import ImageStore, LocalImageStore, content_key
from clip_search.urlfetch import fetch_url

log = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """An image decoded and ready to embed, with the exact bytes that will be stored."""

    data: bytes
    ext: str
    content_type: str
    sha256: str  # of ``data``
    source_sha256: str  # of the bytes we were given
    width: int
    height: int
    pixels: np.ndarray  # the model's preprocessed input
    source: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return content_key(self.sha256, self.ext)


@dataclass(frozen=True)
class AddResult:
    """What happened to one image offered to the collection."""

    status: Literal["added", "duplicate", "rejected"]
    message: str
    id: int | None = None
    key: str | None = None
    duplicate_of: int | None = None
    source: str | None = None


def make_store(settings: Settings) -> ImageStore:
    """The configured store: S3 when a bucket is set (or ``storage.backend: s3``), else the local folder."""
    if settings.storage_backend == "s3":
        try:
            from clip_search.store_s3 import S3ImageStore
        except ImportError as exc:  # pragma: no cover - shipped with the package
            raise ConfigError(f"S3 storage is configured but unavailable: {exc}") from exc
        return S3ImageStore.from_settings(settings)
    return LocalImageStore(settings.local_image_dir)


def prepare_image(
    data: bytes,
    *,
    settings: Settings,
    input_size: int,
    preprocess: Callable[[Image.Image], np.ndarray],
    source: str | None = None,
    caption: str | None = None,
    metadata: dict[str, Any] | None = None,
    reencode: bool = False,
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> PreparedImage:
    """:meth:`SearchEngine.prepare` without an engine: the same rules where only the model's image processor is
    at hand (the CPU workers of a cluster ingest, which never load the model)."""
    max_side = settings.storage.web_copy_max_side
    model_side = model_draft_side(input_size)
    if max_side:
        draft: int | None = max(max_side, model_side)
    else:
        draft = None if reencode else model_side  # a full-size re-encoded copy needs every pixel
    decoded = decode_image(
        data,
        max_pixels=max_pixels or settings.ingest.max_pixels,
        formats=tuple(formats) if formats else None,
        draft_side=draft,
    )
    web = web_format(decoded.format)
    too_big = bool(max_side) and max(decoded.width, decoded.height) > max_side
    if web is not None and not reencode and not too_big:
        stored, (ext, content_type) = data, web
    else:
        stored, ext, content_type = encode_web_copy(
            decoded.image,
            max_side=max_side,
            quality=settings.storage.web_copy_quality,
            lossless=decoded.format == "PNG",
        )
    return PreparedImage(
        data=stored,
        ext=ext,
        content_type=content_type,
        sha256=sha256_hex(stored),
        source_sha256=sha256_hex(data),
        width=decoded.width,
        height=decoded.height,
        pixels=preprocess(decoded.image),
        source=source,
        caption=caption,
        metadata=dict(metadata or {}),
    )


class SearchEngine:
    """Text-to-image and image-to-image search over one collection."""

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: Encoder | None = None,
        store: ImageStore | None = None,
    ) -> None:
        self.settings = settings
        self.encoder: Encoder = encoder or HFEncoder.from_settings(settings.model)
        self.store = store or make_store(settings)
        self.store.check()
        set_search_threads(settings.index.search_threads)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.collection: Collection = open_collection(settings, model=self.encoder.name)
        migrate_legacy(settings, self.collection, self.store)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_cache_lock = threading.Lock()
        self._runner = QueryRunner(
            self.collection,
            settings.search,
            embed_part=self.embed_part,
            make_hits=self._hits,
            probability=self.encoder.probability,
        )

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Any) -> SearchEngine:
        return cls(load_config(path), **overrides)

    # -- facts --------------------------------------------------------------------------------------------------

    def count(self) -> int:
        return len(self.collection)

    def stats(self) -> dict[str, Any]:
        return {
            "images": self.count(),
            "model": self.settings.model.id,
            "model_signature": self.encoder.name,
            "dim": self.collection.dim,
            "store": self.store.describe(),
            "data_dir": str(self.settings.data_dir),
        }

    def get(self, image_id: int) -> ImageRecord:
        record = self.collection.get(_as_id(image_id))
        if record is None:
            raise NotFoundError(f"no image with id {image_id} in the collection")
        return record

    def get_many(self, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Several images by id in one lookup (the app rebuilds a results page from ids); missing ones left out."""
        return self.collection.get_many([_as_id(i) for i in image_ids])

    def image_url(self, key: str) -> str:
        """Where a browser fetches a stored image: a presigned URL, or a local file path the app serves."""
        return self.store.url(key)

    # -- search ---------------------------------------------------------------------------------------------------

    def result_count(self, k: object) -> int:
        """How many results a caller's ``k`` asks for: clamped to 1..``search.max_k`` (an API client may send 0
        or 1e9); not a number is refused in words."""
        if k is None:
            return self.settings.search.default_k
        top = self.settings.search.max_k
        try:
            value = float(k)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        if math.isnan(value):
            raise ClipSearchError(f"the number of results must be a number from 1 to {top}, not “{str(k)[:20]}”")
        return int(max(1, min(value, top)))

    def embed_text(self, query: str) -> np.ndarray:
        """The query's vector, from a small LRU cache (demo visitors repeat the example queries)."""
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError("the text query is empty: type a few words describing the picture you want")
        text = " ".join(query.split())
        with self._text_cache_lock:
            cached = self._text_cache.get(text)
            if cached is not None:
                self._text_cache.move_to_end(text)
                return cached
        vector = self.encoder.encode_text([text])[0]
        with self._text_cache_lock:
            self._text_cache[text] = vector
            while len(self._text_cache) > 512:
                self._text_cache.popitem(last=False)
        return vector

    def embed_image(self, image: bytes | str | Path | Image.Image) -> np.ndarray:
        """The vector of a query image; the image is never stored.

        Bytes and paths are held to the ``upload`` limits (size, formats, megapixels from the header), as any
        visitor's file is: a small PNG of 88 megapixels would otherwise cost gigabytes to decode. A PIL image is
        taken as it is (the caller decoded it, under whatever limits it chose).
        """
        pil = image if isinstance(image, Image.Image) else self.decode_query(self._query_bytes(image)).image
        return self.encoder.encode_pixels(self.encoder.preprocess(pil)[None])[0]

    def embed_part(self, part: Part) -> np.ndarray:
        """The unit vector of one part of a query: a text, an image, an image URL or a collection image."""
        if part.kind == "text":
            return self.embed_text(part.value)
        if part.kind == "id":
            vector = self.collection.embedding(_as_id(part.value))
            if vector is None:
                raise NotFoundError(f"no image with id {part.value} in the collection")
            return vector
        if part.kind == "url":
            return self.embed_image(self.fetch_image(part.value))
        return self.embed_image(part.value)

    def fetch_image(self, url: str) -> bytes:
        """A query image from an http(s) URL, within the upload limits, refused for private addresses."""
        app = self.settings.app
        if not app.allow_image_urls:
            raise InvalidQueryError("searching by image URL is switched off here: upload the image instead")
        return fetch_url(
            str(url).strip(),
            max_bytes=min(app.url_max_bytes, self.settings.upload.max_bytes),
            timeout_s=app.url_timeout_s,
            allow_private=app.allow_private_urls,
        )

    # -- queries -------------------------------------------------------------------------------------------------

    def query(
        self,
        text: str | None = None,
        *,
        image: bytes | str | Path | Image.Image | None = None,
        url: str | None = None,
        id: int | None = None,
        weight: float = 1.0,
    ) -> Query:
        """A query bound to this engine, to be narrowed and run: ``engine.query("beach").minus("people").run()``.

        With no argument it starts empty (add parts with ``.plus``/``.minus``, or browse with ``.where`` and
        ``.sort_by("newest")``).
        """
        empty = Query(runner=self)
        if text is None and image is None and url is None and id is None:
            return empty
        return empty.plus(text, image=image, url=url, id=id, weight=weight)

    def search(self, query: Query) -> SearchPage:
        """Run a query (see :mod:`clip_search.search` for the arithmetic, the filters, the orders and pages)."""
        return self._runner.search(query)

    def decode_query(self, data: bytes) -> DecodedImage:
        """A query image decoded under the ``upload`` limits, or InvalidImageError saying which one it breaks."""
        limits = self.settings.upload
        if len(data) > limits.max_bytes:
            raise InvalidImageError(_too_large(len(data), limits.max_bytes))
        return decode_image(
            data,
            max_pixels=limits.max_pixels,
            formats=tuple(limits.formats),
            draft_side=model_draft_side(self.encoder.input_size),
        )

    def _query_bytes(self, image: bytes | str | Path) -> bytes:
        """The bytes of a query image, a file's size checked before it is read."""
        if not isinstance(image, (str, Path)):
            return image
        limit = self.settings.upload.max_bytes
        try:
            size = Path(image).stat().st_size
            if size > limit:
                raise InvalidImageError(_too_large(size, limit))
            return Path(image).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read the image: {exc.strerror or exc}") from None

    def search_text(self, query: str, k: int | None = None) -> list[SearchHit]:
        """Images best matching a text, with SigLIP's match probability."""
        return self.search(self.query(query).limit(self.result_count(k))).hits

    def search_image(self, image: bytes | str | Path | Image.Image, k: int | None = None) -> list[SearchHit]:
        """Images most similar to a query image."""
        return self.search(self.query(image=image).limit(self.result_count(k))).hits

    def search_similar(self, image_id: int, k: int | None = None) -> list[SearchHit]:
        """ "More like this": neighbours of an image already in the collection, itself excluded."""
        return self.search(self.query(id=_as_id(image_id)).limit(self.result_count(k))).hits

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Raw top-k (id, cosine) for many query vectors at once (evaluation, batch jobs)."""
        return self.collection.search(vectors, k)

    def _hits(self, ranked: Sequence[tuple[int, float]], with_probability: bool) -> list[SearchHit]:
        """Hits for ranked (id, score) pairs, in that order (an image deleted meanwhile is left out)."""
        if not ranked:
            return []
        records = self.collection.get_many([i for i, _ in ranked])
        probabilities = self.encoder.probability(np.array([s for _, s in ranked])) if with_probability else None
        hits = []
        for rank, (image_id, score) in enumerate(ranked):
            record = records.get(image_id)
            if record is None:  # deleted by another process a moment ago
                continue
            hits.append(
                SearchHit(
                    id=record.id,
                    key=record.key,
                    score=round(float(score), 6),
                    probability=None if probabilities is None else round(float(probabilities[rank]), 6),
                    url=self.store.url(record.key),
                    width=record.width,
                    height=record.height,
                    caption=record.caption,
                    source=record.source,
                    metadata=record.metadata,
                    added_at=record.added_at,
                )
            )
        return hits

    def is_confident(self, hits: Sequence[SearchHit]) -> bool:
        """Whether any text hit clears ``search.min_probability`` (else the UI says nothing matched well)."""
        threshold = self.settings.search.min_probability
        return any(h.probability is None or h.probability >= threshold for h in hits)

    def classify(
        self,
        image: bytes | str | Path | Image.Image,
        labels: str | Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """Zero-shot labels for an image, best first: [(label, probability)], the image is never stored.

        SigLIP: an independent sigmoid per label (prompt templates averaged), so several labels can be likely, or
        none. A CLIP checkpoint falls back to a softmax over the labels (see clip_search.evaluation.zeroshot).
        """
        from clip_search.evaluation.zeroshot import classify_vector

        return list(classify_vector(self.encoder, self.embed_image(image), labels, templates).labels)

    # -- adding images ------------------------------------------------------------------------------------------

    def decode(self, data: bytes, *, formats: Sequence[str] | None = None) -> DecodedImage:
        """Decode with this engine's limits; JPEGs decode at reduced scale when that loses nothing the model sees."""
        return decode_image(
            data,
            max_pixels=self.settings.ingest.max_pixels,
            formats=tuple(formats) if formats else None,
            draft_side=model_draft_side(self.encoder.input_size),
        )

    def prepare(
        self,
        data: bytes,
        *,
        source: str | None = None,
        caption: str | None = None,
        metadata: dict[str, Any] | None = None,
        reencode: bool = False,
        formats: Sequence[str] | None = None,
        max_pixels: int | None = None,
    ) -> PreparedImage:
        """Validate and preprocess one image. Thread-safe, so ingest runs it in a pool beside the model.

        The original bytes are kept when a browser can show them, unless ``reencode`` (uploads: strips all
        metadata) or ``storage.web_copy_max_side`` asks for a clean or smaller copy.
        """
        return prepare_image(
            data,
            settings=self.settings,
            input_size=self.encoder.input_size,
            preprocess=self.encoder.preprocess,
            source=source,
            caption=caption,
            metadata=metadata,
            reencode=reencode,
            formats=formats,
            max_pixels=max_pixels,
        )

    def embed(self, items: Sequence[PreparedImage]) -> np.ndarray:
        return self.encoder.encode_pixels(np.stack([item.pixels for item in items]))

    def commit(self, items: Sequence[PreparedImage], vectors: np.ndarray | None = None) -> list[AddResult]:
        """Embed (unless given), store, then commit to the catalog (the commit point).

        Store errors propagate untouched; nothing reaches the catalog for an image whose bytes were not stored.
        """
        if not items:
            return []
        if vectors is None:
            vectors = self.embed(items)
        new: list[tuple[PreparedImage, np.ndarray]] = []
        results: dict[int, AddResult] = {}
        seen: dict[str, int] = {}
        for pos, (item, vector) in enumerate(zip(items, vectors, strict=True)):
            existing = self._find_stored(item)
            if existing is not None:
                results[pos] = _duplicate(item, existing.id, existing.key)
                continue
            if item.sha256 in seen:
                results[pos] = AddResult("duplicate", "same image twice in one batch", source=item.source)
                continue
            seen[item.sha256] = pos
            self.store.put(item.key, item.data, item.content_type)
            new.append((item, vector))
        ids = self.collection.add(
            [
                NewImage(
                    key=item.key,
                    sha256=item.sha256,
                    source_sha256=item.source_sha256,
                    width=item.width,
                    height=item.height,
                    embedding=vector,
                    source=item.source,
                    caption=item.caption,
                    metadata=item.metadata,
                )
                for item, vector in new
            ]
        )
        for (item, _), new_id in zip(new, ids, strict=True):
            pos = seen[item.sha256]
            if new_id is None:  # another process added the same bytes in the meantime
                existing = self.collection.find_by_sha256(item.sha256)
                results[pos] = _duplicate(item, existing.id if existing else None, item.key)
            else:
                results[pos] = AddResult("added", "added", id=new_id, key=item.key, source=item.source)
        return [results[pos] for pos in range(len(items))]

    def add_image(
        self,
        data: bytes,
        *,
        source: str | None = None,
        caption: str | None = None,
        metadata: dict[str, Any] | None = None,
        reencode: bool = False,
    ) -> AddResult:
        """Add one image from its bytes. Invalid images come back as ``rejected`` with the reason."""
        try:
            prepared = self.prepare(data, source=source, caption=caption, metadata=metadata, reencode=reencode)
        except InvalidImageError as exc:
            return AddResult("rejected", str(exc), source=source)
        return self.commit([prepared])[0]

    def upload(self, data: bytes, *, filename: str | None = None, caption: str | None = None) -> AddResult:
        """A visitor's photo: validated under the ``upload`` limits, re-encoded without metadata, de-duplicated.

        Never raises for bad input: a refused file comes back as ``rejected`` with a reason a person can read.
        Nothing of a rejected file is stored anywhere.
        """
        limits = self.settings.upload
        name = Path(filename).name if filename else "upload"
        if len(data) > limits.max_bytes:
            return AddResult("rejected", f"{name}: {_too_large(len(data), limits.max_bytes)}", source=name)
        text = " ".join((caption or "").split())[: limits.max_caption_chars] or None
        try:
            prepared = self.prepare(
                data,
                source="upload",
                caption=text,
                metadata={"filename": name},
                reencode=not limits.keep_metadata,
                formats=limits.formats,
                max_pixels=limits.max_pixels,
            )
        except InvalidImageError as exc:
            return AddResult("rejected", f"{name}: {exc}", source=name)
        existing = self._exact_duplicate(prepared, name)
        if existing is not None:
            return existing
        vector = self.embed([prepared])
        nearest = self.collection.search(vector, 1)[0]
        near = nearest[0] if nearest and nearest[0][1] >= limits.near_duplicate_threshold else None
        if near is not None:
            existing = self._exact_duplicate(prepared, name)  # the same photo may have landed meanwhile
            if existing is not None:
                return existing
        if near is not None and limits.near_duplicate_action == "reject":
            return AddResult(
                "rejected",
                f"{name}: near duplicate of image {near[0]} (similarity {near[1]:.3f}); not added",
                duplicate_of=near[0],
                source=name,
            )
        result = self.commit([prepared], vectors=vector)[0]
        if result.status == "added":
            note = f" (near duplicate of image {near[0]}, similarity {near[1]:.3f})" if near else ""
            result = AddResult(
                "added",
                f"{name}: added as image {result.id}{note}",
                id=result.id,
                key=result.key,
                duplicate_of=near[0] if near else None,
                source=name,
            )
        else:
            result = AddResult(
                result.status,
                f"{name}: {result.message}",
                id=result.id,
                key=result.key,
                duplicate_of=result.duplicate_of,
                source=name,
            )
        return result

    def _find_stored(self, item: PreparedImage) -> ImageRecord | None:
        """The image whose stored or original bytes match ``item``'s (either hash), if the collection has it."""
        return self.collection.find_by_sha256(item.sha256, item.source_sha256)

    def _exact_duplicate(self, prepared: PreparedImage, name: str) -> AddResult | None:
        existing = self._find_stored(prepared)
        if existing is None:
            return None
        return AddResult(
            "duplicate",
            f"{name}: already in the collection as image {existing.id}",
            id=existing.id,
            key=existing.key,
            duplicate_of=existing.id,
            source=name,
        )

    def upload_many(self, files: Sequence[tuple[str | None, bytes]], *, caption: str | None = None) -> list[AddResult]:
        """Several uploads in one request, at most ``upload.max_files``; each file gets its own result."""
        limit = self.settings.upload.max_files
        results = [self.upload(data, filename=name, caption=caption) for name, data in files[:limit]]
        results.extend(
            AddResult(
                "rejected",
                f"{Path(name).name if name else 'upload'}: too many files in one request (at most {limit})",
                source=name,
            )
            for name, _ in files[limit:]
        )
        return results

    def delete(self, image_id: int) -> ImageRecord:
        """Remove an image's row (the commit point, seen by every replica), then its bytes from the store."""
        record = self.collection.remove(_as_id(image_id))
        if record is None:
            raise NotFoundError(f"no image with id {image_id} in the collection")
        try:
            self.store.delete(record.key)
        except ClipSearchError:
            log.warning("image %s left in the store under %s; it is no longer indexed", image_id, record.key)
        return record

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.collection.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duplicate(item: PreparedImage, existing_id: int | None, existing_key: str | None) -> AddResult:
    return AddResult(
        "duplicate",
        f"already in the collection as image {existing_id}" if existing_id is not None else "already stored",
        id=existing_id,
        key=existing_key,
        duplicate_of=existing_id,
        source=item.source,
    )


def _too_large(size: int, limit: int) -> str:
    return f"file too large ({size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB)"


def _as_id(image_id: object) -> int:
    """An image id from what a caller passed (int, float or text), or NotFoundError: never a traceback."""
    try:
        value = int(image_id)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise NotFoundError(f"no image with id {image_id} in the collection") from None
    if not 0 < value < 2**63:
        raise NotFoundError(f"no image with id {image_id} in the collection")
    return value
