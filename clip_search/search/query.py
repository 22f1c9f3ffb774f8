"""One query model for every front end: a weighted sum of parts, feedback, filters, an order and a page.

A query reads as a sentence and never changes in place (each step returns a new query)::

    engine.query("sunset beach").plus("ocean waves", weight=0.5).minus("people") \\
        .like(40, 41).unlike(7).where(after="2026-01-01", source="upload").sort_by("newest").limit(12).page(2).run()

The arithmetic lives in :mod:`clip_search.search.arithmetic`, the filters in :mod:`clip_search.search.filters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from clip_search.collection.visibility import PUBLIC_VIEWER, Viewer
from clip_search.errors import EmptyQueryError, InvalidQueryError, NotFoundError
from clip_search.search.filters import Filters

if TYPE_CHECKING:
    from PIL import Image

    from clip_search.search.results import SearchPage

PartKind = Literal["text", "image", "url", "id"]
Order = Literal["relevance", "newest", "oldest"]
ORDERS: tuple[str, ...] = get_args(Order)
MAX_PARTS = 16
MAX_FEEDBACK = 200


class Runner(Protocol):
    def search(self, query: Query) -> SearchPage: ...


@dataclass(frozen=True)
class Part:
    """One term: a text, an image (bytes, a path or a PIL image), an image URL, or an image of the collection by
    id. A negative weight subtracts the term ("-people")."""

    kind: PartKind
    value: Any = field(repr=False)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight == 0:
            raise InvalidQueryError(f"a part's weight must be a non-zero number, got {self.weight}")
        if self.kind == "text" and (not isinstance(self.value, str) or not self.value.strip()):
            raise EmptyQueryError("a text part of the query is empty: type a few words")

    def describe(self) -> str:
        sign = "-" if self.weight < 0 else "+"
        weight = f"{abs(self.weight):g}*" if abs(self.weight) != 1 else ""
        shown = {"text": f'"{self.value}"', "id": f"image {self.value}", "url": "an image URL"}.get(
            self.kind, "an image"
        )
        return f"{sign} {weight}{shown}"


@dataclass(frozen=True)
class Query:
    """What to look for (parts, feedback), among which images (filters), in what order, which page.

    Each builder method returns a new query; :meth:`run` hands it to the engine that made it.
    """

    parts: tuple[Part, ...] = ()
    liked: tuple[int, ...] = ()
    disliked: tuple[int, ...] = ()
    filters: Filters = field(default_factory=Filters)
    order: Order = "relevance"
    k: int | None = None
    start: int = 0
    viewer: Viewer = PUBLIC_VIEWER  # whose private photos it may find (never part of its JSON)
    runner: Runner | None = field(default=None, compare=False, repr=False)

    # -- building -------------------------------------------------------------------------------------------------

    def plus(
        self,
        text: str | None = None,
        *,
        image: bytes | str | Path | Image.Image | None = None,
        url: str | None = None,
        id: int | None = None,
        weight: float = 1.0,
    ) -> Query:
        """Add a term: exactly one of a text, an image, an image URL or a collection image's id."""
        given = [(kind, value) for kind, value in (("text", text), ("image", image), ("url", url), ("id", id))]
        given = [(kind, value) for kind, value in given if value is not None]
        if len(given) != 1:
            raise InvalidQueryError("each part of a query is one of: a text, an image, an image URL, an image id")
        if len(self.parts) >= MAX_PARTS:
            raise InvalidQueryError(f"a query has at most {MAX_PARTS} parts")
        kind, value = given[0]
        value = _as_id(value) if kind == "id" else value
        return replace(self, parts=(*self.parts, Part(kind, value, float(weight))))  # type: ignore[arg-type]

    def minus(
        self,
        text: str | None = None,
        *,
        image: bytes | str | Path | Image.Image | None = None,
        url: str | None = None,
        id: int | None = None,
        weight: float = 1.0,
    ) -> Query:
        """Subtract a term: results move away from it ("beach" minus "people")."""
        return self.plus(text, image=image, url=url, id=id, weight=-abs(float(weight)))

    def like(self, *image_ids: int) -> Query:
        """Mark results as good (relevance feedback); marks of earlier rounds are kept."""
        return self._feedback(liked=image_ids)

    def unlike(self, *image_ids: int) -> Query:
        """Mark results as bad (relevance feedback); they are also left out of the results."""
        return self._feedback(disliked=image_ids)

    def _feedback(self, *, liked: tuple[int, ...] = (), disliked: tuple[int, ...] = ()) -> Query:
        """The latest mark of an image wins: a result marked good, then bad, counts as bad."""
        new_good, new_bad = [_as_id(i) for i in liked], [_as_id(i) for i in disliked]
        good = tuple(dict.fromkeys([*(i for i in self.liked if i not in new_bad), *new_good]))
        bad = tuple(dict.fromkeys([*(i for i in self.disliked if i not in new_good), *new_bad]))
        if len(good) + len(bad) > MAX_FEEDBACK:
            raise InvalidQueryError(f"at most {MAX_FEEDBACK} results can be marked good or bad")
        return replace(self, liked=good, disliked=bad)

    def where(self, **conditions: Any) -> Query:
        """Keep only images that match: after, before, source, caption, orientation, min_width, min_height."""
        return replace(self, filters=self.filters.narrowed(**conditions))

    def sort_by(self, order: str) -> Query:
        """``relevance`` (best first), ``newest`` or ``oldest`` (among the good matches, or every image that
        passes the filters when the query has no parts)."""
        if order not in ORDERS:
            raise InvalidQueryError(f"sort must be one of {', '.join(ORDERS)}, not {order!r}")
        return replace(self, order=order)  # type: ignore[arg-type]

    def seen_by(self, viewer: Viewer) -> Query:
        """The same query for a viewer who may see more than the public (a visitor key's owner: see
        :meth:`clip_search.engine.SearchEngine.viewer`)."""
        return replace(self, viewer=viewer)

    def limit(self, k: int) -> Query:
        """Results per page."""
        return replace(self, k=_positive(k, "the number of results"))

    def offset(self, n: int) -> Query:
        """Skip the first ``n`` results (page 2 of 12 is offset 12)."""
        value = _whole(n, "the offset")
        return replace(self, start=value)

    def page(self, number: int) -> Query:
        """Page ``number`` (from 1) of :meth:`limit` results; call after ``limit``."""
        number = _positive(number, "the page number")
        if self.k is None:
            raise InvalidQueryError("set the page size with .limit(k) before .page(n)")
        return replace(self, start=(number - 1) * self.k)

    def run(self) -> SearchPage:
        if self.runner is None:
            raise InvalidQueryError("this query is not bound to an engine: use engine.query(...) or engine.search(q)")
        return self.runner.search(self)

    # -- facts ----------------------------------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """No parts and no feedback: a browse of the (filtered) collection by date."""
        return not self.parts and not self.liked and not self.disliked

    @property
    def has_probability(self) -> bool:
        """SigLIP's match probability is defined for one positive text and nothing else."""
        return (
            len(self.parts) == 1
            and self.parts[0].kind == "text"
            and self.parts[0].weight > 0
            and not (self.liked or self.disliked)
        )

    def excluded_ids(self) -> tuple[int, ...]:
        """Images the results leave out: those used as terms (an image is its own best match) and bad ones."""
        return tuple(dict.fromkeys([*(p.value for p in self.parts if p.kind == "id"), *self.disliked]))

    def to_dict(self) -> dict[str, Any]:
        """The query as JSON-ready data (an image given as bytes or a path shows as ``{"image": true}``)."""
        parts = [{p.kind: p.value if p.kind in ("text", "url", "id") else True, "weight": p.weight} for p in self.parts]
        out: dict[str, Any] = {"parts": parts, "sort": self.order, "offset": self.start}
        if self.k is not None:
            out["k"] = self.k
        if self.liked or self.disliked:
            out.update(like=list(self.liked), unlike=list(self.disliked))
        if not self.filters.is_empty:
            out["filters"] = self.filters.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, image: Any = None, runner: Runner | None = None) -> Query:
        """A query from JSON (the ``/query`` endpoint, ``--json`` files). An uploaded ``image`` becomes a part
        weighted by ``image_weight`` (1 by default). Server paths are never accepted from JSON: images come as an
        upload, a URL or a collection id. See the README for the format."""
        if not isinstance(data, dict):
            raise InvalidQueryError('the query must be a JSON object, e.g. {"text": "a dog on a beach"}')
        unknown = sorted(set(data) - _JSON_KEYS)
        if unknown:
            raise InvalidQueryError(f"unknown query field {', '.join(unknown)}: use {', '.join(sorted(_JSON_KEYS))}")
        query = cls(runner=runner)
        for text in _texts(data.get("text")):
            query = query.plus(text)
        for text in _texts(data.get("minus")):
            query = query.minus(text)
        for part in _list(data.get("parts"), "parts"):
            query = query.plus(**_json_part(part))
        if image is not None:
            query = query.plus(image=image, weight=_weight(data.get("image_weight", 1.0)))
        query = query.like(*_list(data.get("like"), "like")).unlike(*_list(data.get("unlike"), "unlike"))
        filters = data.get("filters") or {}
        if not isinstance(filters, dict):
            raise InvalidQueryError('"filters" must be an object, e.g. {"after": "2026-01-01", "source": "upload"}')
        query = query.where(**filters).sort_by(str(data.get("sort") or "relevance"))
        if data.get("k") is not None:
            query = query.limit(data["k"])
        if data.get("page") is not None:
            query = query.limit(query.k or data.get("k") or 12).page(data["page"])
        elif data.get("offset") is not None:
            query = query.offset(data["offset"])
        return query

    def describe(self) -> str:
        terms = " ".join(p.describe() for p in self.parts).removeprefix("+ ")
        marks = f" (feedback: {len(self.liked)} good, {len(self.disliked)} bad)" if self.liked or self.disliked else ""
        return (terms or "every image") + marks


