"""Where image bytes live: a local folder (the embedded default) or S3-compatible object storage.

Keys are derived from the content hash (``images/ab/abcdef....jpg``), so the same photo is stored once and a
re-put of the same key is harmless. The engine only talks to the :class:`ImageStore` interface.
"""

from __future__ import annotations

import logging
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from clip_search.errors import NotFoundError, StorageError
from clip_search.fileio import atomic_write, remove_stale_temp_files

log = logging.getLogger(__name__)

IMAGE_PREFIX = "images/"
PRIVATE_PREFIX = IMAGE_PREFIX + "private/"  # never a content key: those have two hex characters of fan-out


def content_key(sha256: str, ext: str) -> str:
    """``images/ab/<sha256>.<ext>``: two hex characters of fan-out keep folders and listings small."""
    return f"{IMAGE_PREFIX}{sha256[:2]}/{sha256}.{ext.lstrip('.').lower()}"


def private_key(ext: str) -> str:
    """``images/private/<128 random bits>.<ext>``: a private photo's key, which its content does not give away."""
    return f"{PRIVATE_PREFIX}{secrets.token_hex(16)}.{ext.lstrip('.').lower()}"


def is_private_key(key: str) -> bool:
    return key.startswith(PRIVATE_PREFIX)


class ImageStore(ABC):
    """Put, get, check and delete image bytes by key, and hand the browser a URL for them."""

    kind: str = "abstract"

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``; idempotent for content-addressed keys."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`NotFoundError` if there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting what is not there is not an error."""

    @abstractmethod
    def list_keys(self, prefix: str = IMAGE_PREFIX) -> Iterator[str]:
        """Every key under ``prefix`` (paginated underneath where the backend pages)."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Where a browser can fetch the image: a presigned URL, or a local file path the app serves."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageError` with advice if the store cannot be used; called at start-up."""

    def remove_interrupted_writes(self) -> int:
        """Clear what writers killed mid-put left behind; how many. Object stores put whole objects: nothing."""
        return 0

    def describe(self) -> str:
        return self.kind


class LocalImageStore(ImageStore):
    """Images as files under one folder (``images/ab/x.jpg`` is ``ROOT/ab/x.jpg``); the app serves that folder
    and nothing else of the disk."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def relative(self, key: str) -> str:
        """``images/ab/x.jpg`` -> ``ab/x.jpg``, the file's place under the store's folder (and under the app's
        ``/images`` route), refusing keys that are not image keys or would leave the folder. Read from the text
        alone, without touching the disk: a page of 100 results asks for 100 of them."""
        relative = key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else ""
        parts = relative.split("/")
        if not relative or "\\" in relative or "\0" in relative or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid image key: {key!r}")
        return relative

    def path(self, key: str) -> Path:
        """The file for ``key``; also refused when a link inside the folder would lead out of it."""
        candidate = (self.root / self.relative(key)).resolve()
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            raise StorageError(f"invalid image key: {key!r}")
        return candidate

    def put(self, key: str, data: bytes, content_type: str) -> None:
        target = self.path(key)
        if target.exists() and target.stat().st_size == len(data):
            return  # same content-addressed key, same bytes
        try:
            atomic_write(target, [data])
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no image stored under {key}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str = IMAGE_PREFIX) -> Iterator[str]:
        if not self.root.exists():
            return
        for dirpath, dirs, files in os.walk(self.root):
            dirs.sort()
            for name in sorted(files):
                if name.startswith("."):
                    continue  # temporary files of an atomic write in progress
                key = IMAGE_PREFIX + Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def url(self, key: str) -> str:
        """The file's path (what the app's ``/images`` route serves), without a look at the disk."""
        return os.path.join(self.root, *self.relative(key).split("/"))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the image folder {self.root}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"the image folder {self.root} is not writable")
        self.remove_interrupted_writes()

    def remove_interrupted_writes(self) -> int:
        return remove_stale_temp_files(self.root, recursive=True)

    def describe(self) -> str:
        return f"local folder {self.root}"
