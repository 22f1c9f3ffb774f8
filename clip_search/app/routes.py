"""Where a browser fetches images and the API page: the ``/images`` route of the local store, public links."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from clip_search.engine import SearchEngine


def _root_url(request: gr.Request | None) -> str:
    """The app's address as the visitor reached it ("" when unknown: links then stay relative)."""
    try:
        from gradio import route_utils

        return route_utils.get_root_url(request.request, route_path="/gradio_api/queue/join", root_path=None)
    except Exception:
        return ""


def root_api_url(request: gr.Request | None) -> str:
    """An absolute link to the API page, so it also works from a <gradio-app> embedded in another site."""
    root = _root_url(request)
    return f"{root}/?view=api" if root else "?view=api"


IMAGE_ROUTE = "/images"  # local storage: images/ab/x.jpg is served at <app>/images/ab/x.jpg


def image_routes(engine: SearchEngine) -> list[Any]:
    """Local storage: the image folder served under ``/images``, so results link to the app, never to a server
    path (Gradio's own ``/file=`` links spell out the folder's absolute path)."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from clip_search.store import LocalImageStore

    if not isinstance(engine.store, LocalImageStore):
        return []
    return [Mount(IMAGE_ROUTE, app=StaticFiles(directory=engine.store.root, check_dir=False), name="images")]


def public_gallery(
    engine: SearchEngine, items: Sequence[tuple[str, str]], request: gr.Request | None
) -> list[tuple[str, str]]:
    """Gallery items whose local files are given as ``<app>/images/...`` links (absolute, so API clients and a
    ``<gradio-app>`` embedded elsewhere can fetch them); presigned S3 URLs go through untouched."""
    from clip_search.store import LocalImageStore

    store = engine.store
    base = _public_root(request) if isinstance(store, LocalImageStore) else None
    if base is None:
        return list(items)
    return [(_served(store.root, url, base), caption) for url, caption in items]


def public_url(engine: SearchEngine, url: str, request: gr.Request | None) -> str:
    """One image's link as a visitor or an API client gets it: ``<app>/images/...`` for the local store (never
    a server path), presigned S3 URLs untouched."""
    return public_gallery(engine, [(url, "")], request)[0][0]


def _served(root: Path, url: str, base: str) -> str:
    path = Path(url)
    if path.is_absolute() and path.is_relative_to(root):
        return f"{base}{IMAGE_ROUTE}/{path.relative_to(root).as_posix()}"
    return url


def _public_root(request: gr.Request | None) -> str | None:
    """The app's public address as the visitor reached it (behind a proxy too), or None outside a request."""
    try:
        from gradio import route_utils

        inner = request.request  # type: ignore[union-attr]
        path = inner.url.path
        cut = path.find("/gradio_api/")
        return route_utils.get_root_url(inner, route_path=path[cut:] if cut >= 0 else path, root_path=None)
    except Exception:
        return None


def serve_local_images(engine: SearchEngine) -> None:
    """Serve the local image folder in place (no copy into Gradio's cache per search); nothing else of the disk."""
    from clip_search.store import LocalImageStore

    if isinstance(engine.store, LocalImageStore):
        gr.set_static_paths([str(engine.store.root)])
