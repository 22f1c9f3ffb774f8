"""The tabs and panels of the page: components only, no events (see :mod:`clip_search.app.events`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from clip_search.app.components import id_field, query_image_input, results_slider, upload_files_input
from clip_search.app.guard import Gate
from clip_search.app.session import ORIENTATION_CHOICES, SORTS, SOURCE_CHOICES
from clip_search.app.text import empty_notice, gradio_size, mib
from clip_search.engine import SearchEngine


@dataclass
class Context:
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


@dataclass
class ResultsPanel:
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
class ApiOutputs:
    """Hidden components the API endpoints answer into (the page's panels keep no hit dicts per visitor)."""

    status: gr.Markdown
    gallery: gr.Gallery
    hits: gr.JSON
    query: gr.JSON
    image: gr.File
    page: gr.JSON


def _results_panel(name: str) -> ResultsPanel:
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
    return ResultsPanel(status, gallery, load_more, details, *parts, selected, state)


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
class SearchTab:
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
    panel: ResultsPanel

    @property
    def inputs(self) -> list[Any]:
        return [self.query, self.without, *self.filters, self.sort, self.k]


def search_tab(ctx: Context) -> SearchTab:
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
    return SearchTab(query, button, without, sort, k, filters, examples, empty, samples_button, samples_status, panel)


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
class ImageTab:
    image: gr.Image
    text: gr.Textbox
    url: gr.Textbox
    k: gr.Slider
    button: gr.Button
    panel: ResultsPanel


def image_tab(ctx: Context) -> ImageTab:
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
    return ImageTab(image, text, url, k, button, _results_panel("image"))


@dataclass
class UploadTab:
    files: gr.File
    caption: gr.Textbox
    token: gr.Textbox
    button: gr.Button
    status: gr.Markdown
    added: gr.Gallery
    results: gr.JSON
    admin: tuple[Any, ...] | None  # image id, token, button, status


def upload_tab(ctx: Context) -> UploadTab:
    upload = ctx.engine.settings.upload
    names = {"HEIF": "HEIC", "WEBP": "WebP"}
    formats = ", ".join(names.get(f, f) for f in upload.formats)
    gr.Markdown(
        f"Add your photos to the collection: {formats}; up to {mib(upload.max_bytes)} each "
        f"(“{gradio_size(upload.max_bytes)}” in the browser's warning) and {upload.max_files} at a time. "
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
    return UploadTab(files, caption, token, button, status, added, results, admin)


def api_outputs() -> ApiOutputs:
    with gr.Column(visible=False):
        return ApiOutputs(
            status=gr.Markdown(label="message"),
            gallery=gr.Gallery(label="Results", interactive=False),
            hits=gr.JSON(label="hits"),
            query=gr.JSON(label="query"),
            image=gr.File(label="image", file_count="single", type="filepath"),
            page=gr.JSON(label="page"),
        )
