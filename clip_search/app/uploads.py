"""The Upload tab's handlers: each file checked, handed to the engine, and a result per file (with its delete
code, shown this once); and taking a photo back with that code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_search.access import RateLimiter
from clip_search.app.text import collection_size, gradio_size, md_escape, mib, sentence
from clip_search.engine import PRIVATE, PUBLIC, AddResult, SearchEngine
from clip_search.errors import ClipSearchError
from clip_search.visitor_keys import new_visitor_key, normalized_key

log = logging.getLogger(__name__)


@dataclass
class UploadOutcome:
    results: list[AddResult]
    count: int  # collection size afterwards
    message: str  # Markdown: summary and a per-file table
    added: list[tuple[str, str]] = field(default_factory=list)  # gallery items of the added photos
    visitor_key: str | None = None  # the key generated for these private photos, shown once

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "file": r.source,
                "status": r.status,
                "message": _file_message(r),
                "id": r.id,
                "duplicate_of": r.duplicate_of,
                "visibility": r.visibility,
                "delete_code": r.delete_code,
                **({"visitor_key": self.visitor_key} if self.visitor_key and r.visibility else {}),
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
    return sentence(text)


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
        f"choose one or more photos to upload first (a file over {mib(limit)} is refused by your browser, "
        f"which writes that limit as “{gradio_size(limit)}”)"
    )


def upload_files(
    engine: SearchEngine,
    files: Sequence[str | Path] | None,
    caption: str | None = None,
    *,
    allowed: int | None = None,
    wait_s: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
    private: bool = False,
    key: str | None = None,
    client: str | None = None,
) -> UploadOutcome:
    """The Upload tab: each file validated, stored, embedded and indexed, with a result per file.

    ``allowed`` is how many files the visitor's rate limit lets through now (the rest are refused, saying when
    to come back after ``wait_s``); files beyond ``upload.max_files`` are refused too. ``private`` photos are
    kept for whoever has ``key`` (one is generated when it is empty). Never raises for a bad file: a file that
    cannot be used is ``rejected`` with the reason.
    """
    paths = [Path(f) for f in files or []]
    if not paths:
        raise ClipSearchError(no_files_message(engine))
    limits = engine.settings.upload
    allowed = len(paths) if allowed is None else allowed
    generated = new_visitor_key() if private and not normalized_key(key) else None
    owner_key = (normalized_key(key) or generated) if private else None
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
        results.append(
            engine.upload(path.read_bytes(), filename=name, caption=caption, owner_key=owner_key, client=client)
        )
    if on_progress is not None:
        on_progress(len(paths), len(paths))
    kept = generated if any(r.visibility for r in results) else None
    return UploadOutcome(
        results, engine.count(), _summary(engine, results, kept), _added_gallery(engine, results), kept
    )


def _summary(engine: SearchEngine, results: list[AddResult], generated: str | None) -> str:
    """The Markdown under the button: the counts, the key and codes to keep (shown only now), a row per file."""
    count = engine.count()
    counts = {status: sum(r.status == status for r in results) for status in ("added", "duplicate", "rejected")}
    summary = ", ".join(
        f"**{n} {label}**" if status == "added" else f"{n} {label}"
        for status, label in (("added", "added"), ("duplicate", "already there"), ("rejected", "rejected"))
        if (n := counts[status])
    )
    codes = any(r.delete_code for r in results)
    table = (
        "| | File | Result | Delete code |\n|---|---|---|---|\n" if codes else "| | File | Result |\n|---|---|---|\n"
    ) + (
        "\n".join(
            f"| {_STATUS_MARK[r.status]} | {md_escape(r.source or 'upload')} | {md_escape(_file_message(r))} |"
            + (f" {_code(r.delete_code)} |" if codes else "")
            for r in results
        )
    )
    visible = [r for r in results if r.status == "added" and r.visibility == PUBLIC]
    searchable = " New photos are searchable right away." if visible else ""
    message = f"{summary} · the collection now holds **{collection_size(count)}**.{searchable}"
    if generated:
        message += (
            f"\n\n**Your key for these private photos: {_code(generated)}**. Keep it: it is shown only now, and "
            "only searches with it find them."
        )
    if codes:
        message += "\n\n**Keep the delete codes** (shown only now): with one, you can take that photo back at any time."
    return f"{message}\n\n{table}"


def _code(text: str | None) -> str:
    return f"`{text}`" if text else ""


def _added_gallery(engine: SearchEngine, results: list[AddResult]) -> list[tuple[str, str]]:
    """The new photos the uploader may look at: public and their own private ones (a held photo has no link)."""
    added = []
    for r in results:
        if r.status == "added" and r.key and r.visibility in (PUBLIC, PRIVATE):
            try:
                added.append((engine.store.url(r.key), f"image {r.id}"))
            except ClipSearchError:
                log.warning("no URL for new image %s", r.id)
    return added


def delete_mine(engine: SearchEngine, code: str | None) -> str:
    """ "Take a photo back": the delete code given at upload removes that photo everywhere. A wrong code gets the
    same answer as a photo already gone."""
    if not normalized_key(code):
        raise ClipSearchError("paste the delete code you were given when you uploaded the photo")
    record = engine.delete_mine(code)
    return f"Deleted image {record.id}: it is gone from the collection and the storage."
