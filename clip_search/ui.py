"""The Gradio app: ``build_app(engine)``, and the plain handlers it calls.

The handlers (``text_search``, ``image_search``, ``more_like_this``, ``upload_files``, ...) take the engine and
plain values and return plain values, so they are tested without a browser. ``build_app`` wires them to
components through thin wrappers that add what only a web request has: the visitor's address for the rate
limits, the tokens, progress, and the conversion of every error into a message in plain words. Nothing here is
imported by the engine, and nothing here talks to the catalog, the index or the store except through the engine.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

import gradio as gr

from clip_search.access import (
    ADMIN_TOKEN_ENV,
    UPLOAD_TOKEN_ENV,
    RateLimiter,
    client_address,
    token_ok,
    token_required,
)
from clip_search.engine import AddResult, SearchEngine, SearchHit
from clip_search.errors import (
    CatalogError,
    ClipSearchError,
    EmptyQueryError,
    InvalidQueryError,
    NotFoundError,
    StorageError,
)
from clip_search.images import open_image
from clip_search.search import Query, SearchPage
from clip_search.urlfetch import fetch_url

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["text", "image", "similar"]

HOW_TO_ADD = (
    "Add photos in the **Upload** tab, or on the server run `python -m clip_search ingest --samples` "
    "(a dozen sample photos) or `python -m clip_search ingest path/to/photos`."
)
WEAK_MARKER = '\n\n<span class="cs-weak-marker"></span>'  # the stylesheet greys out a gallery of weak matches
GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."
STORAGE_UNAVAILABLE = "The photo storage is unavailable right now. Please try again shortly."
ADMIN_ATTEMPTS_PER_MINUTE = 5


class TooManyRequests(ClipSearchError):
    """A visitor over their rate limit; the message says how long to wait."""


class NotAllowed(ClipSearchError):
    """A missing or wrong token, or an action this deployment has switched off."""


# -- formatting ---------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+|<>~])")  # inline text: no line-start rules apply


def md_escape(text: str) -> str:
    """Text shown literally inside Markdown (captions, file names and queries come from visitors)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def percent(probability: float) -> str:
    """``0.874`` -> ``87%``; tiny and near-certain values stay honest (``<1%``, ``>99%``)."""
    if probability < 0.01:
        return "<1%"
    if probability > 0.99:
        return ">99%"
    return f"{probability:.0%}"


def hit_caption(hit: SearchHit) -> str:
    """The line under a thumbnail: ``87% match · 0.31`` for text queries, ``similarity 0.93`` for images."""
    if hit.probability is not None:
        return f"{percent(hit.probability)} match · {hit.score:.2f}"
    return f"similarity {hit.score:.2f}"


def hit_to_dict(hit: SearchHit) -> dict[str, Any]:
    """What an API client gets for one result (no server paths)."""
    return {
        "id": hit.id,
        "score": hit.score,
        "probability": hit.probability,
        "caption": hit.caption,
        "width": hit.width,
        "height": hit.height,
        "source": _display_source(hit.source),
        "metadata": hit.metadata,
        "added_at": hit.added_at,
        "key": hit.key,
    }


def _display_source(source: str | None) -> str | None:
    """A file name, never the server's folder layout."""
    if not source:
        return None
    return Path(source).name or source


def _sentence(message: str) -> str:
    message = " ".join(str(message).split())
    return message[:1].upper() + message[1:] if message else message


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def collection_size(n: int) -> str:
    return f"{n:,} image" + ("" if n == 1 else "s")


# -- the plain handlers ------------------------------------------------------------------------------------------


@dataclass
class Results:
    """One search's answer, in the shapes the gallery, the status line and API clients want."""

    kind: Kind
    hits: list[SearchHit]
    message: str  # Markdown
    confident: bool = True

    def gallery(self) -> list[tuple[str, str]]:
        return [(hit.url, hit_caption(hit)) for hit in self.hits]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [hit_to_dict(hit) for hit in self.hits]


def header_html(engine: SearchEngine, api_url: str = "?view=api") -> str:
    """Title, description, and one line of facts: collection size, model, a link to the API page."""
    app = engine.settings.app
    n = engine.count()
    return (
        '<div class="cs-header">'
        f"<h1>{html.escape(app.title)}</h1>"
        f"<p class='cs-tagline'>{html.escape(app.description)}</p>"
        "<p class='cs-facts'>"
        f"<span class='cs-count'>{html.escape(collection_size(n))}</span> · "
        f"model <code>{html.escape(_model_name(engine.settings.model.id))}</code> · "
        f'<a class="cs-api" href="{html.escape(api_url, quote=True)}" target="_blank" rel="noopener">API</a>'
        "</p></div>"
    )


def _model_name(model_id: str) -> str:
    path = Path(model_id)
    return path.name if path.is_absolute() else model_id  # a local checkpoint: its folder name, not the disk layout


def empty_notice(engine: SearchEngine) -> str:
    """Shown while the collection is empty: what to do about it."""
    return f"### The collection is empty\n{HOW_TO_ADD}"


def _best_below(best: float, threshold: float) -> str:
    """``the best is a 31% match`` and, when the threshold is high enough for rounding to blur the two, both
    figures precise enough to differ (never "no good match ... the best is a >99% match")."""
    if threshold <= 0.5 or percent(best) not in (percent(threshold), ">99%"):
        return f"the best is a {percent(best)} match"
    places = next(n for n in range(1, 8) if abs(round(threshold * 100, n) - threshold * 100) < 1e-9 or n == 7)
    shown = math.floor(best * 100 * 10**places) / 10**places  # at the threshold's precision, below it
    return f"the best is a {shown:.{places}f}% match, below the {threshold * 100:.{places}f}% asked for here"


def text_search(engine: SearchEngine, query: str, k: float | str | None = None) -> Results:
    """The Search tab. Raises EmptyQueryError (a ClipSearchError) for an empty query."""
    hits = engine.search_text(query, k)
    shown = md_escape(query)
    if not hits:
        return Results("text", [], f"Nothing to search yet. {HOW_TO_ADD}" if engine.count() == 0 else "No results.")
    best = max(h.probability or 0.0 for h in hits)
    if engine.is_confident(hits):
        message = f"**{_count(hits, 'result')}** for “{shown}” · best match {percent(best)}"
        return Results("text", hits, message, confident=True)
    message = (
        f"**No good match for “{shown}”.** None of the {collection_size(engine.count())} matches it well "
        f"({_best_below(best, engine.settings.search.min_probability)}). The closest ones are below, but they are "
        "probably not what you are looking for: try other words, or add photos of it in the Upload tab."
    )
    return Results("text", hits, message, confident=False)


def load_query_image(engine: SearchEngine, image: str | Path | bytes | None, url: str | None) -> bytes:
    """The query image's bytes: an uploaded/pasted/webcam file, else an http(s) URL (checked against SSRF)."""
    limits = engine.settings.upload
    if isinstance(image, bytes):
        data = image
    elif image:
        path = Path(image)
        try:
            size = path.stat().st_size
        except OSError:
            raise ClipSearchError("the image did not arrive: please choose it again") from None
        if size > limits.max_bytes:
            raise ClipSearchError(f"that image is too large (the limit is {limits.max_bytes / 2**20:.0f} MiB)")
        data = path.read_bytes()
    elif url and url.strip():
        app = engine.settings.app
        if not app.allow_image_urls:
            raise NotAllowed("searching by image URL is switched off here: upload the image instead")
        data = fetch_url(
            url.strip(),
            max_bytes=min(app.url_max_bytes, limits.max_bytes),
            timeout_s=app.url_timeout_s,
            allow_private=app.allow_private_urls,
        )
    else:
        raise ClipSearchError("choose an image first: upload, paste or take one with your webcam, or give its URL")
    if not data:
        raise ClipSearchError("that image is empty")
    return data


