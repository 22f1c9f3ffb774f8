"""App overhead: text searches through the running app, as the page sends them, against the same search in-process.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_app_load.py [--visitors 1 5 20 50] [--k 12 100] [--seconds 10]

Starts ``app.py`` (the tiny random SigLIP, rate limits off) on a collection of the 3,925 Imagenette photos of
``../shared/data/imagenette-val``, ingested once into ``--work`` and reused by later runs. Each visitor is a thread
with its own session that searches again as soon as its answer arrives, over loopback, the way the page does it:
POST ``/gradio_api/queue/join``, then read the session's event stream until ``process_completed`` (images are not
fetched). With two or more CPUs the app is pinned to one and the visitors to another, so "app CPU per request" is
the app's own cost. Per level it prints searches/s, p50/p95 latency, and the app's CPU time per search; the floor
is the CPU time of the same search run in this process on the same core: the search handler (query, ranking, the
panel's values, model included) and the text model alone. Ratios to that floor are what to compare between runs
and machines.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.app_process import PageEvent, RunningApp, gallery_items, search_as_page, search_event, start_app
from tests.conftest import SHARED_DATA

PHOTOS = SHARED_DATA / "imagenette-val"
EXTRA_CONFIG = "rate_limit:\n  searches_per_minute: 0\n"  # every visitor comes from 127.0.0.1
WORDS = ("a dog", "a church", "a truck", "a fish", "a parachute", "a golf ball", "a chainsaw", "a horn")
PLACES = ("", " on grass", " at night", " in the snow", " by the sea", " in a city")
TEXTS = [f"a photo of {w}{p}" for w in WORDS for p in PLACES]


_SERIAL = itertools.count(time.time_ns() // 1000)  # unseen by an app of an earlier run, too


def new_text() -> str:
    """A query never asked before, so the engine's query cache never answers and every search runs the model."""
    i = next(_SERIAL)
    return f"{TEXTS[i % len(TEXTS)]}, picture {i}"


@dataclass
class Level:
    """What one load level measured."""

    visitors: int
    k: int
    latencies: list[float] = field(default_factory=list)  # seconds, requests finished in the window
    errors: int = 0
    window_s: float = 0.0
    app_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.window_s if self.window_s else 0.0

    def quantile_ms(self, q: float) -> float:
        if len(self.latencies) < 2:
            return (self.latencies or [float("nan")])[0] * 1000
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q * 100) - 1] * 1000

    @property
    def cpu_ms(self) -> float:
        return self.app_cpu_s / len(self.latencies) * 1000 if self.latencies else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(app: RunningApp, event: PageEvent, visitors: int, k: int, seconds: float) -> Level:
    """``visitors`` threads searching back to back for ``seconds`` after a one-second warm-up."""
    level = Level(visitors, k)
    lock = threading.Lock()
    start = time.monotonic() + 1.0
    end = start + seconds
    stop = end + 30  # visitors still waiting then are left behind (daemon threads)

    def visitor() -> None:
        session = uuid.uuid4().hex[:11]
        with requests.Session() as http:
            while time.monotonic() < end:
                began = time.monotonic()
                try:
                    message = search_as_page(http, app.url, event, session, new_text(), k)
                    ok = bool(message.get("success")) and len(gallery_items(message)) == k
                except (requests.RequestException, RuntimeError, KeyError, TypeError):
                    ok = False
                done = time.monotonic()
                if start <= done <= end:
                    with lock:
                        if ok:
                            level.latencies.append(done - began)
                        else:
                            level.errors += 1

    threads = [threading.Thread(target=visitor, daemon=True) for _ in range(visitors)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = cpu_seconds(app.process.pid)
    time.sleep(max(0.0, end - time.monotonic()))
    level.app_cpu_s = cpu_seconds(app.process.pid) - cpu0
    level.window_s = seconds
    for thread in threads:
        thread.join(timeout=max(0.0, stop - time.monotonic()))
    return level


def _cpu_ms(fn, reps: int = 200) -> float:
    """Median CPU time of ``fn`` (this process, all threads): what the app's CPU per search is compared with."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def floor_ms(app: RunningApp, k_values: list[int]) -> dict[str, float]:
    """The search handler and the text model alone, in this process, on the same data (the app is idle)."""
    from clip_search.app.session import new_state, run_state, search_request
    from clip_search.config import load_config
    from clip_search.engine import SearchEngine

    env = {"CLIP_SEARCH_MODEL": os.environ["BENCH_MODEL"], "CLIP_SEARCH_DATA_DIR": str(app.data_dir)}
    engine = SearchEngine(load_config(app.data_dir.parent / "config.yaml", env=env))
    try:
        encode = engine.encoder.encode_text
        out = {"model": _cpu_ms(lambda: encode([new_text()]))}
        for k in k_values:

            def handler(k: int = k) -> None:
                results = run_state(engine, new_state("text", search_request(new_text(), k=k)))
                results.gallery()

            out[f"handler k={k}"] = _cpu_ms(handler)
    finally:
        engine.close()
    return out


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--k", type=int, nargs="+", default=[12, 100])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clip-search-app-load")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args()
    photos = sorted(args.photos.rglob("*.JPEG"))
    if not photos:
        sys.exit(f"no photos under {args.photos} (see ../shared/README.md)")
    model = args.work / "tiny-siglip"
    if not (model / "config.json").exists():
        from clip_search.testing import write_tiny_siglip

        write_tiny_siglip(model)
    os.environ["BENCH_MODEL"] = str(model)
    cpus = sorted(os.sched_getaffinity(0))
    app_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    print(f"{len(photos)} photos; app on CPU {app_cpu}, visitors on CPU {client_cpu} (first run ingests: minutes)")
    pin(app_cpu)  # the app (and the ingest before it) inherit this CPU
    with start_app(args.work / "app", model, photos=photos, extra_config=EXTRA_CONFIG, timeout_s=1800) as app:
        floor = floor_ms(app, args.k)
        pin(client_cpu)
        print("floor, in-process on the app's CPU: " + ", ".join(f"{n} {v:.2f} ms" for n, v in floor.items()))
        event = search_event(app.url)
        run_level(app, event, 5, max(args.k), 3.0)  # warm-up: lazy loads, caches, thread pools
        print(
            f"{'k':>4} {'visitors':>8} {'searches/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'app CPU ms':>10} "
            f"{'x handler':>9} {'errors':>6}"
        )
        levels = []
        for k in args.k:
            for visitors in args.visitors:
                level = run_level(app, event, visitors, k, args.seconds)
                levels.append(level)
                print(
                    f"{k:>4} {visitors:>8} {level.rate:>10.1f} {level.quantile_ms(0.5):>8.1f} "
                    f"{level.quantile_ms(0.95):>8.1f} {level.cpu_ms:>10.1f} "
                    f"{level.cpu_ms / floor[f'handler k={k}']:>9.1f} {level.errors:>6}",
                    flush=True,
                )
        summarise(levels, args.k)


def summarise(levels: list[Level], k_values: list[int]) -> None:
    """App CPU per search of the largest k against the smallest, at the busiest level (the overhead's ratio)."""
    if len(k_values) < 2:
        return
    busiest = max(lv.visitors for lv in levels)
    cost = {lv.k: lv.cpu_ms for lv in levels if lv.visitors == busiest}
    small, large = min(k_values), max(k_values)
    print(f"app CPU per search at {busiest} visitors: k={large} / k={small} = {cost[large] / cost[small]:.2f}x")


if __name__ == "__main__":
    main()
