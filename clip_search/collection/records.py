"""What one image of the collection is: its row without the vector, and what adding one needs.

Ids are derived from the stored bytes' sha256 (its first 53 bits), so replicas and bulk jobs that never talk to
each other agree on every image's id, the same photo gets the same id everywhere, and an id fits exactly in a
JavaScript number (the browser gets ids as JSON). Two different photos share an id with probability ~N²/2⁵⁴
(5e-5 at a million images); the table refuses the second one with a clear error rather than mixing them up.

A private photo's id is derived from its bytes *and* its owner's key hash instead: the same photo kept privately by
two visitors, or private and public at once, is two rows that never collide, and its id says nothing of its content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ID_BITS = 53


def image_id(sha256: str) -> int:
    """The image id of stored bytes with this sha256 (hex): a positive integer below 2**53."""
    return int(sha256[:14], 16) >> (56 - ID_BITS)


def owned_image_id(sha256: str, owner_hash: str | None) -> int:
    """The id of stored bytes kept by an owner (a private photo), or the plain content id without one."""
    if owner_hash is None:
        return image_id(sha256)
    return image_id(hashlib.sha256(f"{sha256}:{owner_hash}".encode()).hexdigest())


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class ImageRecord:
    """A row of the collection without its vector."""

    id: int
    key: str
    sha256: str
    source_sha256: str | None
    width: int
    height: int
    source: str | None
    caption: str | None
    metadata: dict[str, Any]
    added_at: str  # ISO 8601, UTC
    visibility: str = "public"  # public, private or held (clip_search.collection.visibility)
    client_id: str | None = None  # the uploader's pseudonymous client id (visitors' uploads only)
    moderation_score: float | None = None  # the upload check's score (None: not checked, e.g. ingested)

    def upload_facts(self) -> dict[str, Any]:
        """What an admin listing shows of an upload (the CLI's and the app's): visibility, score, client id."""
        return {
            "id": self.id,
            "added_at": self.added_at,
            "visibility": self.visibility,
            "moderation_score": self.moderation_score,
            "client_id": self.client_id,
            "filename": self.metadata.get("filename"),
            "caption": self.caption,
        }


@dataclass
class NewImage:
    """What :meth:`Collection.add` needs to add one image (its bytes already in the store)."""

    key: str
    sha256: str
    width: int
    height: int
    embedding: np.ndarray
    source_sha256: str | None = None
    source: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    added_at: str | None = None  # now, unless kept from elsewhere (a migrated row)
    visibility: str | None = None  # None is public
    owner_hash: str | None = None  # a private (or held private) photo's owner
    delete_hash: str | None = None
    client_id: str | None = None
    moderation_score: float | None = None

    @property
    def id(self) -> int:
        return owned_image_id(self.sha256, self.owner_hash)
