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
from clip_search.errors import CatalogError, ClipSearchError, NotFoundError, StorageError
from clip_search.images import open_image
from clip_search.urlfetch import fetch_url

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["text", "image", "similar"]

HOW_TO_ADD = (
    "Add photos in the **Upload** tab, or on the server run `python -m clip_search ingest --samples` "
    "(a dozen sample photos) or `python -m clip_search ingest path/to/photos`."
)
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
    else:
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
    """Every error a visitor can meet becomes a short message in plain words; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TooManyRequests as exc:
            raise gr.Error(html.escape(str(exc)), title="Slow down", print_exception=False) from None
        except NotAllowed as exc:
            raise gr.Error(html.escape(_sentence(str(exc))), title="Not allowed", print_exception=False) from None
        except NotFoundError as exc:
            raise gr.Error(html.escape(_sentence(str(exc))), title="Not found", print_exception=False) from None
        except (StorageError, CatalogError) as exc:  # names endpoints, buckets, keys, paths: for the log only
            log.warning("storage error in %s: %s", getattr(fn, "__name__", fn), exc)
            raise gr.Error(STORAGE_UNAVAILABLE, title="Sorry", print_exception=False) from None
        except ClipSearchError as exc:
            raise gr.Error(html.escape(_sentence(str(exc))), title="Sorry", print_exception=False) from None
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


def _root_api_url(request: gr.Request | None) -> str:
    """An absolute link to the API page, so it also works from a <gradio-app> embedded in another site."""
    try:
        from gradio import route_utils

        root = route_utils.get_root_url(request.request, route_path="/gradio_api/queue/join", root_path=None)
        return f"{root}/?view=api"
    except Exception:
        return "?view=api"


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
    status: gr.Markdown
    gallery: gr.Gallery
    hits: gr.State
    json: gr.JSON
    details: gr.Column
    details_md: gr.Markdown
    selected: gr.Number
    more: gr.Button
    close: gr.Button


def _results_panel(name: str) -> _ResultsPanel:
    with gr.Column(elem_classes=["cs-panel"]):
        status = gr.Markdown(label="message", elem_classes=["cs-status"], elem_id=f"{name}-status")
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
        with gr.Column(visible=False, elem_classes=["cs-details"], elem_id=f"{name}-details") as details:
            details_md = gr.Markdown()
            with gr.Row():
                more = gr.Button(
                    "More like this", variant="primary", size="sm", scale=0, min_width=160, elem_id=f"{name}-more"
                )
                close = gr.Button("Close", size="sm", scale=0, min_width=100, elem_id=f"{name}-close")
        selected = id_field(visible=False, precision=0, label="image id")
        hits = gr.State([])
        json = gr.JSON(visible=False, label="hits")
    return _ResultsPanel(status, gallery, hits, json, details, details_md, selected, more, close)


def build_app(engine: SearchEngine) -> gr.Blocks:
    """The whole app over ``engine``. Queue and launch options are the caller's (see ``app.py``)."""
    settings = engine.settings
    app = settings.app
    gate = Gate(engine)
    k_max = settings.search.max_k
    k_default = settings.search.default_k
    upload_token_needed = token_required(UPLOAD_TOKEN_ENV)
    admin_enabled = token_required(ADMIN_TOKEN_ENV)
    search_queue = {"concurrency_id": "search", "concurrency_limit": app.search_concurrency}
    upload_queue = {"concurrency_id": "upload", "concurrency_limit": app.upload_concurrency}
    cache = (app.cache_max_age_s, app.cache_max_age_s) if app.cache_max_age_s else None

    def show(results: Results, request: gr.Request | None = None) -> tuple[Any, ...]:
        # the marker lets the stylesheet grey out the gallery of a query that matched nothing well
        marker = "" if results.confident else '\n\n<span class="cs-weak-marker"></span>'
        return (
            results.message + marker,
            public_gallery(engine, results.gallery(), request),
            [hit_to_dict(h) for h in results.hits],
            results.as_dicts(),
            gr.update(visible=False),
        )

    # -- wrappers: request -> access checks -> plain handler -> component values

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
    def on_query_image(image: str | None) -> tuple[Any, Any]:
        """A picture that cannot be searched with is taken out of the box, and the reason shown under it."""
        try:
            check_query_image(engine, image)
        except ClipSearchError as exc:
            return None, f"**Sorry:** {md_escape(_sentence(str(exc)))}"
        return gr.skip(), gr.skip()

    @friendly
    def on_more_like_this(image_id: float | str | None, k: float | str, request: gr.Request) -> tuple[Any, ...]:
        """ "More like this": the images most similar to one of the collection (by id), itself excluded."""
        gate.search(request)
        return show(more_like_this(engine, image_id, k), request)

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
            allowed, wait = gate.upload(request, min(len(files), settings.upload.max_files), token)
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
        if upload_token_needed:
            raise NotAllowed("add the sample photos from the command line: python -m clip_search ingest --samples")
        gate.upload(request, 1, None)
        return add_samples(engine)

    @friendly
    def on_delete(image_id: float | str | None, token: str, request: gr.Request) -> str:
        """Admin only: delete an image (by id) from the collection and the store."""
        gate.delete(request, token)
        return delete_image(engine, image_id)

    @friendly
    def on_load(request: gr.Request) -> tuple[Any, ...]:
        empty = engine.count() == 0
        return header_html(engine, _root_api_url(request)), gr.update(visible=empty)

    def on_select(hits: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        if not hits or not 0 <= index < len(hits):
            return "", None, gr.update(visible=False)
        hit = hits[index]
        return describe_hit(hit), hit["id"], gr.update(visible=True)

    def hide() -> Any:
        return gr.update(visible=False)

    with gr.Blocks(title=app.title, analytics_enabled=False, delete_cache=cache, fill_width=False) as demo:
        header = gr.HTML(header_html(engine), elem_id="cs-header", js_on_load=OPEN_API_PAGE)
        with gr.Tabs(elem_id="cs-tabs"):
            # -- Search ------------------------------------------------------------------------------------------
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                with gr.Column(visible=engine.count() == 0, elem_classes=["cs-empty"], elem_id="cs-empty") as empty:
                    gr.Markdown(empty_notice(engine))
                    with gr.Row():
                        samples_button = gr.Button(
                            "Add the sample photos",
                            variant="primary",
                            size="sm",
                            scale=0,
                            min_width=200,
                            visible=not upload_token_needed,
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
                    search_button = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
                with gr.Row(equal_height=True):
                    with gr.Column(scale=4):
                        examples = gr.Examples(
                            app.examples, inputs=[query], label="Try", examples_per_page=len(app.examples)
                        )
                    with gr.Column(scale=1, min_width=220):
                        k_text = results_slider(1, k_max, value=k_default, step=1, label="Results", elem_id="search-k")
                text_panel = _results_panel("search")

            # -- Image-Search ------------------------------------------------------------------------------------
            with gr.Tab("Image-Search", id="image-search", elem_id="tab-image-search"):
                gr.Markdown("Upload, paste or take a picture: the most similar photos of the collection appear below.")
                with gr.Row():
                    with gr.Column(scale=2):
                        query_image = query_image_input(
                            type="filepath",
                            sources=["upload", "clipboard", "webcam"],
                            label="Your picture (it is not added to the collection)",
                            height=300,
                            elem_id="image-query",
                        )
                    with gr.Column(scale=3):
                        image_url = gr.Textbox(
                            label="…or an image URL",
                            placeholder="https://example.com/photo.jpg",
                            max_lines=1,
                            visible=app.allow_image_urls,
                            elem_id="image-url",
                        )
                        k_image = results_slider(1, k_max, value=k_default, step=1, label="Results", elem_id="image-k")
                        image_button = gr.Button("Find similar images", variant="primary", elem_id="image-button")
                image_panel = _results_panel("image")

            # -- Upload ------------------------------------------------------------------------------------------
            with gr.Tab("Upload", id="upload", elem_id="tab-upload"):
                names = {"HEIF": "HEIC", "WEBP": "WebP"}
                formats = ", ".join(names.get(f, f) for f in settings.upload.formats)
                gr.Markdown(
                    f"Add your photos to the collection: {formats}; up to {_mib(settings.upload.max_bytes)} each "
                    f"(“{_gradio_size(settings.upload.max_bytes)}” in the browser's warning) and "
                    f"{settings.upload.max_files} at a time. "
                    + (
                        "Photos are stored re-encoded, without their metadata (location, camera, dates). "
                        if not settings.upload.keep_metadata
                        else ""
                    )
                    + "They can be found by every visitor from the very next search."
                )
                files = upload_files_input(
                    file_count="multiple",
                    label="Photos",
                    height=180,
                    elem_id="upload-files",
                )
                with gr.Row():
                    caption = gr.Textbox(
                        label="Caption (optional, for all these photos)",
                        max_lines=2,
                        max_length=settings.upload.max_caption_chars,
                        scale=3,
                        elem_id="upload-caption",
                    )
                    token = gr.Textbox(
                        label="Upload token",
                        type="password",
                        visible=upload_token_needed,
                        scale=1,
                        elem_id="upload-token",
                    )
                upload_button = gr.Button("Upload", variant="primary", elem_id="upload-button")
                upload_status = gr.Markdown(label="message", elem_id="upload-status")
                added_gallery = gr.Gallery(
                    label="Added",
                    visible=False,
                    fit_columns=False,
                    height=240,
                    columns=6,
                    object_fit="cover",
                    interactive=False,
                    elem_id="upload-gallery",
                )
                upload_json = gr.JSON(visible=False, label="results")
                if admin_enabled:
                    with gr.Accordion("Admin", open=False, elem_id="cs-admin"):
                        delete_id = id_field(label="Image id", precision=0)
                        admin_token = gr.Textbox(label="Admin token", type="password")
                        delete_button = gr.Button("Delete image", variant="stop")
                        delete_status = gr.Markdown(label="message")

        # -- events ------------------------------------------------------------------------------------------------
        refresh = {
            "fn": on_load,
            "inputs": None,
            "outputs": [header, empty],
            "api_visibility": "private",
            "show_progress": "hidden",
        }
        demo.load(**refresh)

        def results_outputs(panel: _ResultsPanel) -> list[Any]:
            return [panel.status, panel.gallery, panel.hits, panel.json, panel.details]

        def reveal(event: Any, panel: _ResultsPanel) -> None:
            """Galleries stay hidden until they have something to show (no empty placeholder boxes)."""
            event.success(
                lambda hits: gr.update(visible=bool(hits)),
                inputs=[panel.hits],
                outputs=[panel.gallery],
                api_visibility="private",
                queue=False,
            )

        text_inputs = [query, k_text]
        search_event = gr.on(
            [query.submit, search_button.click],
            on_search,
            inputs=text_inputs,
            outputs=results_outputs(text_panel),
            api_name="search",
            **search_queue,
        )
        reveal(search_event, text_panel)
        example_event = examples.load_input_event.then(
            on_search, inputs=text_inputs, outputs=results_outputs(text_panel), api_visibility="private", **search_queue
        )
        reveal(example_event, text_panel)
        image_event = image_button.click(
            on_search_image,
            inputs=[query_image, k_image, image_url],
            outputs=results_outputs(image_panel),
            api_name="search_image",
            **search_queue,
        )
        reveal(image_event, image_panel)
        query_image.upload(
            on_query_image,
            inputs=[query_image],
            outputs=[query_image, image_panel.status],
            api_visibility="private",
            queue=False,
        )
        url_event = image_url.submit(
            on_search_image,
            inputs=[query_image, k_image, image_url],
            outputs=results_outputs(image_panel),
            api_visibility="private",
            **search_queue,
        )
        reveal(url_event, image_panel)
        for panel, k_input, public in ((text_panel, k_text, True), (image_panel, k_image, False)):
            panel.gallery.select(
                on_select,
                inputs=[panel.hits],
                outputs=[panel.details_md, panel.selected, panel.details],
                api_visibility="private",
                queue=False,
            ).then(None, js=scroll_into_view(panel.details.elem_id), api_visibility="private", queue=False)
            panel.gallery.preview_close(hide, outputs=[panel.details], api_visibility="private", queue=False)
            panel.close.click(hide, outputs=[panel.details], api_visibility="private", queue=False)
            more_event = panel.more.click(
                on_more_like_this,
                inputs=[panel.selected, k_input],
                outputs=results_outputs(panel),
                api_name="more_like_this" if public else None,
                api_visibility="public" if public else "private",
                scroll_to_output=True,
                **search_queue,
            )
            reveal(more_event, panel)
        upload_event = upload_button.click(
            on_upload,
            inputs=[files, caption, token],
            outputs=[upload_status, added_gallery, upload_json],
            api_name="upload",
            **upload_queue,
        )
        upload_event.success(
            lambda results: (None, gr.update(visible=any(r.get("status") == "added" for r in results or []))),
            inputs=[upload_json],
            outputs=[files, added_gallery],
            api_visibility="private",
            queue=False,
        )
        upload_event.then(**refresh)
        samples_button.click(on_add_samples, outputs=[samples_status], api_name="add_samples", **upload_queue).then(
            **refresh
        )
        if admin_enabled:
            delete_button.click(
                on_delete,
                inputs=[delete_id, admin_token],
                outputs=[delete_status],
                api_name="delete",
                **upload_queue,
            ).then(**refresh)

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
    return {"max_size": app.queue_max_size, "default_concurrency_limit": app.search_concurrency}


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
    base = _root_url(request) if isinstance(store, LocalImageStore) else None
    if base is None:
        return list(items)
    public = []
    for url, caption in items:
        path = Path(url)
        if path.is_absolute() and path.is_relative_to(store.root):
            url = f"{base}{IMAGE_ROUTE}/{path.relative_to(store.root).as_posix()}"
        public.append((url, caption))
    return public


def _root_url(request: gr.Request | None) -> str | None:
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
    }


def serve_local_images(engine: SearchEngine) -> None:
    """Serve the local image folder in place (no copy into Gradio's cache per search); nothing else of the disk."""
    from clip_search.store import LocalImageStore

    if isinstance(engine.store, LocalImageStore):
        gr.set_static_paths([str(engine.store.root)])
