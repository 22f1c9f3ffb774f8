"""What visitors read: Markdown/HTML formatting of results, details, sizes and the header."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_search.engine import SearchEngine, SearchHit

HOW_TO_ADD = (
    "Add photos in the **Upload** tab, or on the server run `python -m clip_search ingest --samples` "
    "(a dozen sample photos) or `python -m clip_search ingest path/to/photos`."
)
WEAK_MARKER = '\n\n<span class="cs-weak-marker"></span>'  # the stylesheet greys out a gallery of weak matches


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
        "source": display_source(hit.source),
        "metadata": hit.metadata,
        "added_at": hit.added_at,
        "key": hit.key,
    }


def display_source(source: str | None) -> str | None:
    """A file name, never the server's folder layout."""
    if not source:
        return None
    return Path(source).name or source


def sentence(message: str) -> str:
    message = " ".join(str(message).split())
    return message[:1].upper() + message[1:] if message else message


def plural_count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def collection_size(n: int) -> str:
    return f"{n:,} image" + ("" if n == 1 else "s")


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
        f"model <code>{html.escape(model_name(engine.settings.model.id))}</code> · "
        f'<a class="cs-api" href="{html.escape(api_url, quote=True)}" target="_blank" rel="noopener">API</a>'
        "</p></div>"
    )


def model_name(model_id: str) -> str:
    path = Path(model_id)
    return path.name if path.is_absolute() else model_id  # a local checkpoint: its folder name, not the disk layout


def empty_notice(engine: SearchEngine) -> str:
    """Shown while the collection is empty: what to do about it."""
    return f"### The collection is empty\n{HOW_TO_ADD}"


def best_below(best: float, threshold: float) -> str:
    """``the best is a 31% match`` and, when the threshold is high enough for rounding to blur the two, both
    figures precise enough to differ (never "no good match ... the best is a >99% match")."""
    if threshold <= 0.5 or percent(best) not in (percent(threshold), ">99%"):
        return f"the best is a {percent(best)} match"
    places = next(n for n in range(1, 8) if abs(round(threshold * 100, n) - threshold * 100) < 1e-9 or n == 7)
    shown = math.floor(best * 100 * 10**places) / 10**places  # at the threshold's precision, below it
    return f"the best is a {shown:.{places}f}% match, below the {threshold * 100:.{places}f}% asked for here"


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


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def gradio_size(size: int) -> str:
    """The limit as Gradio's page writes it in its own warning (1024-based, with the unit spelled "Mb")."""
    value, units = float(size), ["b", "Kb", "Mb", "Gb", "Tb"]
    step = 0
    while value >= 1024 and step < len(units) - 1:
        value, step = value / 1024, step + 1
    return f"{value:.1f} {units[step]}"
