"""What one image of the collection is: its row without the vector, and what adding one needs.

Ids are derived from the stored bytes' sha256 (its first 53 bits), so replicas and bulk jobs that never talk to
each other agree on every image's id, the same photo gets the same id everywhere, and an id fits exactly in a
JavaScript number (the browser gets ids as JSON). Two different photos share an id with probability ~N²/2⁵⁴
(5e-5 at a million images); the table refuses the second one with a clear error rather than mixing them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ID_BITS = 53


def image_id(sha256: str) -> int:
    """The image id of stored bytes with this sha256 (hex): a positive integer below 2**53."""
    return int(sha256[:14], 16) >> (56 - ID_BITS)


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

    @property
    def id(self) -> int:
        return image_id(self.sha256)
