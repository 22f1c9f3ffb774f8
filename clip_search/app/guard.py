"""Who may do what, and errors in words: the rate limits and tokens of one app (:class:`Gate`), and
:func:`friendly`, which turns every error a visitor can meet into a short message, never a traceback.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from clip_search.access import ADMIN_TOKEN_ENV, UPLOAD_TOKEN_ENV, RateLimiter, client_address, token_ok, token_required
from clip_search.app.text import sentence
from clip_search.engine import SearchEngine
from clip_search.errors import CatalogError, ClipSearchError, NotFoundError, StorageError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."
STORAGE_UNAVAILABLE = "The photo storage is unavailable right now. Please try again shortly."
ADMIN_ATTEMPTS_PER_MINUTE = 5


class TooManyRequests(ClipSearchError):
    """A visitor over their rate limit; the message says how long to wait."""


class NotAllowed(ClipSearchError):
    """A missing or wrong token, or an action this deployment has switched off."""


class Gate:
    """Rate limits per visitor and the tokens, for one app."""

    def __init__(self, engine: SearchEngine) -> None:
        limits = engine.settings.rate_limit
        self.header = limits.trusted_proxy_header
        self.hops = limits.trusted_proxy_hops
        self.searches = RateLimiter(limits.searches_per_minute)
        self.uploads = RateLimiter(limits.uploads_per_minute)
        self.admin = RateLimiter(ADMIN_ATTEMPTS_PER_MINUTE)

    def client(self, request: gr.Request | None) -> str:
        if request is None:
            return "unknown"
        peer = getattr(getattr(request, "client", None), "host", None)
        try:
            headers = dict(request.headers)
        except Exception:  # a request without headers (called from Python)
            headers = {}
        return client_address(peer, headers, trusted_header=self.header, trusted_hops=self.hops)

    def search(self, request: gr.Request | None) -> None:
        wait = self.searches.acquire(self.client(request))
        if wait:
            raise TooManyRequests(RateLimiter.message(wait, "searches"))

    def upload(self, request: gr.Request | None, n_files: int, token: str | None) -> tuple[int, float]:
        """How many of ``n_files`` may go through now, and the wait for the rest."""
        client = self.client(request)
        if not token_ok(token, UPLOAD_TOKEN_ENV):
            wait = self.uploads.acquire(client)  # wrong guesses cost like uploads
            if wait:
                raise TooManyRequests(RateLimiter.message(wait, "uploads"))
            raise NotAllowed("uploading needs the upload token of this site, and that one is missing or wrong")
        allowed, wait = 0, 0.0
        for _ in range(n_files):
            wait = self.uploads.acquire(client)
            if wait:
                break
            allowed += 1
        if n_files and not allowed:
            raise TooManyRequests(RateLimiter.message(wait, "uploads"))
        return allowed, wait

    def delete(self, request: gr.Request | None, token: str | None) -> None:
        wait = self.admin.acquire(self.client(request))
        if wait:
            raise TooManyRequests(RateLimiter.message(wait, "attempts"))
        if not token_required(ADMIN_TOKEN_ENV):
            raise NotAllowed("deleting images is switched off here")
        if not token_ok(token, ADMIN_TOKEN_ENV):
            raise NotAllowed("the admin token is missing or wrong")


# -- from exceptions to messages ---------------------------------------------------------------------------------


def friendly(fn: F) -> F:
    """Every error a visitor can meet becomes a short message in plain words; never a traceback.

    Messages are shown as HTML text: ``<`` and ``&`` are escaped, quotes stay readable (API clients see them too).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TooManyRequests as exc:
            raise gr.Error(html.escape(str(exc), quote=False), title="Slow down", print_exception=False) from None
        except NotAllowed as exc:
            raise gr.Error(
                html.escape(sentence(str(exc)), quote=False), title="Not allowed", print_exception=False
            ) from None
        except NotFoundError as exc:
            raise gr.Error(
                html.escape(sentence(str(exc)), quote=False), title="Not found", print_exception=False
            ) from None
        except (StorageError, CatalogError) as exc:  # names endpoints, buckets, keys, paths: for the log only
            log.warning("storage error in %s: %s", getattr(fn, "__name__", fn), exc)
            raise gr.Error(STORAGE_UNAVAILABLE, title="Sorry", print_exception=False) from None
        except ClipSearchError as exc:
            raise gr.Error(html.escape(sentence(str(exc)), quote=False), title="Sorry", print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            raise gr.Error(GENERIC_ERROR, title="Sorry", print_exception=False) from None

    return wrapper  # type: ignore[return-value]
