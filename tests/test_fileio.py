"""Crash-safe writes: what a killed writer leaves is cleaned on the next open, a live writer's file never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clip_search.fileio import remove_stale_temp_files
from tests.conftest import ROOT

# A writer that stops inside its atomic write (as an ingest does between two chunks), until killed.
WRITER = """
import sys, time
from pathlib import Path
from clip_search.fileio import atomic_write_with
def body(fh):
    fh.write(b"half a photo")
    fh.flush()
    time.sleep(3600)
atomic_write_with(Path(sys.argv[1]), body)
"""


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_killed_writers_temp_file_goes_at_the_next_open_a_live_ones_stays(tmp_path: Path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "x.jpg")], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not _temp_files(tmp_path):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        (tmp,) = _temp_files(tmp_path)
        _age(tmp, 120)  # a slow write: older than the grace, younger than an hour
        assert remove_stale_temp_files(tmp_path) == 0 and tmp.exists()  # its writer is alive
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert remove_stale_temp_files(tmp_path) == 1  # no need to wait an hour
    assert not _temp_files(tmp_path) and not (tmp_path / "x.jpg").exists()


def test_a_file_just_created_is_left_to_its_writer(tmp_path: Path):
    fresh = tmp_path / ".y.jpg.abc.tmp"  # created a moment ago, its writer not yet holding it
    fresh.write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == 0 and fresh.exists()
    _age(fresh, 30)
    assert remove_stale_temp_files(tmp_path) == 1 and not fresh.exists()
