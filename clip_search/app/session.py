"""A visitor's query between rounds: the Search tab's fields as a ``/query`` request, and the small state
(query, result ids, marks) that Load more, Refine and More like this rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clip_search.app.handlers import Kind
from clip_search.app.text import HOW_TO_ADD, collection_size, display_source, hit_caption, md_escape, percent
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError, EmptyQueryError
from clip_search.search import Query, SearchPage

SORTS = (("Relevance", "relevance"), ("Newest first", "newest"), ("Oldest first", "oldest"))
ORIENTATION_CHOICES = (("Any", "any"), ("Landscape", "landscape"), ("Portrait", "portrait"), ("Square", "square"))
SOURCE_CHOICES = (("All photos", "all"), ("Uploads only", "upload"))


def split_terms(text: str | None) -> list[str]:
    """ "people, cars" -> ["people", "cars"] (the negative-terms field)."""
    return [term.strip() for term in (text or "").split(",") if term.strip()]


def search_request(
    text: str | None,
    without: str | None = None,
    *,
    after: str | None = None,
    before: str | None = None,
    source: str | None = None,
    caption: str | None = None,
    orientation: str | None = None,
    sort: str | None = None,
    k: int | None = None,
) -> dict[str, Any]:
    """The Search tab's fields as a query in the ``/query`` JSON format (what a session keeps between rounds)."""
    source = (source or "").strip()
    filters = {
        "after": (after or "").strip() or None,
        "before": (before or "").strip() or None,
        "source": None if source in ("", "all") else source,
        "caption": (caption or "").strip() or None,
        "orientation": None if (orientation or "any") == "any" else orientation,
    }
    request: dict[str, Any] = {"sort": sort or "relevance"}
    if text and text.strip():
        request["text"] = text.strip()
    elif request["sort"] == "relevance" and not any(filters.values()):
        raise EmptyQueryError("the text query is empty: type a few words describing the picture you want")
    if terms := split_terms(without):
        request["minus"] = terms
    if any(filters.values()):
        request["filters"] = {name: value for name, value in filters.items() if value}
    if k is not None:
        request["k"] = int(k)
    return request


@dataclass
class PageResults:
    """One page of a query, with what the session keeps to show the next page or refine it (ids, not hits)."""

    kind: Kind
    page: SearchPage
    state: dict[str, Any]
    message: str  # Markdown

    def gallery(self) -> list[tuple[str, str]]:
        return [(hit.url, hit_caption(hit)) for hit in self.page.hits]


def new_state(kind: Kind, request: dict[str, Any], *, image: bool = False, source: int | None = None) -> dict[str, Any]:
    """What a visitor's session holds for a results panel: the query (small JSON), result ids and scores, marks."""
    return {
        "kind": kind,
        "request": request,
        "image": image,  # the query image is the Image-Search tab's current picture (never kept here)
        "source": source,  # "more like this": the image whose neighbours these are
        "ids": [],
        "scores": [],
        "probabilities": [],
        "next": None,
        "good": [],
        "bad": [],
    }


def run_state(
    engine: SearchEngine, state: dict[str, Any], image: bytes | None = None, *, more: bool = False
) -> PageResults:
    """Run the state's query (its next page when ``more``) with its marks; the state is returned updated."""
    request = dict(state["request"])
    if state["good"] or state["bad"]:
        request.update(like=list(state["good"]), unlike=list(state["bad"]))
    if more:
        if state.get("next") is None:
            raise ClipSearchError("there are no more results for this query")
        request["offset"] = state["next"]
    page = Query.from_dict(request, image=image if state["image"] else None, runner=engine).run()
    kept = state if more else {**state, "ids": [], "scores": [], "probabilities": []}
    updated = {
        **kept,
        "ids": [*kept["ids"], *(h.id for h in page.hits)],
        "scores": [*kept["scores"], *(round(h.score, 4) for h in page.hits)],
        "probabilities": [*kept["probabilities"], *(h.probability for h in page.hits)],
        "next": page.next_start,
    }
    return PageResults(state["kind"], page, updated, page_message(engine, updated, page))


