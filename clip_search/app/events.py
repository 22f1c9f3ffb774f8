"""What each control does: the page's components wired to the handlers, through the Gate and
:func:`friendly`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from clip_search.app import admin
from clip_search.app.components import scroll_into_view
from clip_search.app.guard import NotAllowed, friendly
from clip_search.app.handlers import (
    Results,
    add_samples,
    check_query_image,
    image_search,
    is_blank_id,
    load_query_image,
    more_like_this,
    parse_query_json,
    run_query_json,
    text_search,
)
from clip_search.app.layout import AdminPanel, ApiOutputs, Context, ImageTab, ResultsPanel, SearchTab, UploadTab
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
    state_viewer,
)
from clip_search.app.text import OPENED_MARKER, WEAK_MARKER, describe_hit, md_escape, panel_markers, sentence
from clip_search.app.uploads import delete_mine, discard_uploaded_copies, no_files_message, upload_files
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError


def _panel_outputs(panel: ResultsPanel) -> list[Any]:
    """A new search's outputs: status, gallery, state, the details (emptied: closed)."""
    return [panel.status, panel.gallery, panel.state, panel.details_md]


def _show_page(
    engine: SearchEngine, results: PageResults, request: gr.Request | None, *, close_details: bool = True
) -> tuple[Any, ...]:
    """A page in its panel: the status line (whose markers show the gallery and "Load more"), the gallery's items,
    the session's state, and the details emptied, hence closed (a new query), or the marks note, the details left
    open (Refine, More like this)."""
    page = results.page
    markers = panel_markers(results=bool(page.hits), more=page.has_more, confident=page.confident)
    gallery = public_gallery(engine, results.gallery(), request)
    values = (results.message + markers, gallery, results.state)
    return (*values, "") if close_details else (*values, marks_note(results.state))


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
        key: str,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """The Search tab: words, words to avoid, filters, an order, a visitor key; the first page of results."""
        gate.search(request)
        viewer = engine.viewer(gate.key(request, key))
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
        return _show_page(engine, run_state(engine, new_state("text", query, viewer=viewer)), request)

    inputs, outputs = tab.inputs, _panel_outputs(tab.panel)
    options = {"api_visibility": "private", **ctx.search_queue}
    gr.on([tab.query.submit, tab.button.click, tab.without.submit], on_find, inputs=inputs, outputs=outputs, **options)
    tab.examples.load_input_event.then(on_find, inputs=inputs, outputs=outputs, **options)
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
        page = results.page
        markers = panel_markers(results=True, more=page.has_more, confident=page.confident)
        gallery = public_gallery(engine, state_gallery(engine, results.state), request)
        return results.message + markers, gallery, results.state

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
        viewer = state_viewer(state)  # the panel's own key: its owner's private photos stay findable
        record = engine.get(image_id, viewer)  # type: ignore[arg-type]  # "no image with id ..." if not an id
        previous = (state or {}).get("request", {})
        query = {"parts": [{"id": record.id}], "k": engine.result_count(k)}
        query.update({key: previous[key] for key in ("filters", "sort") if key in previous})
        fresh = new_state("similar", query, source=record.id, viewer=viewer)
        return _show_page(engine, run_state(engine, fresh), request, close_details=False)

    private = {"api_visibility": "private"}
    state_in = [panel.state, *rerun_inputs]
    panel.load_more.click(
        on_load_more,
        inputs=state_in,
        outputs=[panel.status, panel.gallery, panel.state],
        **private,
        **ctx.search_queue,
    )
    panel.refine.click(
        on_refine, inputs=state_in, outputs=[*_panel_outputs(panel)[:3], panel.marks], **private, **ctx.search_queue
    )
    panel.more.click(
        on_similar,
        inputs=[panel.state, panel.selected, k_input],
        outputs=[*_panel_outputs(panel)[:3], panel.marks],
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
            return None, "", None, ""  # no details: the panel stays closed
        return (
            public_gallery(engine, [(hit["url"], f"image {hit['id']}")], request),
            describe_hit(hit) + OPENED_MARKER,
            hit["id"],
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
        outputs=[panel.opened, panel.details_md, panel.selected, panel.marks],
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
    panel.close.click(_closed, outputs=[panel.details_md], queue=False, **private)


def _closed() -> str:
    """Details without a result: the stylesheet hides the panel."""
    return ""


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
        """A whole query as JSON (text, minus, parts, like, unlike, filters, sort, k, page, and a visitor "key"),
        with an optional image: one page of results as JSON."""
        gate.search(request)
        try:
            data = dict(parse_query_json(query))
            seen_by = engine.viewer(gate.key(request, data.pop("key", None)))
            url_for = lambda url: public_url(engine, url, request)  # noqa: E731
            return run_query_json(engine, data, image, url_for=url_for, viewer=seen_by)
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
        private: bool,
        key: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, list[tuple[str, str]], list[dict[str, Any]]]:
        """Add photos (JPEG, PNG, WebP, HEIC) to the collection, with an optional caption; a result per file, with
        its delete code. ``private``: only searches with ``key`` (generated when empty, and returned) find them."""
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
                private=bool(private),
                key=key,
                client=gate.client_id(request),
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
    def on_delete_mine(code: str, request: gr.Request) -> str:
        """Take back a photo you uploaded, with the delete code you were given: it is deleted everywhere."""
        gate.delete_code(request)
        return delete_mine(engine, code)

    event = tab.button.click(
        on_upload,
        inputs=[tab.files, tab.caption, tab.token, tab.private, tab.key],
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
    code, take, taken = tab.take_back
    gr.on(
        [take.click, code.submit],
        on_delete_mine,
        inputs=[code],
        outputs=[taken],
        api_name="delete_mine",
        **ctx.upload_queue,
    ).then(**refresh)
    if tab.admin is not None:
        wire_admin(ctx, tab.admin, refresh)


def wire_admin(ctx: Context, panel: AdminPanel, refresh: dict[str, Any]) -> None:
    """The admin accordion and the admin endpoints (only where an admin token is set): ``/delete``, ``/approve``,
    ``/reject`` (ids as "12, 31"), ``/review`` and ``/uploads`` (JSON lists)."""
    engine, gate = ctx.engine, ctx.gate

    def guarded(action: Any) -> Any:
        @friendly
        def run(ids: str, token: str, request: gr.Request) -> str:
            gate.admin_action(request, token)
            return action(engine, ids)

        run.__doc__ = action.__doc__
        return run

    for button, name, action in (
        (panel.delete, "delete", admin.delete_images),
        (panel.approve, "approve", admin.approve_images),
        (panel.reject, "reject", admin.reject_images),
    ):
        button.click(
            guarded(action), inputs=[panel.ids, panel.token], outputs=[panel.status], api_name=name, **ctx.upload_queue
        ).then(**refresh)

    @friendly
    def on_held(token: str, request: gr.Request) -> str:
        gate.admin_action(request, token)
        return admin.uploads_table(engine.held(100), "No upload is waiting for review.")

    @friendly
    def on_newest(token: str, request: gr.Request) -> str:
        gate.admin_action(request, token)
        return admin.uploads_table(engine.uploads(100), "No uploads yet.")

    private = {"api_visibility": "private", **ctx.search_queue}
    panel.held.click(on_held, inputs=[panel.token], outputs=[panel.status], **private)
    panel.newest.click(on_newest, inputs=[panel.token], outputs=[panel.status], **private)

    @friendly
    def review(token: str, limit: int = 100, request: gr.Request | None = None) -> list[dict[str, Any]]:
        """Admin: the uploads held by the content check, newest first (id, added_at, visibility, moderation_score,
        client_id, filename, caption)."""
        gate.admin_action(request, token)
        return admin.upload_rows(engine.held(_limit(limit)))

    @friendly
    def uploads(
        token: str, limit: int = 50, client: str = "", request: gr.Request | None = None
    ) -> list[dict[str, Any]]:
        """Admin: the newest uploads with their visibility, moderation score and uploader's client id (``client``:
        only that uploader's)."""
        gate.admin_action(request, token)
        return admin.upload_rows(engine.uploads(_limit(limit), client=(client or "").strip() or None))

    for fn in (review, uploads):
        gr.api(fn, api_name=fn.__name__, **ctx.search_queue)


def _limit(limit: Any) -> int:
    try:
        return max(1, min(int(limit), 1000))
    except (TypeError, ValueError):
        raise ClipSearchError("the limit is a whole number from 1 to 1000") from None
