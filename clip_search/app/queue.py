"""Gradio's queue for this app: its options, and bounds on what it keeps per event and per visitor session.

What Gradio keeps per session is bounded by ``app.max_sessions`` (``launch_options``: its copy of the page and of
every output sent) and, here, its per-session message queues; per event, its analytics records.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import gradio as gr

from clip_search.engine import SearchEngine

log = logging.getLogger(__name__)

# Gradio 6.31 summarises the last GRADIO_ANALYTICS_MAX_EVENTS (default 10,000) events of its queue in a pandas
# DataFrame after every GRADIO_ANALYTICS_CACHE_FREQUENCY (default 1) of them, for a monitoring page this app never
# turns on: 8 ms of CPU per search over 1,000 records, 23 ms over 10,000 (a search itself is ~3 ms), and 10,000
# records kept. Here: at most 1,000 records, summarised once per 1,000 events. Read by ``demo.queue()``; a value
# already in the environment wins (tests/test_app_speed.py fails if Gradio stops reading these).
QUEUE_ANALYTICS_ENV = {"GRADIO_ANALYTICS_MAX_EVENTS": "1000", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000"}


def queue_options(engine: SearchEngine) -> dict[str, Any]:
    """``demo.queue(...)``: a bounded queue. Searches and uploads have their own concurrency groups (set on
    the events), so a long upload never takes the slots searches run in. Waiting visitors hear their place in the
    queue once a second, not each time any search starts (Gradio's "auto": a message to every waiting visitor per
    search, 50 visitors waiting meant ~50 x 50 messages a second)."""
    app = engine.settings.app
    return {
        "max_size": app.queue_max_size,
        "default_concurrency_limit": app.search_concurrency,
        "status_update_rate": 1.0,
    }


def enable_queue(demo: gr.Blocks, engine: SearchEngine) -> gr.Blocks:
    """``demo.queue()`` with this app's options and bounds: what ``app.py`` (and any test serving the app) calls."""
    for name, value in QUEUE_ANALYTICS_ENV.items():
        os.environ.setdefault(name, value)
    demo.queue(**queue_options(engine))
    bound_session_messages(demo, engine.settings.app.max_sessions)
    return demo


class SessionMessages(OrderedDict):
    """Per-session message queues, at most ``limit`` (oldest first use forgotten first), never one whose session
    has an event waiting or running: messages for it are still to come (Gradio would fail to send them)."""

    def __init__(self, pending: dict[str, set[str]], limit: int) -> None:
        super().__init__()
        self.pending = pending  # Gradio's event ids per session, emptied as events complete
        self.limit = limit

    def __setitem__(self, session: str, messages: Any) -> None:
        if session in self:
            self.move_to_end(session)
        super().__setitem__(session, messages)
        if len(self) > self.limit:
            self._forget_idle(keep=session)

    def _forget_idle(self, keep: str) -> None:
        for old in list(self):
            if len(self) <= self.limit:
                return
            if old != keep and not self.pending.get(old):
                super().__delitem__(old)
                self.pending.pop(old, None)  # its empty set: Gradio leaves one per session that ever used the queue

    def __delitem__(self, session: str) -> None:
        if session in self:  # Gradio deletes a cancelled stream's queue, maybe forgotten here already
            super().__delitem__(session)


def bound_session_messages(demo: gr.Blocks, limit: int) -> None:
    """Gradio 6.31 keeps a message queue for each of the last 2,000 sessions that used its queue
    (``Queue.pending_messages_per_session``, an LRU by first use that evicts whatever is pending; ~3 KB each, idle),
    and an emptied set of event ids for every session ever (``pending_event_ids_session``). No setting bounds them:
    this replaces the first with :class:`SessionMessages` (``app.max_sessions``, idle sessions only), which also
    drops the second's entries. Private to Gradio: tests/test_app_speed.py fails if these attributes change."""
    queue = demo._queue
    current = getattr(queue, "pending_messages_per_session", None)
    pending = getattr(queue, "pending_event_ids_session", None)
    if not isinstance(current, OrderedDict) or not isinstance(pending, dict):
        log.warning("this Gradio keeps its session queues differently: they are left unbounded by the app")
        return
    bounded = SessionMessages(pending, limit)
    for session, messages in current.items():
        bounded[session] = messages
    queue.pending_messages_per_session = bounded
