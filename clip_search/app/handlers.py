"""The plain handlers of the search tabs and the API: the engine and plain values in, plain values out,
so they are tested without a browser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from clip_search.app.guard import NotAllowed
from clip_search.app.text import (
    HOW_TO_ADD,
    best_below,
    collection_size,
    display_source,
    hit_caption,
    hit_to_dict,
    md_escape,
    model_name,
    percent,
    plural_count,
)
from clip_search.engine import SearchEngine, SearchHit
from clip_search.errors import ClipSearchError, InvalidQueryError
from clip_search.images import open_image
from clip_search.search import Query
from clip_search.urlfetch import fetch_url

Kind = Literal["text", "image", "similar"]


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


def text_search(engine: SearchEngine, query: str, k: float | str | None = None) -> Results:
    """The Search tab. Raises EmptyQueryError (a ClipSearchError) for an empty query."""
    hits = engine.search_text(query, k)
    shown = md_escape(query)
    if not hits:
        return Results("text", [], f"Nothing to search yet. {HOW_TO_ADD}" if engine.count() == 0 else "No results.")
    best = max(h.probability or 0.0 for h in hits)
    if engine.is_confident(hits):
        message = f"**{plural_count(hits, 'result')}** for “{shown}” · best match {percent(best)}"
        return Results("text", hits, message, confident=True)
    message = (
        f"**No good match for “{shown}”.** None of the {collection_size(engine.count())} matches it well "
        f"({best_below(best, engine.settings.search.min_probability)}). The closest ones are below, but they are "
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
    return Results("image", hits, f"**{plural_count(hits, 'image')}** most similar to your picture")


def more_like_this(engine: SearchEngine, image_id: int | float | str | None, k: float | str | None = None) -> Results:
    """Neighbours of an image of the collection (itself excluded)."""
    if is_blank_id(image_id):
        raise ClipSearchError("click a result first, then “More like this”")
    record = engine.get(image_id)  # type: ignore[arg-type]  # any value: "no image with id ..." if not an id
    hits = engine.search_similar(record.id, k)
    label = f" “{md_escape(record.caption)}”" if record.caption else ""
    return Results("similar", hits, f"**{plural_count(hits, 'image')}** like image {record.id}{label}")


def is_blank_id(image_id: object) -> bool:
    """Nothing chosen: an empty field (None, blank, NaN), as opposed to an id that names no image."""
    if isinstance(image_id, float):
        return math.isnan(image_id)
    return image_id is None or (isinstance(image_id, str) and not image_id.strip())


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
        hit["source"] = display_source(hit["source"])
    return out


def add_samples(engine: SearchEngine) -> str:
    """The "Add the sample photos" button of an empty collection (``ingest --samples``, from the app)."""
    from clip_search.ingest import ingest_samples

    if engine.count() > 0:
        return f"The collection already holds {collection_size(engine.count())}."
    report = ingest_samples(engine, progress=False)
    return f"Added {report.added} sample photos: the collection now holds {collection_size(engine.count())}."


def delete_image(engine: SearchEngine, image_id: int | float | str | None) -> str:
    """Admin: remove an image from the collection and the store."""
    if is_blank_id(image_id):
        raise ClipSearchError("give the id of the image to delete (it is shown when you click a result)")
    record = engine.delete(image_id)  # type: ignore[arg-type]  # any value: "no image with id ..." if not an id
    return f"Deleted image {record.id}. The collection now holds {collection_size(engine.count())}."


class PublicStats(TypedDict):
    """What ``/stats`` answers (typed, so the API page lists the fields)."""

    images: int
    model: str


def public_stats(engine: SearchEngine) -> PublicStats:
    """Facts safe to show anyone (no paths, no bucket names)."""
    return {"images": engine.count(), "model": model_name(engine.settings.model.id)}
