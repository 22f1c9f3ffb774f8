"""What a search gives back: hits (one image each) and a page of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SearchHit:
    """One result: what it is, how close, and where a browser can fetch it."""

    id: int
    key: str
    score: float  # cosine similarity in [-1, 1] with the query's vector
    probability: float | None  # SigLIP match probability, only for a query of one text (None otherwise, and CLIP)
    url: str
    width: int
    height: int
    caption: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    added_at: str | None = None
    visibility: str = "public"  # "private" for the key holder's own private photos

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchPage:
    """One page of results and what is needed to ask for the next one.

    ``total`` is the number of images the query can show at all where it is known (an order by date, a browse);
    None for an order by relevance, whose results simply run out. ``confident`` is False when a query of one text
    found nothing above ``search.min_probability`` (the app then says that nothing matched well).
    """

    hits: list[SearchHit]
    start: int
    k: int
    has_more: bool
    total: int | None = None
    confident: bool = True
    query: dict[str, Any] = field(default_factory=dict)

    @property
    def next_start(self) -> int | None:
        return self.start + self.k if self.has_more else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": [h.to_dict() for h in self.hits],
            "start": self.start,
            "k": self.k,
            "has_more": self.has_more,
            "next_start": self.next_start,
            "total": self.total,
            "confident": self.confident,
            "query": self.query,
        }
