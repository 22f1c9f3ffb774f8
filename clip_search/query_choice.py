"""Which text query path serves: the fastest on this machine, measured once and remembered.

Which path is fastest depends on the CPU (int8 kernels with VNNI/AMX, ONNX Runtime's fp32 kernels) and the model,
so it is timed rather than assumed (see :meth:`clip_search.encoder.HFEncoder`'s query path). Measuring at every
start would let two processes on one machine (an app and its CLI, two replicas on one disk) pick different paths
on a noisy moment, and the paths' vectors differ in the 4th decimal: two near-tied results could swap places
between them. So the first measurement is written to the user's cache (``$XDG_CACHE_HOME/clip-search``, beside no
collection: it is a fact about the machine, and survives a wiped data_dir), keyed by the model, the candidates,
the CPU and the thread count, and every later process on that machine takes the same path, building that path
alone (no ONNX export where torch won); processes starting at once wait for the one measuring
(:func:`choosing`). Delete the file to measure again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clip_search.fileio import atomic_write

log = logging.getLogger(__name__)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_path(folder: Path, *, model: str, names: Sequence[str], threads: int) -> Path:
    """Where the choice among the allowed paths ``names`` for this model, CPU and thread count is remembered."""
    key = f"{model}|{'+'.join(sorted(names))}|{cpu_name()}|{os.cpu_count()}|{threads}"
    return folder / f"query-path-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def remembered(record: Path, allowed: Sequence[str]) -> str | None:
    """The path this machine chose before among ``allowed`` (read from ``record``), or None: measure then."""
    chosen = _read(record, allowed)
    if chosen is not None:
        log.info(
            "text queries: %s, as measured on this machine before (%s; delete it to measure again)", chosen, record
        )
    return chosen


@contextlib.contextmanager
def choosing(record: Path, *, wait_s: float = 600.0) -> Iterator[None]:
    """Held while this process measures the paths, so that another one starting on the machine meanwhile (two
    replicas, an app and its CLI) waits and takes this choice instead of measuring, and exporting, a second time.

    A lock file beside ``record`` (flock: let go by the system if the process dies). Where there is none to take
    (no fcntl, an unwritable cache) or after ``wait_s`` each process measures for itself, as before."""
    handle = _lock_file(record)
    try:
        if handle is not None:
            _lock(handle, wait_s)
        yield
    finally:
        if handle is not None:
            handle.close()  # lets the lock go


def _lock_file(record: Path) -> Any:
    """The lock file beside ``record``, open; None where there is no flock or the file cannot be made."""
    try:
        import fcntl  # noqa: F401 - POSIX only
    except ImportError:
        return None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        return open(record.with_suffix(".lock"), "a")
    except OSError:
        return None


def _lock(handle: Any, wait_s: float) -> None:
    """Takes the lock on ``handle``, waiting up to ``wait_s`` for another process to let it go, then goes on
    without it."""
    import fcntl

    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                log.warning("text queries: waited %.0f s for another process's measurement; measuring here", wait_s)
                return
            if not waiting:
                log.info("text queries: another process on this machine is measuring the paths; waiting for it")
                waiting = True
            time.sleep(0.1)


def fastest(
    candidates: Mapping[str, Any], seconds: Callable[[Any], float], record: Path | None, *, allowed: Sequence[str]
) -> Any:
    """The candidate (name -> path, those of ``allowed`` that could serve) ``seconds`` times fastest, remembered in
    ``record`` (where it can be written) as this machine's choice among ``allowed``."""
    names = list(candidates)
    times = [seconds(candidates[name]) for name in names]
    best = min(range(len(names)), key=times.__getitem__)
    log.info(
        "text query paths on this CPU, one query: %s; fastest: %s",
        ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in zip(names, times, strict=True)),
        names[best],
    )
    _write(record, allowed, names[best], dict(zip(names, times, strict=True)))
    return candidates[names[best]]


def _read(record: Path | None, names: Sequence[str]) -> str | None:
    if record is None or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        chosen = data["chosen"]
        if sorted(data["candidates"]) == sorted(names) and chosen in names:
            return str(chosen)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring the unreadable query path record %s: measuring again", record)
    return None


def _write(record: Path | None, allowed: Sequence[str], chosen: str, times: Mapping[str, float]) -> None:
    if record is None:
        return
    data = {
        "chosen": chosen,
        "candidates": list(allowed),
        "ms": {name: round(1e3 * t, 2) for name, t in times.items()},
        "cpu": cpu_name(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record, [json.dumps(data, indent=1).encode()])
    except OSError as exc:  # an unwritable cache: the choice holds for this process only
        log.warning("cannot remember the query path in %s (%s)", record, exc)
