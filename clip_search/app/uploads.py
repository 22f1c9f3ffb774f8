"""The Upload tab's handler: each file checked, handed to the engine, and a result per file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_search.access import RateLimiter
from clip_search.app.text import collection_size, gradio_size, md_escape, mib, sentence
from clip_search.engine import AddResult, SearchEngine
from clip_search.errors import ClipSearchError

log = logging.getLogger(__name__)


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
