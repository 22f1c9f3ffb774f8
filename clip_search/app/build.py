"""The whole app (:func:`build_app`) and what ``app.py`` passes to ``queue()`` and ``launch()``."""

from __future__ import annotations

from typing import Any

import gradio as gr

from clip_search.access import ADMIN_TOKEN_ENV, UPLOAD_TOKEN_ENV, token_required
from clip_search.app.components import CSS, OPEN_API_PAGE, theme
from clip_search.app.events import wire_api, wire_image_tab, wire_search_tab, wire_upload_tab
from clip_search.app.guard import Gate, friendly
from clip_search.app.handlers import PublicStats, public_stats
from clip_search.app.layout import Context, api_outputs, image_tab, search_tab, upload_tab
from clip_search.app.routes import image_routes, root_api_url
from clip_search.app.text import header_html
from clip_search.engine import SearchEngine


def build_app(engine: SearchEngine) -> gr.Blocks:
    """The whole app over ``engine``. Queue and launch options are the caller's (see ``app.py``)."""
    app = engine.settings.app
    ctx = Context(
        engine=engine,
        gate=Gate(engine),
        search_queue={"concurrency_id": "search", "concurrency_limit": app.search_concurrency},
        upload_queue={"concurrency_id": "upload", "concurrency_limit": app.upload_concurrency},
        upload_token_needed=token_required(UPLOAD_TOKEN_ENV),
        admin_enabled=token_required(ADMIN_TOKEN_ENV),
    )
    cache = (app.cache_max_age_s, app.cache_max_age_s) if app.cache_max_age_s else None

    @friendly
    def on_load(request: gr.Request) -> tuple[Any, ...]:
        return header_html(engine, root_api_url(request)), gr.update(visible=engine.count() == 0)

    with gr.Blocks(title=app.title, analytics_enabled=False, delete_cache=cache, fill_width=False) as demo:
        header = gr.HTML(header_html(engine), elem_id="cs-header", js_on_load=OPEN_API_PAGE)
        with gr.Tabs(elem_id="cs-tabs"):
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                search = search_tab(ctx)
            with gr.Tab("Image-Search", id="image-search", elem_id="tab-image-search"):
                image = image_tab(ctx)
            with gr.Tab("Upload", id="upload", elem_id="tab-upload"):
                upload = upload_tab(ctx)
        api = api_outputs()

        refresh = {
            "fn": on_load,
            "outputs": [header, search.empty],
            "api_visibility": "private",
            "show_progress": "hidden",
        }
        demo.load(**refresh)
        wire_search_tab(ctx, search)
        wire_image_tab(ctx, image)
        wire_api(ctx, search, image, api)
        wire_upload_tab(ctx, upload, search, refresh)

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
    return {
        "max_size": app.queue_max_size,
        "default_concurrency_limit": app.search_concurrency,
    }


def label_api_output(demo: gr.Blocks, api_name: str, label: str) -> None:
    """Name a ``gr.api`` endpoint's answer on the API page, which otherwise calls it "1st"."""
    for fn in demo.fns.values():
        if fn.api_name == api_name:
            for output in fn.outputs:
                output.label = label


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
        # Gradio keeps a copy of the page's settings and every output per session: at most app.max_sessions of
        # them stay in memory (the longest idle one is forgotten first; its visitor simply searches again).
        "state_session_capacity": engine.settings.app.max_sessions,
    }
