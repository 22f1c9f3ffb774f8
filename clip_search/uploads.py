"""A stranger's photo, from bytes to a row: the rules of :meth:`SearchEngine.upload` in order.

1. the ``upload`` limits (size, formats, pixels), a re-encoded copy without metadata;
2. an exact copy of a photo the collection holds is not added twice (only rows the uploader may own count: a
   stranger's private photo is never a "duplicate", so it is never revealed);
3. the content check (:mod:`clip_search.moderation`): a flagged photo is refused, or stored *held* (seen by no one
   until an admin approves it);
4. a near duplicate among the photos the uploader can see is refused or noted;
5. the row is committed with its visibility (public, private to the owner of a visitor key, or held), the hash
   of a fresh delete code, the uploader's client id and the check's score. The delete code goes back in the
   result, once; it is never logged.

A private photo is stored under a key with 128 random bits (``images/private/<random>.<ext>``) instead of its
content hash, so its URL cannot be guessed from the photo, and only a search carrying its key ever gets that URL.
A held photo is stored there too: before an admin approves it nobody can fetch it by its content's key, and a
crash between storing it and committing its row never lets ``storage sync`` index it as public.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clip_search.adding import AddResult, PreparedImage, UploadFields, duplicate_result, too_large
from clip_search.collection.records import owned_image_id
from clip_search.collection.visibility import HELD, PRIVATE, PUBLIC, PUBLIC_VIEWER, owned_by
from clip_search.errors import InvalidImageError
from clip_search.store import private_key
from clip_search.visitor_keys import new_delete_code, normalized_key, owner_hash

if TYPE_CHECKING:
    from clip_search.engine import SearchEngine

log = logging.getLogger(__name__)


def upload_photo(
    engine: SearchEngine,
    data: bytes,
    *,
    filename: str | None = None,
    caption: str | None = None,
    owner_key: str | None = None,
    client: str | None = None,
) -> AddResult:
    """See the module docstring. Never raises for bad input: a refused file comes back ``rejected`` with a
    reason a person can read, and nothing of it is stored anywhere."""
    limits = engine.settings.upload
    name = Path(filename).name if filename else "upload"
    if len(data) > limits.max_bytes:
        return AddResult("rejected", f"{name}: {too_large(len(data), limits.max_bytes)}", source=name)
    owner, problem = _owner(engine, owner_key)
    if problem:
        return AddResult("rejected", f"{name}: {problem}", source=name)
    try:
        prepared = engine.prepare(
            data,
            source="upload",
            caption=" ".join((caption or "").split())[: limits.max_caption_chars] or None,
            metadata={"filename": name},
            reencode=not limits.keep_metadata,
            formats=limits.formats,
            max_pixels=limits.max_pixels,
        )
    except InvalidImageError as exc:
        return AddResult("rejected", f"{name}: {exc}", source=name)
    existing = _exact_copy(engine, prepared, name, owner)
    if existing is not None:
        return existing
    vector = engine.embed([prepared])
    verdict = (
        engine.moderator.check(vector[0], prepared.data, prepared.content_type) if engine.moderator.enabled else None
    )
    if verdict is not None and verdict.flagged and engine.settings.moderation.action == "reject":
        log.info("an upload was refused by the content check (score %.3f)", verdict.score)
        return AddResult("rejected", f"{name}: refused by this site's content check", source=name)
    held = verdict is not None and verdict.flagged
    fields = UploadFields(
        visibility=HELD if held else PRIVATE if owner else PUBLIC,
        owner_hash=owner,
        client_id=client,
        moderation_score=verdict.score if verdict is not None else None,
    )
    return _add(engine, prepared, vector, fields, name)


def _owner(engine: SearchEngine, owner_key: str | None) -> tuple[str | None, str | None]:
    """(the owner hash of a private upload's key, or a reason to refuse it)."""
    if owner_key is None:
        return None, None
    key = normalized_key(owner_key)
    privacy = engine.settings.privacy
    if not privacy.allow_private:
        return None, "private photos are switched off here"
    if key is None or len(key) < privacy.min_passphrase_chars:
        return None, (
            f"a key for private photos needs at least {privacy.min_passphrase_chars} characters "
            "(or leave it empty to get one generated)"
        )
    return owner_hash(key), None


def _exact_copy(engine: SearchEngine, prepared: PreparedImage, name: str, owner: str | None) -> AddResult | None:
    existing = engine.collection.find_by_sha256(prepared.sha256, prepared.source_sha256, owner_hash=owner)
    return None if existing is None else duplicate_result(existing, name, prefix=f"{name}: ")


def _add(
    engine: SearchEngine, prepared: PreparedImage, vector: np.ndarray, fields: UploadFields, name: str
) -> AddResult:
    """Near-duplicate check, then the commit with the upload's columns and a new delete code's hash."""
    limits = engine.settings.upload
    owner = fields.owner_hash
    viewer = owned_by(owner) if owner else PUBLIC_VIEWER
    nearest = engine.collection.nearest(vector, viewer=viewer)
    near = nearest if nearest is not None and nearest[1] >= limits.near_duplicate_threshold else None
    if near is not None:
        existing = _exact_copy(engine, prepared, name, owner)  # the same photo may have landed meanwhile
        if existing is not None:
            return existing
        if limits.near_duplicate_action == "reject":
            return AddResult(
                "rejected",
                f"{name}: near duplicate of image {near[0]} (similarity {near[1]:.3f}); not added",
                duplicate_of=near[0],
                source=name,
            )
    code, code_hash = new_delete_code(owned_image_id(prepared.sha256, owner))
    upload = replace(fields, delete_hash=code_hash)
    unlisted = owner is not None or upload.visibility == HELD  # never at a key its content gives away
    stored = replace(prepared, upload=upload, store_key=private_key(prepared.ext) if unlisted else None)
    result = engine.commit([stored], vectors=vector, looked_up=True)[0]
    if result.status != "added":
        return replace(result, message=f"{name}: {result.message}", source=name)
    note = f" (near duplicate of image {near[0]}, similarity {near[1]:.3f})" if near else ""
    return replace(
        result,
        message=f"{name}: {_added(result.id, upload.visibility)}{note}",
        duplicate_of=near[0] if near else None,
        source=name,
        delete_code=code,
    )


def _added(image_id: int | None, visibility: str) -> str:
    if visibility == HELD:
        return f"received as image {image_id}; it is held for review and appears once an admin approves it"
    if visibility == PRIVATE:
        return f"added as private image {image_id}: only searches with your key find it"
    return f"added as image {image_id}"
