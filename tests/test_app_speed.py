"""What keeps the app's work per search small, held against the Gradio it relies on (the speed itself is measured
by benchmarks/bench_app_load.py): galleries of links built in place equal what Gradio builds, and Gradio still reads
the settings that bound its queue's analytics."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from clip_search.app import build_app, queue_options
from clip_search.app.build import QUEUE_ANALYTICS_ENV
from clip_search.app.components import linked_gallery
from clip_search.engine import SearchEngine

LINKS = [
    ("http://127.0.0.1:7860/images/ab/" + "ab" * 32 + ".jpg", "87% match · 0.31"),
    ("https://bucket.s3.example.com/images/cd/x.png?X-Amz-Signature=abc&X-Amz-Expires=3600", "similarity 0.93"),
    ("http://127.0.0.1:7860/images/ef/y.webp", ""),
]


def _sent(gallery: gr.Gallery, value: list) -> list:
    """What the browser receives for ``value``: the postprocessed data after Gradio's file handling."""
    from gradio import processing_utils

    return processing_utils.move_files_to_cache(gallery.postprocess(value).model_dump(), gallery, postprocess=True)


@pytest.mark.parametrize("value", [LINKS, LINKS[:1], []])
def test_a_gallery_of_links_sends_what_gradio_would(value: list):
    ours, gradios = linked_gallery(), gr.Gallery()
    assert _sent(ours, value) == _sent(gradios, value)
    assert [item["image"]["url"] for item in _sent(ours, value)] == [url for url, _ in value]


def test_anything_but_links_goes_through_gradio(tmp_path: Path):
    photo = tmp_path / "local.png"
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(photo)
    ours = linked_gallery()
    for value in ([(str(photo), "a file")], [LINKS[0], (str(photo), "mixed")], None):
        assert ours.postprocess(value).model_dump() == gr.Gallery().postprocess(value).model_dump()


def test_gradio_reads_the_bounds_of_its_queue_analytics(engine: SearchEngine, monkeypatch: pytest.MonkeyPatch):
    """Gradio summarises its queue's events in a DataFrame after every event unless told otherwise: the app tells it
    through two environment variables of Gradio's; this fails if Gradio stops reading them."""
    for name in QUEUE_ANALYTICS_ENV:
        monkeypatch.delenv(name, raising=False)
    queue = build_app(engine).queue(**queue_options(engine))._queue
    read = {"GRADIO_ANALYTICS_MAX_EVENTS": queue.ANALYTICS_MAX_EVENTS}
    read["GRADIO_ANALYTICS_CACHE_FREQUENCY"] = queue.ANAYLTICS_CACHE_FREQUENCY  # Gradio's own spelling
    assert read == {name: int(value) for name, value in QUEUE_ANALYTICS_ENV.items()}
    monkeypatch.setenv("GRADIO_ANALYTICS_MAX_EVENTS", "7")  # an operator's own value wins
    assert build_app(engine).queue(**queue_options(engine))._queue.ANALYTICS_MAX_EVENTS == 7