def check_query_image(engine: SearchEngine, image: str | Path | bytes | None) -> None:
    """Checked from its header as soon as a picture is chosen, so a file that is not one (a text file named .jpg)
    is named at once instead of leaving a broken preview; raises a ClipSearchError saying why."""
    if image:
        limits = engine.settings.upload
        open_image(load_query_image(engine, image, None), max_pixels=limits.max_pixels, formats=limits.formats)


def image_search(
    engine: SearchEngine, image: str | Path | bytes | None, url: str | None = None, k: float | str | None = None
) -> Results:
    """The Image-Search tab: images most similar to a query image, which is never stored."""
    data = load_query_image(engine, image, url)
    if engine.count() == 0:
        engine.decode_query(data)  # still say so when the picture itself is unusable
        return Results("image", [], f"Nothing to search yet. {HOW_TO_ADD}")
    hits = engine.search_image(data, k)
    return Results("image", hits, f"**{_count(hits, 'image')}** most similar to your picture")


def more_like_this(engine: SearchEngine, image_id: int | float | str | None, k: float | str | None = None) -> Results:
    """Neighbours of an image of the collection (itself excluded)."""
    if _no_id(image_id):
        raise ClipSearchError("click a result first, then “More like this”")
    record = engine.get(image_id)  # type: ignore[arg-type]  # any value: "no image with id ..." if not an id
    hits = engine.search_similar(record.id, k)
    label = f" “{md_escape(record.caption)}”" if record.caption else ""
    return Results("similar", hits, f"**{_count(hits, 'image')}** like image {record.id}{label}")


def _no_id(image_id: object) -> bool:
    """Nothing chosen: an empty field (None, blank, NaN), as opposed to an id that names no image."""
    if isinstance(image_id, float):
        return math.isnan(image_id)
    return image_id is None or (isinstance(image_id, str) and not image_id.strip())


def describe_hit(hit: dict[str, Any] | None) -> str:
    """Markdown for the details panel of a clicked result."""
    if not hit:
        return ""
    lines = [f"### Image {hit['id']}"]
    if hit.get("caption"):
        lines.append(f"*{md_escape(hit['caption'])}*")
    rows: list[tuple[str, str]] = []
    if hit.get("probability") is not None:
        rows.append(("Match", f"{percent(hit['probability'])} (score {hit['score']:.3f})"))
    elif hit.get("score") is not None:  # a browse by date has no score
        rows.append(("Similarity", f"{hit['score']:.3f}"))
    rows.append(("Size", f"{hit['width']} × {hit['height']} px"))
    metadata = dict(hit.get("metadata") or {})
    name = metadata.pop("filename", None) or hit.get("source")
    if name and name != "upload":
        rows.append(("File", md_escape(name)))
    if metadata.get("credit"):
        rows.append(("Credit", md_escape(metadata.pop("credit"))))
    others = metadata.pop("captions", None)
    for key, value in sorted(metadata.items()):
        if isinstance(value, (str, int, float)) and str(value).strip():
            rows.append((md_escape(str(key).replace("_", " ").capitalize()), md_escape(str(value))[:200]))
    if hit.get("added_at"):
        rows.append(("Added", md_escape(str(hit["added_at"]).replace("T", " ")[:19])))
    lines.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
    if isinstance(others, list) and len(others) > 1:
        lines.append("**Other captions**\n" + "\n".join(f"- {md_escape(c)}" for c in others[1:5]))
    return "\n\n".join(lines)


# -- queries with negative terms, filters, orders, pages and feedback ------------------------------------------

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
        "source": _display_source(record.source),
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


def parse_query_json(payload: str | dict[str, Any] | None) -> dict[str, Any]:
    """The ``/query`` endpoint's input: a JSON object, given as text or already parsed."""
    if isinstance(payload, dict):
        return payload
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        raise InvalidQueryError('give the query as JSON, e.g. {"text": "a dog on a beach"}')
    if not isinstance(payload, str):
        raise InvalidQueryError('the query must be a JSON object, e.g. {"text": "a dog on a beach"}')
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise InvalidQueryError(
            f"the query is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            'write it like {"text": "a dog on a beach", "minus": ["people"]}'
        ) from None
    if not isinstance(data, dict):
        raise InvalidQueryError('the query must be a JSON object, e.g. {"text": "a dog on a beach"}')
    return data


def run_query_json(
    engine: SearchEngine,
    payload: str | dict[str, Any] | None,
    image: str | Path | bytes | None = None,
    *,
    url_for: Callable[[str], str] = lambda url: url,
) -> dict[str, Any]:
    """The ``/query`` endpoint: a whole query as JSON (and an optional image) -> the page as JSON.

    ``url_for`` turns an image's URL into what a browser fetches (the app's file route for the local store);
    sources show as file names, never the server's folders.
    """
    data = parse_query_json(payload)
    image_bytes = load_query_image(engine, image, None) if image else None
    page = Query.from_dict(data, image=image_bytes, runner=engine).run()
    out = page.to_dict()
    for hit in out["hits"]:
        hit["url"] = url_for(hit["url"])
        hit["source"] = _display_source(hit["source"])
    return out


@dataclass
class UploadOutcome:
    results: list[AddResult]
    count: int  # collection size afterwards
    message: str  # Markdown: summary and a per-file table
    added: list[tuple[str, str]] = field(default_factory=list)  # gallery items of the added photos

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "file": r.source,
                "status": r.status,
                "message": _file_message(r),
                "id": r.id,
                "duplicate_of": r.duplicate_of,
            }
            for r in self.results
        ]


_STATUS_MARK = {
    "added": '<span class="cs-added">added</span>',
    "duplicate": '<span class="cs-duplicate">already there</span>',
    "rejected": '<span class="cs-rejected">rejected</span>',
}


def _file_message(result: AddResult) -> str:
    prefix = f"{result.source}: "
    text = result.message[len(prefix) :] if result.source and result.message.startswith(prefix) else result.message
    return _sentence(text)


def discard_uploaded_copies(files: Sequence[str | Path]) -> None:
    """Delete Gradio's temporary copies of uploaded files (and their folders) as soon as they are handled.

    Only paths inside Gradio's upload folder are touched: a handler called with any other path leaves it alone.
    """
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    for name in files:
        path = Path(name).resolve()
        if not path.is_relative_to(root) or path == root:
            continue
        try:
            path.unlink(missing_ok=True)
            if path.parent != root and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError as exc:
            log.warning("could not remove the uploaded copy %s: %s", path, exc)


