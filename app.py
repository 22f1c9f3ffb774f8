"""The clip-search web app: ``python app.py`` (also what Hugging Face Spaces runs).

Settings come from config.yaml (or $CLIP_SEARCH_CONFIG), secrets and overrides from the environment or a .env
file. It listens on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT, or app.server_name / app.server_port of the config.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clip_search.config import Settings

PERSISTENT = Path("/data")  # Hugging Face Spaces' persistent storage, when the Space has it


def use_persistent_storage() -> None:
    """On a Space with persistent storage, keep the model caches (and, on Spaces, the collection) on /data.

    Runs before transformers is imported, since huggingface_hub reads HF_HOME once at import.
    """
    if not (PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK)):
        return
    os.environ.setdefault("HF_HOME", str(PERSISTENT / ".huggingface"))
    os.environ.setdefault("XDG_CACHE_HOME", str(PERSISTENT / ".cache"))  # the ONNX text towers, the query path chosen
    if os.environ.get("SPACE_ID"):  # only on Spaces: elsewhere /data may be anything
        os.environ.setdefault("CLIP_SEARCH_DATA_DIR", str(PERSISTENT / "clip-search"))


def _stop_on_sigterm() -> None:
    """Platforms (Spaces, Docker, systemd) stop the app with SIGTERM: shut down as on Ctrl-C, saving the index."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    """Start the app; a problem the user can fix (model, config, storage) is one short message, not a traceback."""
    use_persistent_storage()
    _stop_on_sigterm()
    logging.basicConfig(
        level=os.environ.get("CLIP_SEARCH_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    from clip_search.config import load_config
    from clip_search.errors import ClipSearchError
    from clip_search.logs import quiet_third_party

    quiet_third_party(logging.INFO)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        serve(load_config())  # also reads .env
    except ClipSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def serve(settings: Settings) -> None:
    """Load the model (when ``model.warm_up``: a wrong model fails before any data is touched), open the
    collection and serve until stopped."""
    log = logging.getLogger("clip_search.app")

    from clip_search.app import build_app, enable_queue, launch_options, serve_local_images
    from clip_search.encoder import HFEncoder
    from clip_search.engine import SearchEngine

    encoder = HFEncoder.from_settings(settings.model, cache_dir=settings.cache_dir)
    if settings.model.warm_up:
        log.info("loading the model %s", settings.model.id)
        encoder.warm_up()
    engine = SearchEngine(settings, encoder=encoder)
    if settings.model.warm_up and engine.moderator.enabled and settings.moderation.prompts:
        engine.moderator.prompt_vectors()  # the upload check's prompts, embedded once, before the first upload
    log.info("collection: %d images, store: %s", engine.count(), engine.store.describe())
    serve_local_images(engine)
    demo = build_app(engine)
    enable_queue(demo, engine)
    try:
        demo.launch(
            server_name=os.environ.get("GRADIO_SERVER_NAME") or settings.app.server_name,
            server_port=int(os.environ.get("GRADIO_SERVER_PORT") or settings.app.server_port),
            **launch_options(engine),
        )
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