def page_message(engine: SearchEngine, state: dict[str, Any], page: SearchPage) -> str:
    """The status line: how many results, for what, in which order, with which marks."""
    request = state["request"]
    shown = len(state["ids"])
    if not page.hits and not shown:
        return f"Nothing to search yet. {HOW_TO_ADD}" if engine.count() == 0 else "No results."
    what = ("result" if state["kind"] == "text" else "image") + ("" if shown == 1 else "s")
    text = request.get("text")
    subject = f" for “{md_escape(text)}”" if text else ""
    if state["kind"] == "image":
        subject = " most similar to your picture" + (f" plus “{md_escape(text)}”" if text else "")
    elif state["kind"] == "similar":
        subject = f" like image {state['source']}"
    if not text and state["kind"] == "text":
        subject = " in the collection"
    extras = []
    if request.get("minus"):
        extras.append("without " + ", ".join(md_escape(t) for t in request["minus"]))
    if request.get("filters"):
        extras.append("filtered by " + ", ".join(md_escape(str(k)) for k in request["filters"]))
    if request.get("sort", "relevance") != "relevance":
        extras.append(f"{request['sort']} first")
    if state["good"] or state["bad"]:
        extras.append(marks_summary(state))
    message = f"**{shown} {what}**{subject}" + "".join(f" · {e}" for e in extras)
    if not page.confident:
        best = max((p or 0.0) for p in state["probabilities"]) if state["probabilities"] else 0.0
        message = (
            f"**No good match for “{md_escape(text or '')}”.** None of the {collection_size(engine.count())} matches "
            f"it well (the best is a {percent(best)} match). The closest {shown} are below, but they are probably "
            "not what you are looking for: try other words, or add photos of it in the Upload tab."
        )
    elif text and state["kind"] == "text" and page.hits and page.hits[0].probability is not None:
        message += f" · best match {percent(max(p or 0.0 for p in state['probabilities']))}"
    return message


def state_gallery(engine: SearchEngine, state: dict[str, Any]) -> list[tuple[str, str]]:
    """Every result shown so far (after "Load more"), rebuilt from the ids the session keeps."""
    records = engine.get_many(state["ids"])
    items = []
    for image_id, score, probability in zip(state["ids"], state["scores"], state["probabilities"], strict=True):
        record = records.get(image_id)
        if record is not None:
            items.append((engine.image_url(record.key), item_caption(state, score, probability)))
    return items


def item_caption(state: dict[str, Any], score: float, probability: float | None) -> str:
    if probability is not None:
        return f"{percent(probability)} match · {score:.2f}"
    if state["kind"] == "text" and not state["request"].get("text"):
        return ""  # a browse by date: no score to show
    return f"similarity {score:.2f}"


def opened_hit(engine: SearchEngine, state: dict[str, Any] | None, index: int) -> dict[str, Any] | None:
    """The details of the result at ``index`` of the panel (looked up by id: the session keeps no hit dicts)."""
    if not state or not 0 <= index < len(state["ids"]):
        return None
    record = engine.get(state["ids"][index])
    browse = state["kind"] == "text" and not state["request"].get("text")
    return {
        "id": record.id,
        "score": None if browse else state["scores"][index],
        "probability": state["probabilities"][index],
        "caption": record.caption,
        "width": record.width,
        "height": record.height,
        "source": display_source(record.source),
        "metadata": record.metadata,
        "added_at": record.added_at,
        "url": engine.image_url(record.key),
    }


def mark(state: dict[str, Any] | None, image_id: int | float | None, good: bool) -> dict[str, Any]:
    """👍 / 👎 on an opened result: the latest mark of an image wins; marks last until a new search."""
    if not state:
        raise ClipSearchError("search first, then open a result to mark it")
    if image_id is None or (isinstance(image_id, float) and math.isnan(image_id)):
        raise ClipSearchError("open a result first, then mark it")
    image_id = int(image_id)
    good_ids = [i for i in state["good"] if i != image_id]
    bad_ids = [i for i in state["bad"] if i != image_id]
    (good_ids if good else bad_ids).append(image_id)
    return {**state, "good": good_ids, "bad": bad_ids}


def marks_summary(state: dict[str, Any] | None) -> str:
    if not state or not (state["good"] or state["bad"]):
        return ""
    return f"{len(state['good'])} marked good, {len(state['bad'])} marked bad"


def marks_note(state: dict[str, Any] | None) -> str:
    """Under the 👍 / 👎 buttons: how many results are marked, and what Refine does with them."""
    summary = marks_summary(state)
    return (
        f"**{summary}** · Refine reruns the search with them." if summary else "Mark results good or bad, then Refine."
    )
