"""What adding an image involves: the image ready to store, a visitor upload's extra columns, and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clip_search.collection import ImageRecord
from clip_search.collection.visibility import HELD, PRIVATE
from clip_search.store import content_key


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
    store_key: str | None = None  # a private photo's unguessable key; None: the content-hash key
    upload: UploadFields | None = None  # a visitor's photo: who may see it, who may take it back

    @property
    def key(self) -> str:
        return self.store_key or content_key(self.sha256, self.ext)

    @property
    def owner_hash(self) -> str | None:
        return self.upload.owner_hash if self.upload else None


@dataclass(frozen=True)
class UploadFields:
    """The columns a visitor's upload adds to its row (see :mod:`clip_search.collection.table`)."""

    visibility: str
    owner_hash: str | None = None
    delete_hash: str | None = None
    client_id: str | None = None
    moderation_score: float | None = None


@dataclass(frozen=True)
class AddResult:
    """What happened to one image offered to the collection."""

    status: Literal["added", "duplicate", "rejected"]
    message: str
    id: int | None = None
    key: str | None = None
    duplicate_of: int | None = None
    source: str | None = None
    visibility: str | None = None  # of an added upload: public, private or held
    delete_code: str | None = field(default=None, repr=False)  # an added upload's, shown once, never logged


def duplicate_result(existing: ImageRecord | None, source: str | None, prefix: str = "") -> AddResult:
    """A photo the collection already holds. A held one is named by nothing (no id, no key): it is not shown to
    anyone yet; a private one is the uploader's own (only those count as copies)."""
    if existing is None:
        return AddResult("duplicate", f"{prefix}already stored", source=source)
    if existing.visibility == HELD:
        return AddResult("duplicate", f"{prefix}already received and waiting for review", source=source)
    where = "among your private photos" if existing.visibility == PRIVATE else "in the collection"
    return AddResult(
        "duplicate",
        f"{prefix}already {where} as image {existing.id}",
        id=existing.id,
        key=existing.key,
        duplicate_of=existing.id,
        source=source,
    )


def too_large(size: int, limit: int) -> str:
    return f"file too large ({size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB)"
