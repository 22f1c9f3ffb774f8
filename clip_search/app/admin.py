"""The admin's handlers (behind the admin token): review held uploads, list the newest uploads with their
moderation score and uploader's client id, delete in bulk. Plain values in and out, like the search handlers."""

from __future__ import annotations

import re
from typing import Any

from clip_search.app.text import collection_size, md_escape
from clip_search.engine import ImageRecord, SearchEngine
from clip_search.errors import ClipSearchError

MAX_IDS = 1000  # ids in one admin request


def parse_ids(text: str | float | int | None) -> list[int]:
    """ "12, 31 40" -> [12, 31, 40]; anything that is not a list of whole numbers is refused in words."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(int(text)) if float(text).is_integer() else str(text)
    words = [w for w in re.split(r"[\s,;]+", str(text or "")) if w]
    if not words:
        raise ClipSearchError("give the ids of the images (several: 12, 31, 40)")
    if len(words) > MAX_IDS or not all(w.isdigit() and len(w) <= 30 for w in words):
        raise ClipSearchError(f"image ids are whole numbers separated by commas or spaces (at most {MAX_IDS})")
    return list(dict.fromkeys(int(w) for w in words))


def delete_images(engine: SearchEngine, ids: str | float | None) -> str:
    """Admin: delete images (ids as "12, 31, 40") from the store and the collection, in one commit."""
    wanted = parse_ids(ids)
    gone = engine.delete_many(wanted)
    if not gone:
        raise ClipSearchError(f"no image with {'that id' if len(wanted) == 1 else 'those ids'} in the collection")
    return (
        f"Deleted {_ids(r.id for r in gone)}{_missing(wanted, gone)}. "
        f"The collection now holds {collection_size(engine.count())}."
    )


NOT_HELD = "None of those images is waiting for review."


def approve_images(engine: SearchEngine, ids: str | float | None) -> str:
    """Admin: held uploads (ids as "12, 31") become visible: public, or private to their owner."""
    done = engine.approve(parse_ids(ids))
    return f"Approved {_ids(done)}." if done else NOT_HELD


def reject_images(engine: SearchEngine, ids: str | float | None) -> str:
    """Admin: held uploads (ids as "12, 31") are deleted from the store and the collection."""
    gone = engine.reject(parse_ids(ids))
    return f"Rejected and deleted {_ids(r.id for r in gone)}." if gone else NOT_HELD


def upload_rows(records: list[ImageRecord]) -> list[dict[str, Any]]:
    """What the admin endpoints answer per upload (the operator's view: visibility, score, client id)."""
    return [r.upload_facts() for r in records]


def uploads_table(records: list[ImageRecord], empty: str) -> str:
    """The same rows as a Markdown table for the admin accordion."""
    if not records:
        return empty
    lines = ["| Image | Added | Visibility | Score | Client | File |", "|---|---|---|---|---|---|"]
    for row in upload_rows(records):
        score = "-" if row["moderation_score"] is None else f"{row['moderation_score']:.3f}"
        lines.append(
            f"| {row['id']} | {row['added_at'][:19].replace('T', ' ')} | {row['visibility']} | {score} | "
            f"{row['client_id'] or '-'} | {md_escape(row['filename'] or '')} |"
        )
    return "\n".join(lines)


def _ids(ids: Any) -> str:
    listed = [str(i) for i in ids]
    return f"image{'s' if len(listed) != 1 else ''} {', '.join(listed)}"


def _missing(wanted: list[int], gone: list[ImageRecord]) -> str:
    missing = len(wanted) - len(gone)
    return f" ({missing} not found)" if missing else ""
