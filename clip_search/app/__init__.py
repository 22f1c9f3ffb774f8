"""The Gradio app over a :class:`~clip_search.engine.SearchEngine`: ``build_app(engine)`` (``app.py`` starts it).

Layers, each importing only those above it: ``text`` (what visitors read) and ``guard`` (rate limits, tokens,
errors in words); ``handlers``, ``session`` and ``uploads`` (plain functions over the engine, tested without a
browser); ``components``, ``layout`` (the page), ``routes`` (where images are fetched), ``events`` (what each
control does) and ``build``. Nothing here is imported by the engine, and nothing here talks to the table, the
index or the store except through the engine.
"""

from clip_search.app.build import build_app, launch_options, queue_options
from clip_search.app.routes import serve_local_images

__all__ = ["build_app", "launch_options", "queue_options", "serve_local_images"]
