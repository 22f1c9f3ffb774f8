"""Running a :class:`Query`: its vector, the filtered ranking, the order and the page.

Orders and pages:
- ``relevance``: best score first, ties by id, so page 2 of k=12 is results 13-24 of k=24.
- ``newest`` / ``oldest`` with a query: the *good matches* by date, where a good match is a hit above
  ``search.min_probability`` for a query of one text (SigLIP's calibrated probability), and otherwise a hit scoring
  at least ``search.good_match_ratio`` times the best hit's score; at most ``search.sort_pool`` of the best are
  considered. Without parts or feedback: every image passing the filters, by date (a browse).
Results stop at ``search.max_results`` (the furthest page a visitor can reach). Every step sees only the images the
query's viewer may see (:mod:`clip_search.collection.visibility`): its results, its browse, and the collection
images it names as terms or marks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from clip_search.collection import Collection
from clip_search.collection.visibility import Viewer
from clip_search.config import SearchSettings
from clip_search.errors import InvalidQueryError
from clip_search.search.arithmetic import Feedback, combine, query_vector
from clip_search.search.query import Part, Query
from clip_search.search.results import SearchHit, SearchPage

log = logging.getLogger(__name__)

Ranked = list[tuple[int, float]]


class QueryRunner:
    """Runs queries over a collection; the engine supplies how a part becomes a vector and a row becomes a hit."""

    def __init__(
        self,
        collection: Collection,
        settings: SearchSettings,
        *,
        embed_part: Callable[[Part, Viewer], np.ndarray],
        make_hits: Callable[[Ranked, bool, Viewer], list[SearchHit]],
        probability: Callable[[np.ndarray], np.ndarray | None],
    ) -> None:
        self.collection = collection
        self.settings = settings
        self.embed_part = embed_part
        self.make_hits = make_hits
        self.probability = probability
        self.feedback = Feedback(settings.feedback_alpha, settings.feedback_beta, settings.feedback_gamma)

    def search(self, query: Query) -> SearchPage:
        k = min(query.k or self.settings.default_k, self.settings.max_k)
        start = query.start
        if start >= self.settings.max_results:
            raise InvalidQueryError(
                f"results stop at {self.settings.max_results}: narrow the query with a filter to see further"
            )
        k = min(k, self.settings.max_results - start)
        where = query.filters.where()
        if query.is_empty:
            ordered = self._browse(query, where)
            ranked: Ranked = [(int(i), 0.0) for i in ordered[start : start + k]]
            return self._page(query, ranked, start, k, has_more=len(ordered) > start + k, total=len(ordered))
        vector = self.vector(query)
        exclude = query.excluded_ids()
        viewer = query.viewer
        if query.order == "relevance":
            found = self.collection.search(vector[None], start + k + 1, exclude=exclude, where=where, viewer=viewer)[0]
            found.sort(key=lambda hit: (-hit[1], hit[0]))
            return self._page(query, found[start : start + k], start, k, has_more=len(found) > start + k)
        pool = self.collection.search(
            vector[None], self.settings.sort_pool, exclude=exclude, where=where, viewer=viewer
        )[0]
        good = self.good_matches(pool, single_text=query.has_probability)
        ordered = self._by_time([i for i, _ in good], where, query)
        scores = dict(good)
        ranked = [(i, scores[i]) for i in ordered[start : start + k]]
        return self._page(query, ranked, start, k, has_more=len(ordered) > start + k, total=len(ordered))

    def vector(self, query: Query) -> np.ndarray:
        """The query's unit vector (see :mod:`clip_search.search.arithmetic` for the formula)."""
        parts = query.parts
        parts_vectors = [self.embed_part(p, query.viewer) for p in parts]
        summed = combine(parts_vectors, [p.weight for p in parts]) if parts else None
        good = self._marked(query.liked, query.viewer)
        bad = self._marked(query.disliked, query.viewer)
        return query_vector(summed, good, bad, self.feedback)

    def good_matches(self, ranked: Ranked, *, single_text: bool) -> Ranked:
        """The hits that count as good matches (see the module docstring)."""
        if not ranked:
            return []
        scores = np.array([s for _, s in ranked], dtype=np.float32)
        probabilities = self.probability(scores) if single_text else None
        if probabilities is not None:
            keep = probabilities >= self.settings.min_probability
        else:
            best = float(scores.max())
            keep = scores >= (best * self.settings.good_match_ratio if best > 0 else best)
        return [hit for hit, ok in zip(ranked, keep, strict=True) if ok]

    def _marked(self, image_ids: Sequence[int], viewer: Viewer) -> np.ndarray | None:
        if not image_ids:
            return None
        ids, vectors = self.collection.embeddings(image_ids, viewer)
        if len(ids) < len(image_ids):
            log.info("%d marked images are no longer in the collection", len(image_ids) - len(ids))
        return vectors if len(ids) else None

    def _browse(self, query: Query, where: str | None) -> np.ndarray:
        ids, _ = self.collection.matching(where, viewer=query.viewer)
        return ids[::-1] if query.order in ("newest", "relevance") else ids

    def _by_time(self, image_ids: list[int], where: str | None, query: Query) -> list[int]:
        """These ids ordered by the time they were added (ties by id)."""
        ids, _ = self.collection.matching(where, viewer=query.viewer)
        chosen = ids[np.isin(ids, np.asarray(image_ids, dtype=np.int64))]
        return (chosen[::-1] if query.order == "newest" else chosen).tolist()

    def _page(
        self, query: Query, ranked: Ranked, start: int, k: int, *, has_more: bool, total: int | None = None
    ) -> SearchPage:
        hits = self.make_hits(ranked, query.has_probability, query.viewer)
        confident = True
        if query.has_probability and query.order == "relevance" and hits:
            confident = any((h.probability or 0.0) >= self.settings.min_probability for h in hits)
        return SearchPage(
            hits=hits, start=start, k=k, has_more=has_more, total=total, confident=confident, query=query.to_dict()
        )