def no_files_message(engine: SearchEngine) -> str:
    """Also what a visitor reads after choosing only files over the limit: the browser drops those before they
    are sent, so the server never sees them; say why the box may be empty."""
    limit = engine.settings.upload.max_bytes
    return (
        f"choose one or more photos to upload first (a file over {_mib(limit)} is refused by your browser, "
        f"which writes that limit as “{_gradio_size(limit)}”)"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def _gradio_size(size: int) -> str:
    """The limit as Gradio's page writes it in its own warning (1024-based, with the unit spelled "Mb")."""
    value, units = float(size), ["b", "Kb", "Mb", "Gb", "Tb"]
    step = 0
    while value >= 1024 and step < len(units) - 1:
        value, step = value / 1024, step + 1
    return f"{value:.1f} {units[step]}"


def upload_files(
    engine: SearchEngine,
    files: Sequence[str | Path] | None,
    caption: str | None = None,
    *,
    allowed: int | None = None,
    wait_s: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> UploadOutcome:
    """The Upload tab: each file validated, stored, embedded and indexed, with a result per file.

    ``allowed`` is how many files the visitor's rate limit lets through now (the rest are refused, saying when
    to come back after ``wait_s``); files beyond ``upload.max_files`` are refused too. Never raises for a bad
    file: a file that cannot be used is ``rejected`` with the reason.
    """
    paths = [Path(f) for f in files or []]
    if not paths:
        raise ClipSearchError(no_files_message(engine))
    limits = engine.settings.upload
    allowed = len(paths) if allowed is None else allowed
    results: list[AddResult] = []
    for pos, path in enumerate(paths):
        name = path.name
        if on_progress is not None:
            on_progress(pos, len(paths))
        if pos >= limits.max_files:
            results.append(
                AddResult("rejected", f"{name}: too many files in one upload (at most {limits.max_files})", source=name)
            )
            continue
        if pos >= allowed:
            results.append(AddResult("rejected", f"{name}: {RateLimiter.message(wait_s, 'uploads')}", source=name))
            continue
        try:
            size = path.stat().st_size
        except OSError:
            results.append(AddResult("rejected", f"{name}: the file did not arrive; please try again", source=name))
            continue
        if size > limits.max_bytes:
            results.append(
                AddResult(
                    "rejected",
                    f"{name}: file too large ({size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB)",
                    source=name,
                )
            )
            continue
        results.append(engine.upload(path.read_bytes(), filename=name, caption=caption))
    if on_progress is not None:
        on_progress(len(paths), len(paths))
    count = engine.count()
    counts = {status: sum(r.status == status for r in results) for status in ("added", "duplicate", "rejected")}
    summary = ", ".join(
        f"**{n} {label}**" if status == "added" else f"{n} {label}"
        for status, label in (("added", "added"), ("duplicate", "already there"), ("rejected", "rejected"))
        if (n := counts[status])
    )
    table = "| | File | Result |\n|---|---|---|\n" + "\n".join(
        f"| {_STATUS_MARK[r.status]} | {md_escape(r.source or 'upload')} | {md_escape(_file_message(r))} |"
        for r in results
    )
    searchable = " New photos are searchable right away." if counts["added"] else ""
    message = f"{summary} · the collection now holds **{collection_size(count)}**.{searchable}\n\n{table}"
    added = []
    for r in results:
        if r.status == "added" and r.key:
            try:
                added.append((engine.store.url(r.key), f"image {r.id}"))
            except ClipSearchError:
                log.warning("no URL for the new image %s", r.key)
    return UploadOutcome(results, count, message, added)


def add_samples(engine: SearchEngine) -> str:
    """The "Add the sample photos" button of an empty collection (``ingest --samples``, from the app)."""
    from clip_search.ingest import ingest_samples

    if engine.count() > 0:
        return f"The collection already holds {collection_size(engine.count())}."
    report = ingest_samples(engine, progress=False)
    return f"Added {report.added} sample photos: the collection now holds {collection_size(engine.count())}."


def delete_image(engine: SearchEngine, image_id: int | float | str | None) -> str:
    """Admin: remove an image from the collection and the store."""
    if _no_id(image_id):
        raise ClipSearchError("give the id of the image to delete (it is shown when you click a result)")
    record = engine.delete(image_id)  # type: ignore[arg-type]  # any value: "no image with id ..." if not an id
    return f"Deleted image {record.id}. The collection now holds {collection_size(engine.count())}."


class PublicStats(TypedDict):
    """What ``/stats`` answers (typed, so the API page lists the fields)."""

    images: int
    model: str


def public_stats(engine: SearchEngine) -> PublicStats:
    """Facts safe to show anyone (no paths, no bucket names)."""
    return {"images": engine.count(), "model": _model_name(engine.settings.model.id)}


def label_api_output(demo: gr.Blocks, api_name: str, label: str) -> None:
    """Name a ``gr.api`` endpoint's answer on the API page, which otherwise calls it "1st"."""
    for fn in demo.fns.values():
        if fn.api_name == api_name:
            for output in fn.outputs:
                output.label = label


# -- access --------------------------------------------------------------------------------------------------------


class Gate:
    """Rate limits per visitor and the tokens, for one app."""

    def __init__(self, engine: SearchEngine) -> None:
        limits = engine.settings.rate_limit
        self.header = limits.trusted_proxy_header
        self.hops = limits.trusted_proxy_hops
        self.searches = RateLimiter(limits.searches_per_minute)
        self.uploads = RateLimiter(limits.uploads_per_minute)
        self.admin = RateLimiter(ADMIN_ATTEMPTS_PER_MINUTE)

    def client(self, request: gr.Request | None) -> str:
        if request is None:
            return "unknown"
        peer = getattr(getattr(request, "client", None), "host", None)
        try:
            headers = dict(request.headers)
        except Exception:  # a request without headers (called from Python)
            headers = {}
        return client_address(peer, headers, trusted_header=self.header, trusted_hops=self.hops)

    def search(self, request: gr.Request | None) -> None:
        wait = self.searches.acquire(self.client(request))
        if wait:
            raise TooManyRequests(RateLimiter.message(wait, "searches"))

    def upload(self, request: gr.Request | None, n_files: int, token: str | None) -> tuple[int, float]:
        """How many of ``n_files`` may go through now, and the wait for the rest."""
        client = self.client(request)
        if not token_ok(token, UPLOAD_TOKEN_ENV):
            wait = self.uploads.acquire(client)  # wrong guesses cost like uploads
            if wait:
                raise TooManyRequests(RateLimiter.message(wait, "uploads"))
            raise NotAllowed("uploading needs the upload token of this site, and that one is missing or wrong")
        allowed, wait = 0, 0.0
        for _ in range(n_files):
            wait = self.uploads.acquire(client)
            if wait:
                break
            allowed += 1
        if n_files and not allowed:
            raise TooManyRequests(RateLimiter.message(wait, "uploads"))
        return allowed, wait

    def delete(self, request: gr.Request | None, token: str | None) -> None:
        wait = self.admin.acquire(self.client(request))
        if wait:
            raise TooManyRequests(RateLimiter.message(wait, "attempts"))
        if not token_required(ADMIN_TOKEN_ENV):
            raise NotAllowed("deleting images is switched off here")
        if not token_ok(token, ADMIN_TOKEN_ENV):
            raise NotAllowed("the admin token is missing or wrong")


# -- from exceptions to messages ---------------------------------------------------------------------------------


def friendly(fn: F) -> F:
    """Every error a visitor can meet becomes a short message in plain words; never a traceback.

    Messages are shown as HTML text: ``<`` and ``&`` are escaped, quotes stay readable (API clients see them too).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TooManyRequests as exc:
            raise gr.Error(html.escape(str(exc), quote=False), title="Slow down", print_exception=False) from None
        except NotAllowed as exc:
            raise gr.Error(
                html.escape(_sentence(str(exc)), quote=False), title="Not allowed", print_exception=False
            ) from None
        except NotFoundError as exc:
            raise gr.Error(
                html.escape(_sentence(str(exc)), quote=False), title="Not found", print_exception=False
            ) from None
        except (StorageError, CatalogError) as exc:  # names endpoints, buckets, keys, paths: for the log only
            log.warning("storage error in %s: %s", getattr(fn, "__name__", fn), exc)
            raise gr.Error(STORAGE_UNAVAILABLE, title="Sorry", print_exception=False) from None
        except ClipSearchError as exc:
            raise gr.Error(
                html.escape(_sentence(str(exc)), quote=False), title="Sorry", print_exception=False
            ) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            raise gr.Error(GENERIC_ERROR, title="Sorry", print_exception=False) from None

    return wrapper  # type: ignore[return-value]


# -- the app -----------------------------------------------------------------------------------------------------

CSS = """
.cs-header { padding: 0.25rem 0 0.5rem 0; }
.cs-header h1 { font-size: 1.9rem; margin: 0 0 0.2rem 0; letter-spacing: -0.02em; }
.cs-header .cs-tagline { margin: 0; opacity: 0.8; font-size: 1.02rem; }
.cs-header .cs-facts { margin: 0.35rem 0 0 0; font-size: 0.9rem; opacity: 0.75; }
.cs-header .cs-facts code { font-size: 0.85rem; }
.cs-empty { border: 1px dashed var(--border-color-primary); border-radius: var(--radius-lg); padding: 0.75rem 1rem; }
.cs-status p { margin: 0.2rem 0; }
.cs-panel:has(.cs-weak-marker) .cs-results img { opacity: 0.55; filter: grayscale(0.5); }
.cs-panel:has(.cs-weak-marker) .cs-results:hover img { opacity: 0.9; filter: none; }
.cs-details { border-left: 3px solid var(--color-accent); padding-left: 0.75rem; }
.cs-details thead { display: none; }
.cs-details table, #upload-status table { font-size: 0.92rem; border-collapse: collapse; }
.cs-details td, #upload-status td, #upload-status th {
  border: 1px solid var(--border-color-primary) !important; padding: 0.3rem 0.6rem !important;
}
.cs-details td:first-child { font-weight: 600; white-space: nowrap; }
.cs-added, .cs-duplicate, .cs-rejected { font-weight: 600; white-space: nowrap; }
.cs-added { color: #15803d; }
.cs-duplicate { color: #a16207; }
.cs-rejected { color: #b91c1c; }
.cs-results .caption-label { max-width: calc(100% - 2 * var(--block-label-margin)); }
@media (max-width: 640px) {  /* a phone: two thumbnails a row, so "87% match · 0.31" is not cut */
  .cs-results .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
"""


# The header's "API" link opens Gradio's API panel (as the footer's "Use via API" does), also inside an iframe or a
# <gradio-app> embed; where the footer has no API button it falls back to its href, the app's own URL.
OPEN_API_PAGE = """
element.addEventListener("click", (event) => {
  if (!event.target.closest("a.cs-api")) return;
  const root = element.closest(".gradio-container") || document;
  const button = root.querySelector("footer button.show-api");
  if (button) {
    event.preventDefault();
    button.click();
  }
});
"""


def scroll_into_view(elem_id: str | None) -> str:
    """Browser code that brings an element into view once it is drawn: the details of an opened result sit
    below the gallery's large preview, under the fold of a 1280 x 900 window."""
    target = json.dumps(f"#{elem_id}")
    return (
        f"() => {{ setTimeout(() => document.querySelector({target})"
        "?.scrollIntoView({ block: 'nearest', behavior: 'instant' }), 60); }"
    )


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


def _root_url(request: gr.Request | None) -> str:
    """The app's address as the visitor reached it ("" when unknown: links then stay relative)."""
    try:
        from gradio import route_utils

        return route_utils.get_root_url(request.request, route_path="/gradio_api/queue/join", root_path=None)
    except Exception:
        return ""


def _root_api_url(request: gr.Request | None) -> str:
    """An absolute link to the API page, so it also works from a <gradio-app> embedded in another site."""
    root = _root_url(request)
    return f"{root}/?view=api" if root else "?view=api"


@dataclass
class _Context:
    """What every tab builder needs: the engine, the access checks and the queue groups."""

    engine: SearchEngine
    gate: Gate
    search_queue: dict[str, Any]
    upload_queue: dict[str, Any]
    upload_token_needed: bool
    admin_enabled: bool

    @property
    def k_range(self) -> tuple[int, int]:
        return self.engine.settings.search.max_k, self.engine.settings.search.default_k


# Inputs whose value reaches our handlers unconverted: Gradio's own conversions fail with its generic "upstream
# Gradio app has raised an exception" and a traceback in the log (on a text file named .jpg, on k=0 or 1e9 from an
# API client, on an id that is text), where the handlers answer in words. The preprocess is replaced on the
# instance: a subclass of a Gradio component would make Gradio write a .pyi file next to this module.


def query_image_input(**kwargs: Any) -> gr.Image:
    """The Image-Search input: the file's path, unopened; the handler checks it under the upload limits
    (Gradio's preprocessing would open any Pillow format and convert it in full, whatever its size)."""
    component = gr.Image(**kwargs)

    def preprocess(payload: Any) -> str | None:
        path = getattr(payload, "path", None)
        return None if path is None else str(path)  # no file: the handler asks for one

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def results_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """The "Results" slider; the search clamps its value to 1..search.max_k, or refuses text in words."""
    component = gr.Slider(*args, **kwargs)
    component.preprocess = _as_sent  # type: ignore[method-assign]
    return component


def id_field(**kwargs: Any) -> gr.Number:
    """An image id field; the handler says "no image with id ..." for anything that is not one."""
    component = gr.Number(**kwargs)
    component.preprocess = _as_sent  # type: ignore[method-assign]
    return component


def upload_files_input(**kwargs: Any) -> gr.File:
    """The Upload tab's file box: the uploaded paths as they are (Gradio's own preprocessing also creates an
    empty temporary file per uploaded file and never removes it)."""
    component = gr.File(**kwargs)

    def preprocess(payload: Any) -> list[str] | None:
        if payload is None:
            return None
        files = getattr(payload, "root", None)
        return [str(f.path) for f in (files if isinstance(files, list) else [payload])]

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _as_sent(payload: Any) -> Any:
    return payload


@dataclass
class _ResultsPanel:
    """A status line, the gallery with "Load more", and the details of an opened result with its actions."""

    status: gr.Markdown
    gallery: gr.Gallery
    load_more: gr.Button
    details: gr.Column
    opened: gr.Gallery  # the opened result's image: the source beside the results of "More like this"
    details_md: gr.Markdown
    good: gr.Button
    bad: gr.Button
    marks: gr.Markdown
    more: gr.Button
    refine: gr.Button
    close: gr.Button
    selected: gr.Number
    state: gr.State


@dataclass
class _ApiOutputs:
    """Hidden components the API endpoints answer into (the page's panels keep no hit dicts per visitor)."""

    status: gr.Markdown
    gallery: gr.Gallery
    hits: gr.JSON
    query: gr.JSON
    image: gr.File
    page: gr.JSON


def _results_panel(name: str) -> _ResultsPanel:
    with gr.Column(elem_classes=["cs-panel"]):
        status = gr.Markdown(label="message", elem_classes=["cs-status"], elem_id=f"{name}-status")
        with gr.Row(equal_height=False, elem_classes=["cs-results-row"]):
            with gr.Column(scale=3, min_width=300):
                gallery = gr.Gallery(
                    label="Results",
                    show_label=False,
                    columns=4,
                    height="auto",
                    object_fit="cover",
                    allow_preview=True,
                    interactive=False,
                    visible=False,
                    fit_columns=False,
                    buttons=["download", "fullscreen"],
                    elem_classes=["cs-results"],
                    elem_id=f"{name}-gallery",
                )
                load_more = gr.Button("Load more", size="sm", visible=False, elem_id=f"{name}-load-more")
            details, parts = _details_panel(name)
        selected = id_field(visible=False, precision=0, label="image id")
        state = gr.State(None)
    return _ResultsPanel(status, gallery, load_more, details, *parts, selected, state)


def _details_panel(name: str) -> tuple[gr.Column, tuple[Any, ...]]:
    with gr.Column(
        scale=2, min_width=260, visible=False, elem_classes=["cs-details"], elem_id=f"{name}-details"
    ) as details:
        opened = gr.Gallery(
            show_label=False,
            columns=1,
            height=220,
            object_fit="contain",
            allow_preview=False,
            interactive=False,
            buttons=[],
            elem_id=f"{name}-opened",
        )
        details_md = gr.Markdown()
        with gr.Row(elem_classes=["cs-actions"]):
            good = gr.Button("👍 Good", size="sm", min_width=90, elem_id=f"{name}-good")
            bad = gr.Button("👎 Bad", size="sm", min_width=90, elem_id=f"{name}-bad")
            refine = gr.Button("Refine", size="sm", min_width=90, elem_id=f"{name}-refine")
        marks = gr.Markdown(elem_id=f"{name}-marks", elem_classes=["cs-marks"])
        with gr.Row(elem_classes=["cs-actions"]):
            more = gr.Button("More like this", variant="primary", size="sm", min_width=140, elem_id=f"{name}-more")
            close = gr.Button("Close", size="sm", min_width=90, elem_id=f"{name}-close")
    return details, (opened, details_md, good, bad, marks, more, refine, close)


@dataclass
class _SearchTab:
    query: gr.Textbox
    button: gr.Button
    without: gr.Textbox
    sort: gr.Dropdown
    k: gr.Slider
    filters: tuple[Any, ...]  # after, before, source, caption, orientation
    examples: gr.Examples
    empty: gr.Column
    samples_button: gr.Button
    samples_status: gr.Markdown
    panel: _ResultsPanel

    @property
    def inputs(self) -> list[Any]:
        return [self.query, self.without, *self.filters, self.sort, self.k]


def _search_tab(ctx: _Context) -> _SearchTab:
    engine, (k_max, k_default) = ctx.engine, ctx.k_range
    with gr.Column(visible=engine.count() == 0, elem_classes=["cs-empty"], elem_id="cs-empty") as empty:
        gr.Markdown(empty_notice(engine))
        samples_button = gr.Button(
            "Add the sample photos",
            variant="primary",
            size="sm",
            min_width=200,
            visible=not ctx.upload_token_needed,
            elem_id="cs-add-samples",
        )
        samples_status = gr.Markdown(label="message")
    with gr.Row(equal_height=True):
        query = gr.Textbox(
            show_label=False,
            placeholder="Describe the picture you want, e.g. “a dog running on a beach”, then press Enter",
            scale=6,
            max_lines=1,
            autofocus=True,
            elem_id="search-query",
        )
        button = gr.Button("Search", variant="primary", scale=1, min_width=90, elem_id="search-button")
    with gr.Row(equal_height=True):
        without = gr.Textbox(
            label="Without", placeholder="people, cars", max_lines=1, scale=3, min_width=180, elem_id="search-without"
        )
        sort = gr.Dropdown(
            choices=list(SORTS), value="relevance", label="Sort", scale=1, min_width=150, elem_id="search-sort"
        )
        k = results_slider(
            1, k_max, value=k_default, step=1, label="Results", scale=1, min_width=180, elem_id="search-k"
        )
    filters = _filters_accordion()
    examples = gr.Examples(engine.settings.app.examples, inputs=[query], label="Try", examples_per_page=50)
    panel = _results_panel("search")
    return _SearchTab(query, button, without, sort, k, filters, examples, empty, samples_button, samples_status, panel)


def _filters_accordion() -> tuple[Any, ...]:
    """Added after/before, source, caption word, orientation: typed or picked, all usable from the keyboard."""
    with gr.Accordion("Filters", open=False, elem_id="search-filters"):
        with gr.Row():
            after = gr.Textbox(
                label="Added after", placeholder="2026-01-31", max_lines=1, min_width=150, elem_id="filter-after"
            )
            before = gr.Textbox(
                label="Added before", placeholder="2026-12-31", max_lines=1, min_width=150, elem_id="filter-before"
            )
            source = gr.Dropdown(
                choices=list(SOURCE_CHOICES),
                value="all",
                allow_custom_value=True,
                label="Source (or type an ingested folder)",
                min_width=180,
                elem_id="filter-source",
            )
        with gr.Row():
            caption = gr.Textbox(label="Caption has the word", max_lines=1, min_width=150, elem_id="filter-caption")
            orientation = gr.Dropdown(
                choices=list(ORIENTATION_CHOICES),
                value="any",
                label="Orientation",
                min_width=150,
                elem_id="filter-orientation",
            )
    return after, before, source, caption, orientation


@dataclass
class _ImageTab:
    image: gr.Image
    text: gr.Textbox
    url: gr.Textbox
    k: gr.Slider
    button: gr.Button
    panel: _ResultsPanel


def _image_tab(ctx: _Context) -> _ImageTab:
    k_max, k_default = ctx.k_range
    gr.Markdown("Upload, paste or take a picture: the most similar photos of the collection appear below.")
    with gr.Row():
        with gr.Column(scale=2, min_width=260):
            image = query_image_input(
                type="filepath",
                sources=["upload", "clipboard", "webcam"],
                label="Your picture (it is not added to the collection)",
                height=300,
                elem_id="image-query",
            )
        with gr.Column(scale=3, min_width=260):
            text = gr.Textbox(
                label="…and words to add (optional)",
                placeholder="at night",
                max_lines=1,
                elem_id="image-text",
            )
            url = gr.Textbox(
                label="…or an image URL",
                placeholder="https://example.com/photo.jpg",
                max_lines=1,
                visible=ctx.engine.settings.app.allow_image_urls,
                elem_id="image-url",
            )
            k = results_slider(1, k_max, value=k_default, step=1, label="Results", elem_id="image-k")
            button = gr.Button("Find similar images", variant="primary", elem_id="image-button")
    return _ImageTab(image, text, url, k, button, _results_panel("image"))


@dataclass
class _UploadTab:
    files: gr.File
    caption: gr.Textbox
    token: gr.Textbox
    button: gr.Button
    status: gr.Markdown
    added: gr.Gallery
    results: gr.JSON
    admin: tuple[Any, ...] | None  # image id, token, button, status


def _upload_tab(ctx: _Context) -> _UploadTab:
    upload = ctx.engine.settings.upload
    names = {"HEIF": "HEIC", "WEBP": "WebP"}
    formats = ", ".join(names.get(f, f) for f in upload.formats)
    gr.Markdown(
        f"Add your photos to the collection: {formats}; up to {_mib(upload.max_bytes)} each "
        f"(“{_gradio_size(upload.max_bytes)}” in the browser's warning) and {upload.max_files} at a time. "
        + (
            "Photos are stored re-encoded, without their metadata (location, camera, dates). "
            if not upload.keep_metadata
            else ""
        )
        + "They can be found by every visitor from the very next search."
    )
    files = upload_files_input(file_count="multiple", label="Photos", height=180, elem_id="upload-files")
    with gr.Row():
        caption = gr.Textbox(
            label="Caption (optional, for all these photos)",
            max_lines=2,
            max_length=upload.max_caption_chars,
            scale=3,
            elem_id="upload-caption",
        )
        token = gr.Textbox(
            label="Upload token", type="password", visible=ctx.upload_token_needed, scale=1, elem_id="upload-token"
        )
    button = gr.Button("Upload", variant="primary", elem_id="upload-button")
    status = gr.Markdown(label="message", elem_id="upload-status")
    added = gr.Gallery(
        label="Added",
        visible=False,
        fit_columns=False,
        height=240,
        columns=6,
        object_fit="cover",
        interactive=False,
        elem_id="upload-gallery",
    )
    results = gr.JSON(visible=False, label="results")
    admin = None
    if ctx.admin_enabled:
        with gr.Accordion("Admin", open=False, elem_id="cs-admin"):
            admin = (
                id_field(label="Image id", precision=0),
                gr.Textbox(label="Admin token", type="password"),
                gr.Button("Delete image", variant="stop"),
                gr.Markdown(label="message"),
            )
    return _UploadTab(files, caption, token, button, status, added, results, admin)


def _api_outputs() -> _ApiOutputs:
    with gr.Column(visible=False):
        return _ApiOutputs(
            status=gr.Markdown(label="message"),
            gallery=gr.Gallery(label="Results", interactive=False),
            hits=gr.JSON(label="hits"),
            query=gr.JSON(label="query"),
            image=gr.File(label="image", file_count="single", type="filepath"),
            page=gr.JSON(label="page"),
        )


# -- events ---------------------------------------------------------------------------------------------------------


def _panel_outputs(panel: _ResultsPanel) -> list[Any]:
    """A new search's outputs: status, gallery, state, "Load more", the details closed, the marks note."""
    return [panel.status, panel.gallery, panel.state, panel.load_more, panel.details, panel.marks]


def _show_page(
    engine: SearchEngine, results: PageResults, request: gr.Request | None, *, close_details: bool = True
) -> tuple[Any, ...]:
    marker = "" if results.page.confident else WEAK_MARKER
    values = (
        results.message + marker,
        gr.update(value=public_gallery(engine, results.gallery(), request), visible=bool(results.page.hits)),
        results.state,
        gr.update(visible=results.page.has_more),
    )
    if close_details:
        return (*values, gr.update(visible=False), "")
    return (*values, marks_note(results.state))


def _wire_search_tab(ctx: _Context, tab: _SearchTab) -> None:
    engine, gate = ctx.engine, ctx.gate

    @friendly
    def on_find(
        text: str,
        without: str,
        after: str,
        before: str,
        source: str,
        caption: str,
        orientation: str,
        sort: str,
        k: float,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """The Search tab: words, words to avoid, filters, an order; the first page of results."""
        gate.search(request)
        query = search_request(
            text,
            without,
            after=after,
            before=before,
            source=source,
            caption=caption,
            orientation=orientation,
            sort=sort,
            k=engine.result_count(k),
        )
        return _show_page(engine, run_state(engine, new_state("text", query)), request)

    outputs = _panel_outputs(tab.panel)
    options = {"api_visibility": "private", **ctx.search_queue}
    gr.on(
        [tab.query.submit, tab.button.click, tab.without.submit], on_find, inputs=tab.inputs, outputs=outputs, **options
    )
    tab.examples.load_input_event.then(on_find, inputs=tab.inputs, outputs=outputs, **options)
    _wire_panel(ctx, tab.panel, tab.k, rerun_inputs=[])


def _wire_image_tab(ctx: _Context, tab: _ImageTab) -> None:
    engine, gate = ctx.engine, ctx.gate

    @friendly
    def on_find_image(image: str | None, text: str, url: str, k: float, request: gr.Request) -> tuple[Any, ...]:
        gate.search(request)
        data = load_query_image(engine, image, url)
        query: dict[str, Any] = {"k": engine.result_count(k)}
        if text and text.strip():
            query["text"] = text.strip()
        return _show_page(engine, run_state(engine, new_state("image", query, image=True), data), request)

    @friendly
    def on_query_image(image: str | None) -> tuple[Any, Any]:
        """A picture that cannot be searched with is taken out of the box, and the reason shown under it."""
        try:
            check_query_image(engine, image)
        except ClipSearchError as exc:
            return None, f"**Sorry:** {md_escape(_sentence(str(exc)))}"
        return gr.skip(), gr.skip()

    tab.image.upload(
        on_query_image,
        inputs=[tab.image],
        outputs=[tab.image, tab.panel.status],
        api_visibility="private",
        queue=False,
    )
    inputs = [tab.image, tab.text, tab.url, tab.k]
    options = {"api_visibility": "private", **ctx.search_queue}
    gr.on(
        [tab.button.click, tab.url.submit, tab.text.submit],
        on_find_image,
        inputs=inputs,
        outputs=_panel_outputs(tab.panel),
        **options,
    )
    _wire_panel(ctx, tab.panel, tab.k, rerun_inputs=[tab.image, tab.url])


def _wire_panel(ctx: _Context, panel: _ResultsPanel, k_input: gr.Slider, rerun_inputs: list[Any]) -> None:
    """Load more, Refine, More like this (the same in both search tabs; ``rerun_inputs`` give the query image)."""
    engine, gate = ctx.engine, ctx.gate

    def query_image(state: dict[str, Any], image: str | None = None, url: str | None = None) -> bytes | None:
        return load_query_image(engine, image, url) if state.get("image") else None

    @friendly
    def on_load_more(request: gr.Request, state: dict[str, Any] | None, *image: Any) -> tuple[Any, ...]:
        """The next page, appended: the gallery is rebuilt from the ids the session keeps."""
        gate.search(request)
        if not state:
            raise ClipSearchError("search first")
        results = run_state(engine, state, query_image(state, *image), more=True)
        marker = "" if results.page.confident else WEAK_MARKER
        gallery = public_gallery(engine, state_gallery(engine, results.state), request)
        return results.message + marker, gallery, results.state, gr.update(visible=results.page.has_more)

    @friendly
    def on_refine(request: gr.Request, state: dict[str, Any] | None, *image: Any) -> tuple[Any, ...]:
        """The same query again with every mark so far (the details stay open for the next mark)."""
        gate.search(request)
        if not state or not (state["good"] or state["bad"]):
            raise ClipSearchError("mark results with 👍 or 👎 first, then Refine")
        results = run_state(engine, state, query_image(state, *image))
        return _show_page(engine, results, request, close_details=False)

    @friendly
    def on_similar(
        state: dict[str, Any] | None, image_id: float | None, k: float, request: gr.Request
    ) -> tuple[Any, ...]:
        """Neighbours of the opened image, in the same filters and order; the image stays open beside them."""
        gate.search(request)
        if _no_id(image_id):
            raise ClipSearchError("click a result first, then “More like this”")
        record = engine.get(image_id)  # type: ignore[arg-type]  # any value: "no image with id ..." if not an id
        previous = (state or {}).get("request", {})
        query = {"parts": [{"id": record.id}], "k": engine.result_count(k)}
        query.update({key: previous[key] for key in ("filters", "sort") if key in previous})
        fresh = new_state("similar", query, source=record.id)
        return _show_page(engine, run_state(engine, fresh), request, close_details=False)

    private = {"api_visibility": "private"}
    state_in = [panel.state, *rerun_inputs]
    panel.load_more.click(
        on_load_more,
        inputs=state_in,
        outputs=[panel.status, panel.gallery, panel.state, panel.load_more],
        **private,
        **ctx.search_queue,
    )
    panel.refine.click(
        on_refine, inputs=state_in, outputs=[*_panel_outputs(panel)[:4], panel.marks], **private, **ctx.search_queue
    )
    panel.more.click(
        on_similar,
        inputs=[panel.state, panel.selected, k_input],
        outputs=[*_panel_outputs(panel)[:4], panel.marks],
        **private,
        **ctx.search_queue,
    )
    _wire_details(ctx, panel)


def _wire_details(ctx: _Context, panel: _ResultsPanel) -> None:
    """Open a result beside the gallery, mark it 👍 / 👎, close it."""
    engine = ctx.engine

    @friendly
    def on_open(state: dict[str, Any] | None, evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        """A clicked result's image and details, looked up by its id."""
        index = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        hit = opened_hit(engine, state, index)
        if hit is None:
            return None, "", None, gr.update(visible=False), ""
        return (
            public_gallery(engine, [(hit["url"], f"image {hit['id']}")], request),
            describe_hit(hit),
            hit["id"],
            gr.update(visible=True),
            marks_note(state),
        )

    @friendly
    def on_mark(state: dict[str, Any] | None, image_id: float | None, good: bool) -> tuple[Any, ...]:
        marked = mark(state, image_id, good)
        return marked, marks_note(marked)

    private = {"api_visibility": "private"}
    panel.gallery.select(
        on_open,
        inputs=[panel.state],
        outputs=[panel.opened, panel.details_md, panel.selected, panel.details, panel.marks],
        **private,
    ).then(None, js=scroll_into_view(panel.details.elem_id), queue=False, **private)

    def on_good(state: dict[str, Any] | None, image_id: float | None) -> tuple[Any, ...]:
        return on_mark(state, image_id, True)

    def on_bad(state: dict[str, Any] | None, image_id: float | None) -> tuple[Any, ...]:
        return on_mark(state, image_id, False)

    for button, fn in ((panel.good, on_good), (panel.bad, on_bad)):
        button.click(
            fn, inputs=[panel.state, panel.selected], outputs=[panel.state, panel.marks], queue=False, **private
        )
    panel.close.click(_hide, outputs=[panel.details], queue=False, **private)


def _hide() -> Any:
    return gr.update(visible=False)


def _wire_api(ctx: _Context, search: _SearchTab, image: _ImageTab, api: _ApiOutputs) -> None:
    """The named endpoints scripts call (``/search``, ``/search_image``, ``/more_like_this``, ``/query``)."""
    engine, gate = ctx.engine, ctx.gate

    def show(results: Results, request: gr.Request | None) -> tuple[Any, ...]:
        marker = "" if results.confident else WEAK_MARKER
        return results.message + marker, public_gallery(engine, results.gallery(), request), results.as_dicts()

    @friendly
    def on_search(query: str, k: float | str, request: gr.Request) -> tuple[Any, ...]:
        """Text search: images best matching a description, with SigLIP's match probability."""
        gate.search(request)
        return show(text_search(engine, query, k), request)

    @friendly
    def on_search_image(image: str | None, k: float | str, url: str, request: gr.Request) -> tuple[Any, ...]:
        """Image search: images most similar to a query image (a file, or an http(s) URL); it is never stored."""
        gate.search(request)
        return show(image_search(engine, image, url, k), request)

    @friendly
    def on_more_like_this(image_id: float | str | None, k: float | str, request: gr.Request) -> tuple[Any, ...]:
        """ "More like this": the images most similar to one of the collection (by id), itself excluded."""
        gate.search(request)
        return show(more_like_this(engine, image_id, k), request)

    @friendly
    def on_query(query: str | dict[str, Any] | None, image: str | None, request: gr.Request) -> dict[str, Any]:
        """A whole query as JSON (text, minus, parts, like, unlike, filters, sort, k, page), with an optional
        image: one page of results as JSON."""
        gate.search(request)
        try:
            return run_query_json(engine, query, image, url_for=lambda url: public_url(engine, url, request))
        finally:
            if image:
                discard_uploaded_copies([image])

    outputs = [api.status, api.gallery, api.hits]
    for name, fn, inputs in (
        ("search", on_search, [search.query, search.k]),
        ("search_image", on_search_image, [image.image, image.k, image.url]),
        ("more_like_this", on_more_like_this, [search.panel.selected, search.k]),
    ):
        gr.Button(visible=False).click(fn, inputs=inputs, outputs=outputs, api_name=name, **ctx.search_queue)
    gr.Button(visible=False).click(
        on_query, inputs=[api.query, api.image], outputs=[api.page], api_name="query", **ctx.search_queue
    )


def _wire_upload_tab(ctx: _Context, tab: _UploadTab, search: _SearchTab, refresh: dict[str, Any]) -> None:
    engine, gate = ctx.engine, ctx.gate

    @friendly
    def on_upload(
        files: list[str] | None,
        caption: str,
        token: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, list[tuple[str, str]], list[dict[str, Any]]]:
        """Add photos (JPEG, PNG, WebP, HEIC) to the collection, with an optional caption; a result per file."""
        files = list(files or [])
        if not files:
            raise ClipSearchError(no_files_message(engine))
        try:
            allowed, wait = gate.upload(request, min(len(files), engine.settings.upload.max_files), token)
            outcome = upload_files(
                engine,
                files,
                caption,
                allowed=allowed,
                wait_s=wait,
                on_progress=lambda done, total: progress(done / max(total, 1), desc=f"{done} of {total} photos"),
            )
        finally:
            discard_uploaded_copies(files)  # what was kept is in the store; nothing of a refused file stays
        return outcome.message, public_gallery(engine, outcome.added, request), outcome.as_dicts()

    @friendly
    def on_add_samples(request: gr.Request) -> str:
        if ctx.upload_token_needed:
            raise NotAllowed("add the sample photos from the command line: python -m clip_search ingest --samples")
        gate.upload(request, 1, None)
        return add_samples(engine)

    @friendly
    def on_delete(image_id: float | str | None, token: str, request: gr.Request) -> str:
        """Admin only: delete an image (by id) from the collection and the store."""
        gate.delete(request, token)
        return delete_image(engine, image_id)

    event = tab.button.click(
        on_upload,
        inputs=[tab.files, tab.caption, tab.token],
        outputs=[tab.status, tab.added, tab.results],
        api_name="upload",
        **ctx.upload_queue,
    )
    event.success(
        lambda results: (None, gr.update(visible=any(r.get("status") == "added" for r in results or []))),
        inputs=[tab.results],
        outputs=[tab.files, tab.added],
        api_visibility="private",
        queue=False,
    )
    event.then(**refresh)
    search.samples_button.click(
        on_add_samples, outputs=[search.samples_status], api_name="add_samples", **ctx.upload_queue
    ).then(**refresh)
    if tab.admin is not None:
        delete_id, admin_token, delete_button, delete_status = tab.admin
        delete_button.click(
            on_delete, inputs=[delete_id, admin_token], outputs=[delete_status], api_name="delete", **ctx.upload_queue
        ).then(**refresh)


def build_app(engine: SearchEngine) -> gr.Blocks:
    """The whole app over ``engine``. Queue and launch options are the caller's (see ``app.py``)."""
    app = engine.settings.app
    ctx = _Context(
        engine=engine,
        gate=Gate(engine),
        search_queue={"concurrency_id": "search", "concurrency_limit": app.search_concurrency},
        upload_queue={"concurrency_id": "upload", "concurrency_limit": app.upload_concurrency},
        upload_token_needed=token_required(UPLOAD_TOKEN_ENV),
        admin_enabled=token_required(ADMIN_TOKEN_ENV),
    )
    cache = (app.cache_max_age_s, app.cache_max_age_s) if app.cache_max_age_s else None

    @friendly
    def on_load(request: gr.Request) -> tuple[Any, ...]:
        return header_html(engine, _root_api_url(request)), gr.update(visible=engine.count() == 0)

    with gr.Blocks(title=app.title, analytics_enabled=False, delete_cache=cache, fill_width=False) as demo:
        header = gr.HTML(header_html(engine), elem_id="cs-header", js_on_load=OPEN_API_PAGE)
        with gr.Tabs(elem_id="cs-tabs"):
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                search = _search_tab(ctx)
            with gr.Tab("Image-Search", id="image-search", elem_id="tab-image-search"):
                image = _image_tab(ctx)
            with gr.Tab("Upload", id="upload", elem_id="tab-upload"):
                upload = _upload_tab(ctx)
        api = _api_outputs()

        refresh = {
            "fn": on_load,
            "outputs": [header, search.empty],
            "api_visibility": "private",
            "show_progress": "hidden",
        }
        demo.load(**refresh)
        _wire_search_tab(ctx, search)
        _wire_image_tab(ctx, image)
        _wire_api(ctx, search, image, api)
        _wire_upload_tab(ctx, upload, search, refresh)

        @friendly
        def stats() -> PublicStats:
            """Collection size and model name: {"images": int, "model": str}."""
            return public_stats(engine)

        gr.api(stats, api_name="stats", concurrency_limit=None)
        label_api_output(demo, "stats", "stats")
    return demo


def queue_options(engine: SearchEngine) -> dict[str, Any]:
    """``demo.queue(...)``: a bounded queue. Searches and uploads have their own concurrency groups (set on
    the events), so a long upload never takes the slots searches run in."""
    app = engine.settings.app
    return {
        "max_size": app.queue_max_size,
        "default_concurrency_limit": app.search_concurrency,
    }


IMAGE_ROUTE = "/images"  # local storage: images/ab/x.jpg is served at <app>/images/ab/x.jpg


def image_routes(engine: SearchEngine) -> list[Any]:
    """Local storage: the image folder served under ``/images``, so results link to the app, never to a server
    path (Gradio's own ``/file=`` links spell out the folder's absolute path)."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from clip_search.store import LocalImageStore

    if not isinstance(engine.store, LocalImageStore):
        return []
    return [Mount(IMAGE_ROUTE, app=StaticFiles(directory=engine.store.root, check_dir=False), name="images")]


def public_gallery(
    engine: SearchEngine, items: Sequence[tuple[str, str]], request: gr.Request | None
) -> list[tuple[str, str]]:
    """Gallery items whose local files are given as ``<app>/images/...`` links (absolute, so API clients and a
    ``<gradio-app>`` embedded elsewhere can fetch them); presigned S3 URLs go through untouched."""
    from clip_search.store import LocalImageStore

    store = engine.store
    base = _public_root(request) if isinstance(store, LocalImageStore) else None
    if base is None:
        return list(items)
    return [(_served(store.root, url, base), caption) for url, caption in items]


def public_url(engine: SearchEngine, url: str, request: gr.Request | None) -> str:
    """One image's link as a visitor or an API client gets it: ``<app>/images/...`` for the local store (never
    a server path), presigned S3 URLs untouched."""
    return public_gallery(engine, [(url, "")], request)[0][0]


def _served(root: Path, url: str, base: str) -> str:
    path = Path(url)
    if path.is_absolute() and path.is_relative_to(root):
        return f"{base}{IMAGE_ROUTE}/{path.relative_to(root).as_posix()}"
    return url


def _public_root(request: gr.Request | None) -> str | None:
    """The app's public address as the visitor reached it (behind a proxy too), or None outside a request."""
    try:
        from gradio import route_utils

        inner = request.request  # type: ignore[union-attr]
        path = inner.url.path
        cut = path.find("/gradio_api/")
        return route_utils.get_root_url(inner, route_path=path[cut:] if cut >= 0 else path, root_path=None)
    except Exception:
        return None


def launch_options(engine: SearchEngine) -> dict[str, Any]:
    """What ``app.py`` passes to ``launch()`` besides the address: files, limits, look, the ``/images`` route."""
    from clip_search.store import LocalImageStore

    store = engine.store
    allowed = [str(store.root)] if isinstance(store, LocalImageStore) else []
    return {
        "app_kwargs": {"routes": image_routes(engine)},
        "allowed_paths": allowed,
        "max_file_size": engine.settings.upload.max_bytes,
        "theme": theme(),
        "css": CSS,
        "footer_links": ["api", "gradio", "settings"],
        "show_error": False,
        # Gradio keeps a copy of the page's settings and every output per session: at most app.max_sessions of
        # them stay in memory (the longest idle one is forgotten first; its visitor simply searches again).
        "state_session_capacity": engine.settings.app.max_sessions,
    }


def serve_local_images(engine: SearchEngine) -> None:
    """Serve the local image folder in place (no copy into Gradio's cache per search); nothing else of the disk."""
    from clip_search.store import LocalImageStore

    if isinstance(engine.store, LocalImageStore):
        gr.set_static_paths([str(engine.store.root)])