_JSON_KEYS = {"text", "minus", "parts", "image_weight", "like", "unlike", "filters", "sort", "k", "page", "offset"}


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidQueryError(f'"{name}" must be a list')
    return value


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    texts = [value] if isinstance(value, str) else _list(value, "text")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidQueryError('"text" and "minus" take a text or a list of texts')
    return texts


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidQueryError(f"a weight is a number such as 2 or -0.5, not {value!r}")
    return float(value)


def _json_part(part: Any) -> dict[str, Any]:
    """``{"text": ...}``, ``{"url": ...}`` or ``{"id": ...}``, with an optional ``"weight"`` (negative: minus)."""
    if not isinstance(part, dict):
        raise InvalidQueryError('each part is an object such as {"text": "beach", "weight": 2}')
    kinds = [k for k in ("text", "url", "id") if k in part]
    extra = set(part) - {"text", "url", "id", "weight"}
    if len(kinds) != 1 or extra:
        raise InvalidQueryError('each part has one of "text", "url" or "id", and optionally "weight"')
    return {kinds[0]: part[kinds[0]], "weight": _weight(part.get("weight", 1.0))}


def _as_id(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidQueryError(f"an image id is a whole number, not {value!r}") from None
    if (isinstance(value, float) and value != number) or not 0 < number < 2**63:
        raise NotFoundError(f"no image with id {value} in the collection")
    return number


def _whole(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidQueryError(f"{what} must be a whole number, not {value!r}") from None
    if (isinstance(value, float) and value != number) or number < 0:
        raise InvalidQueryError(f"{what} must be a whole number of 0 or more, not {value!r}")
    return number


def _positive(value: Any, what: str) -> int:
    number = _whole(value, what)
    if number < 1:
        raise InvalidQueryError(f"{what} must be at least 1, not {value!r}")
    return number
