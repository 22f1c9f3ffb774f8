"""The engine: what the CLI, the notebooks and the app call. It knows nothing of Gradio.

It ties the pieces together: an :class:`Encoder` for text and images, a :class:`Collection` (the Lance table
and the FAISS index derived from it) and an :class:`ImageStore`. Images enter through :meth:`SearchEngine.prepare`
(decode, choose the bytes to store, preprocess for the model) and :meth:`SearchEngine.commit` (embed, store the
bytes, then commit the row: the commit point). A visitor's photo enters through :meth:`SearchEngine.upload`, which
adds the rules for strangers: the content check, private photos and delete codes (see :mod:`clip_search.uploads`).

Every read is for a viewer: the public unless a visitor key says otherwise (:meth:`SearchEngine.viewer`), so
private and held photos never reach a search, a count or a lookup of someone who may not see them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_search.adding import AddResult, PreparedImage, duplicate_result, too_large
from clip_search.collection import Collection, ImageRecord, NewImage
from clip_search.collection.bf16_scan import set_batch_scan
from clip_search.collection.location import open_collection
from clip_search.collection.migrate import migrate_legacy
from clip_search.collection.scan import set_search_threads
from clip_search.collection.visibility import (  # Viewer and the visibilities are the engine's API too
    HELD,
    OPERATOR,
    PRIVATE,
    PUBLIC,
    PUBLIC_VIEWER,
    Viewer,
    owned_by,
    sql_text,
)
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
from clip_search.moderation import Moderator
from clip_search.search import Query, QueryRunner, SearchHit, SearchPage
from clip_search.search.query import Part
from clip_search.store import ImageStore, LocalImageStore
from clip_search.uploads import upload_photo
from clip_search.urlfetch import fetch_url
from clip_search.visitor_keys import delete_code_matches, normalized_key, owner_hash, parse_delete_code

log = logging.getLogger(__name__)

NO_SUCH_CODE = "no photo matches this delete code"

__all__ = [
    "HELD",
    "OPERATOR",
    "PRIVATE",
    "PUBLIC",
    "PUBLIC_VIEWER",
    "AddResult",
    "ImageRecord",
    "PreparedImage",
    "SearchEngine",
    "SearchHit",
    "Viewer",
    "owned_by",
]


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
        set_batch_scan(settings.index.batch_scan)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.collection: Collection = open_collection(settings, model=self.encoder.name)
        migrate_legacy(settings, self.collection, self.store)
        self.moderator = Moderator(settings.moderation, self.encoder)
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

    def count(self, viewer: Viewer = PUBLIC_VIEWER) -> int:
        """How many images ``viewer`` can find (the public by default)."""
        return self.collection.count(viewer)

    def stats(self) -> dict[str, Any]:
        """The operator's facts: public images, and how many are private or held for review."""
        hidden = self.collection.hidden_counts()
        return {
            "images": self.count(),
            "private": hidden["private"],
            "held": hidden["held"],
            "model": self.settings.model.id,
            "model_signature": self.encoder.name,
            "dim": self.collection.dim,
            "store": self.store.describe(),
            "data_dir": str(self.settings.data_dir),
        }

    def get(self, image_id: int, viewer: Viewer = PUBLIC_VIEWER) -> ImageRecord:
        """An image ``viewer`` may see; a hidden one is "not found", exactly like a missing one."""
        record = self.collection.get(_as_id(image_id), viewer)
        if record is None:
            raise NotFoundError(f"no image with id {image_id} in the collection")
        return record

    def get_many(self, image_ids: Sequence[int], viewer: Viewer = PUBLIC_VIEWER) -> dict[int, ImageRecord]:
        """Several images by id in one lookup (the app rebuilds a results page from ids); missing ones, and those
        ``viewer`` may not see, left out."""
        return self.collection.get_many([_as_id(i) for i in image_ids], viewer)

    def viewer(self, key: str | None) -> Viewer:
        """Who a request is for: the public, or the owner of a visitor key (whose private photos it also finds).
        Any key is accepted: a key nobody uploaded with simply finds no private photo."""
        key = normalized_key(key)
        return owned_by(owner_hash(key)) if key else PUBLIC_VIEWER

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

    def embed_part(self, part: Part, viewer: Viewer = PUBLIC_VIEWER) -> np.ndarray:
        """The unit vector of one part of a query: a text, an image, an image URL or a collection image (one
        ``viewer`` may see: someone else's private photo is "not found", like a missing one)."""
        if part.kind == "text":
            return self.embed_text(part.value)
        if part.kind == "id":
            vector = self.collection.embedding(_as_id(part.value), viewer)
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
        key: str | None = None,
    ) -> Query:
        """A query bound to this engine, to be narrowed and run: ``engine.query("beach").minus("people").run()``.

        With no argument it starts empty (add parts with ``.plus``/``.minus``, or browse with ``.where`` and
        ``.sort_by("newest")``). With a visitor ``key`` it also finds that visitor's private photos.
        """
        empty = Query(runner=self, viewer=self.viewer(key))
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
            raise InvalidImageError(too_large(len(data), limits.max_bytes))
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
                raise InvalidImageError(too_large(size, limit))
            return Path(image).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read the image: {exc.strerror or exc}") from None

    def search_text(self, query: str, k: int | None = None, *, key: str | None = None) -> list[SearchHit]:
        """Images best matching a text, with SigLIP's match probability."""
        return self.search(self.query(query, key=key).limit(self.result_count(k))).hits

    def search_image(
        self, image: bytes | str | Path | Image.Image, k: int | None = None, *, key: str | None = None
    ) -> list[SearchHit]:
        """Images most similar to a query image."""
        return self.search(self.query(image=image, key=key).limit(self.result_count(k))).hits

    def search_similar(self, image_id: int, k: int | None = None, *, key: str | None = None) -> list[SearchHit]:
        """ "More like this": neighbours of an image already in the collection, itself excluded."""
        return self.search(self.query(id=_as_id(image_id), key=key).limit(self.result_count(k))).hits

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Raw top-k (id, cosine) of the public images for many query vectors at once (evaluation, batch jobs)."""
        return self.collection.search(vectors, k)

    def _hits(
        self, ranked: Sequence[tuple[int, float]], with_probability: bool, viewer: Viewer = PUBLIC_VIEWER
    ) -> list[SearchHit]:
        """Hits for ranked (id, score) pairs, in that order (an image deleted meanwhile is left out)."""
        if not ranked:
            return []
        records = self.collection.get_many([i for i, _ in ranked], viewer)
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
                    visibility=record.visibility,
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

    def commit(
        self, items: Sequence[PreparedImage], vectors: np.ndarray | None = None, *, looked_up: bool = False
    ) -> list[AddResult]:
        """Embed (unless given), store, then commit to the catalog (the commit point). ``looked_up``: the caller
        has just looked for stored copies (an upload, before its forward), so the table is not read again; a copy
        committed by another process in between is still found by the collection (same id) or counted once.

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
            existing = None if looked_up else self._find_stored(item)
            if existing is not None:
                results[pos] = duplicate_result(existing, item.source)
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
                    **(asdict(item.upload) if item.upload else {}),
                )
                for item, vector in new
            ]
        )
        for (item, _), new_id in zip(new, ids, strict=True):
            pos = seen[item.sha256]
            if new_id is None:  # another process added the same bytes in the meantime
                if item.store_key:
                    self.store.delete(item.key)  # our own copy under a fresh private key is nobody's
                existing = self.collection.find_by_sha256(item.sha256, owner_hash=item.owner_hash)
                results[pos] = duplicate_result(existing, item.source)
            else:
                visibility = item.upload.visibility if item.upload else None
                results[pos] = AddResult(
                    "added", "added", id=new_id, key=item.key, source=item.source, visibility=visibility
                )
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

    def upload(
        self,
        data: bytes,
        *,
        filename: str | None = None,
        caption: str | None = None,
        owner_key: str | None = None,
        client: str | None = None,
    ) -> AddResult:
        """A visitor's photo: validated under the ``upload`` limits, re-encoded without metadata, de-duplicated,
        checked (``moderation``), then public, or private to whoever holds ``owner_key``, or held for review.
        ``client`` is the uploader's client id (see :func:`clip_search.visitor_keys.client_id`). An added photo's
        result carries its delete code, given nowhere else (see :mod:`clip_search.uploads`).

        Never raises for bad input: a refused file comes back as ``rejected`` with a reason a person can read.
        Nothing of a rejected file is stored anywhere.
        """
        return upload_photo(self, data, filename=filename, caption=caption, owner_key=owner_key, client=client)

    def _find_stored(self, item: PreparedImage) -> ImageRecord | None:
        """The image whose stored or original bytes match ``item``'s (either hash), if the collection has it
        among the rows ``item`` counts as a copy of (never a stranger's private photo)."""
        return self.collection.find_by_sha256(item.sha256, item.source_sha256, owner_hash=item.owner_hash)

    def upload_many(
        self,
        files: Sequence[tuple[str | None, bytes]],
        *,
        caption: str | None = None,
        owner_key: str | None = None,
        client: str | None = None,
    ) -> list[AddResult]:
        """Several uploads in one request, at most ``upload.max_files``; each file gets its own result."""
        limit = self.settings.upload.max_files
        results = [
            self.upload(data, filename=name, caption=caption, owner_key=owner_key, client=client)
            for name, data in files[:limit]
        ]
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
        deleted = self.delete_many([_as_id(image_id)])
        if not deleted:
            raise NotFoundError(f"no image with id {image_id} in the collection")
        return deleted[0]

    def delete_many(self, image_ids: Sequence[int]) -> list[ImageRecord]:
        """Remove several images in one commit (missing ids ignored), then their bytes; returns the rows removed."""
        records = self.collection.remove_many([int(i) for i in image_ids if _is_id(i)])
        for record in records:
            try:
                self.store.delete(record.key)
            except ClipSearchError:
                log.warning("image %s left in the store under %s; it is no longer indexed", record.id, record.key)
        return records

    def delete_mine(self, code: str | None) -> ImageRecord:
        """An uploader takes a photo back with its delete code: from the store, the table and (through the table)
        every replica. A wrong, malformed or someone else's code, and the code of a photo already gone, all get the
        same NotFoundError. The code is compared hashed, in constant time, and never logged."""
        parsed = parse_delete_code(code)
        image_id, secret = parsed if parsed else (0, "")
        stored = self.collection.delete_hash(image_id) if parsed else None
        if not delete_code_matches(secret, stored):
            raise NotFoundError(NO_SUCH_CODE)
        deleted = self.delete_many([image_id])
        if not deleted:  # deleted by someone else a moment ago
            raise NotFoundError(NO_SUCH_CODE)
        log.info("image %s deleted by its uploader", image_id)
        return deleted[0]

    # -- review and admin -----------------------------------------------------------------------------------------

    def held(self, limit: int | None = None) -> list[ImageRecord]:
        """Uploads waiting for review, newest first (the operator's view: ``python -m clip_search review``)."""
        return self._records_in_order(self.collection.newest_ids(f"visibility = '{HELD}'", limit))

    def approve(self, image_ids: Sequence[int]) -> list[int]:
        """Held uploads become visible (public, or private to their owner); returns the ids approved."""
        return self.collection.approve([_as_id(i) for i in image_ids])

    def reject(self, image_ids: Sequence[int]) -> list[ImageRecord]:
        """Held uploads are deleted (store and table); ids that are not held are left alone."""
        return self.delete_many([i for i in map(_as_id, image_ids) if self.collection.is_held(i)])

    def uploads(self, limit: int | None = 50, *, client: str | None = None) -> list[ImageRecord]:
        """Visitors' uploads, newest first, whatever their visibility, with their moderation score and client id;
        ``client`` keeps one uploader's."""
        where = "source = 'upload'" + (f" AND client_id = {sql_text(client)}" if client else "")
        return self._records_in_order(self.collection.newest_ids(where, limit))

    def _records_in_order(self, image_ids: list[int]) -> list[ImageRecord]:
        records = self.collection.get_many(image_ids, OPERATOR)
        return [records[i] for i in image_ids if i in records]

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.collection.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_id(image_id: object) -> bool:
    try:
        _as_id(image_id)
    except NotFoundError:
        return False
    return True


def _as_id(image_id: object) -> int:
    """An image id from what a caller passed (int, float or text), or NotFoundError: never a traceback."""
    try:
        value = int(image_id)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise NotFoundError(f"no image with id {image_id} in the collection") from None
    if not 0 < value < 2**63:
        raise NotFoundError(f"no image with id {image_id} in the collection")
    return value
