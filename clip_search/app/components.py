"""The app's look and its custom inputs (whose values reach the handlers unconverted)."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

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
