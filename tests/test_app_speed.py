"""What keeps the app's work per search and its memory per visitor small, held against the Gradio it relies on (the
speed is measured by benchmarks/bench_app_load.py, the memory by tests/test_session_memory.py): galleries of links
built in place equal what Gradio builds; Gradio still reads the settings that bound its queue's analytics, and still
keeps its per-session message queues where the app bounds them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr
import pytest

from clip_search.app import build_app, enable_queue
from clip_search.app.components import linked_gallery
from clip_search.app.queue import QUEUE_ANALYTICS_ENV, SessionMessages
from clip_search.engine import SearchEngine

LINKS = [
    ("http://127.0.0.1:7860/images/ab/" + "ab" * 32 + ".jpg", "87% match · 0.31"),
    ("https://bucket.s3.example.com/images/cd/x.png?X-Amz-Signature=abc&X-Amz-Expires=3600", "similarity 0.93"),
    ("http://127.0.0.1:7860/images/ef/y.webp", ""),
]


def _sent(gallery: gr.Gallery, value: list) -> list:
    """What the browser receives for ``value``: the postprocessed data after Gradio's file handling."""
    from gradio import processing_utils

    data = gallery.postprocess(value)
    serialised = data.model_dump() if hasattr(data, "model_dump") else data
    return processing_utils.move_files_to_cache(serialised, gallery, postprocess=True)


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
        assert ours.postprocess(value) == gr.Gallery().postprocess(value)


def test_gradio_reads_the_bounds_of_its_queue_analytics(engine: SearchEngine, monkeypatch: pytest.MonkeyPatch):
    """Gradio summarises its queue's events in a DataFrame after every event unless told otherwise: the app tells it
    through two environment variables of Gradio's; this fails if Gradio stops reading them."""
    for name in QUEUE_ANALYTICS_ENV:
        monkeypatch.delenv(name, raising=False)
    queue = enable_queue(build_app(engine), engine)._queue
    read = {"GRADIO_ANALYTICS_MAX_EVENTS": queue.ANALYTICS_MAX_EVENTS}
    read["GRADIO_ANALYTICS_CACHE_FREQUENCY"] = queue.ANAYLTICS_CACHE_FREQUENCY  # Gradio's own spelling
    assert read == {name: int(value) for name, value in QUEUE_ANALYTICS_ENV.items()}
    monkeypatch.setenv("GRADIO_ANALYTICS_MAX_EVENTS", "7")  # an operator's own value wins
    assert enable_queue(build_app(engine), engine)._queue.ANALYTICS_MAX_EVENTS == 7


def test_session_message_queues_are_bounded_and_never_drop_a_waiting_session(engine: SearchEngine):
    """Gradio's queue keeps a message queue per session; the app keeps at most ``app.max_sessions`` of them,
    forgetting idle sessions first and never one with an event still to answer (its messages would be lost)."""
    engine.settings.app.max_sessions = 5
    queue = enable_queue(build_app(engine), engine)._queue
    messages, pending = queue.pending_messages_per_session, queue.pending_event_ids_session
    assert isinstance(messages, SessionMessages) and messages.pending is pending and messages.limit == 5
    for n in range(12):  # as Gradio's queue does when a session joins: its message queue, then its event ids
        session = f"session-{n}"
        if session not in messages:
            messages[session] = asyncio.Queue()
        pending.setdefault(session, set()).add(f"event-{n}")
        if n not in (1, 2):  # the other events complete (Gradio empties the set, and leaves it)
            pending[session].clear()
    assert len(messages) == 5 and {"session-1", "session-2", "session-11"} <= set(messages)
    assert set(pending) == set(messages)  # the forgotten sessions' empty sets went with them
    del messages["session-0"]  # Gradio deleting a cancelled stream's queue that is already forgotten: no error
