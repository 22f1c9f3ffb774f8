"""What each control does: the page's components wired to the handlers, through the Gate and
:func:`friendly`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from clip_search.app.components import scroll_into_view
from clip_search.app.guard import NotAllowed, friendly
from clip_search.app.handlers import (
    Results,
    add_samples,
    check_query_image,
    delete_image,
    image_search,
    is_blank_id,
    load_query_image,
    more_like_this,
    run_query_json,
    text_search,
)
from clip_search.app.layout import ApiOutputs, Context, ImageTab, ResultsPanel, SearchTab, UploadTab
from clip_search.app.routes import public_gallery, public_url
from clip_search.app.session import (
    PageResults,
    mark,
    marks_note,
    new_state,
    opened_hit,
    run_state,
    search_request,
    state_gallery,
)
from clip_search.app.text import WEAK_MARKER, describe_hit, md_escape, sentence
from clip_search.app.uploads import discard_uploaded_copies, no_files_message, upload_files
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError


def _panel_outputs(panel: ResultsPanel) -> list[Any]:
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


def wire_search_tab(ctx: Context, tab: SearchTab) -> None:
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


def wire_image_tab(ctx: Context, tab: ImageTab) -> None:
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
            return None, f"**Sorry:** {md_escape(sentence(str(exc)))}"
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


def _wire_panel(ctx: Context, panel: ResultsPanel, k_input: gr.Slider, rerun_inputs: list[Any]) -> None:
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
        if is_blank_id(image_id):
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


def _wire_details(ctx: Context, panel: ResultsPanel) -> None:
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


def wire_api(ctx: Context, search: SearchTab, image: ImageTab, api: ApiOutputs) -> None:
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


def wire_upload_tab(ctx: Context, tab: UploadTab, search: SearchTab, refresh: dict[str, Any]) -> None:
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
