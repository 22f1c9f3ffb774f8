"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` so that a reader sees the old file or the new one (see :func:`atomic_write_with`)."""

    def body(fh: BinaryIO) -> None:
        for chunk in chunks:
            fh.write(chunk)

    atomic_write_with(path, body)


def atomic_write_with(path: Path, body: Callable[[BinaryIO], None]) -> None:
    """Write through ``body`` to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    A crash leaves at most a hidden ``.<name>.*.tmp`` file, which :func:`remove_stale_temp_files` clears later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _lock(fd, blocking=True)  # held until the file is closed, or the process dies: "a writer is at work"
    try:
        with os.fdopen(fd, "wb") as fh:
            body(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(
    folder: Path, *, older_than_s: float = 3600.0, unheld_after_s: float = 2.0, recursive: bool = False
) -> int:
    """Delete what :func:`atomic_write` left behind when a process died mid-write. Returns how many were removed.

    A file no writer holds (its lock died with its process) goes once it is ``unheld_after_s`` old, so the next
    open after a killed ingest cleans up; the short grace covers a writer between creating its file and locking
    it (the next statement). Where locks are unavailable, only files older than ``older_than_s`` go.
    """
    if not folder.is_dir():
        return 0
    now = time.time()
    removed = 0
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        try:
            if not tmp.is_file():
                continue
            age = now - tmp.stat().st_mtime
            if age > older_than_s or (age > unheld_after_s and not _held(tmp)):
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary files left by an interrupted write in %s", removed, folder)
    return removed


def _lock(fd: int, *, blocking: bool) -> bool:
    """An exclusive advisory lock on ``fd``; False if another process holds one (or locks are unsupported)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _held(path: Path) -> bool:
    """Whether a live writer holds ``path`` (True when that cannot be known: then only age decides)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        return not _lock(fd, blocking=False)
    finally:
        os.close(fd)  # closing our descriptor releases our lock
