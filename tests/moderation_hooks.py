"""Moderation hooks for tests (``moderation.hook: tests.moderation_hooks:NAME``), as a deployment would write one.

``flag_listed`` plays an external classifier that objects to the photos whose size (``WIDTHxHEIGHT``, kept by the
re-encoded copy it is given) is listed in the file named by ``CLIP_SEARCH_TEST_FLAGGED``: a test chooses which of
its uploads get held.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

FLAGGED_ENV = "CLIP_SEARCH_TEST_FLAGGED"


def size_of(image: bytes) -> str:
    with Image.open(io.BytesIO(image)) as img:
        return f"{img.width}x{img.height}"


def flag_listed(image: bytes, content_type: str) -> bool:
    listed = Path(os.environ.get(FLAGGED_ENV, "/nonexistent"))
    return listed.exists() and size_of(image) in listed.read_text().split()


def flag_everything(image: bytes, content_type: str) -> bool:
    return True


def broken(image: bytes, content_type: str) -> bool:
    raise RuntimeError("the classifier service is down")
