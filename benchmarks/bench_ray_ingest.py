"""Ray ingest throughput against two floors measured in the same run: the bare image-encoder forward pass on the
same images, and today's single-process ingest.

    python -m clip_search.testing tiny-model /tmp/base --base-architecture
    python benchmarks/bench_ray_ingest.py ../shared/data/coco-mini/val2017 --model /tmp/base --limit 64 [--rounds 3]

The machine may be shared, so the three are interleaved: each round runs the forward floor, the Ray ingest and
the plain ingest once (the order rotating from round to round, so a slow stretch does not always hit the same
one), into fresh collections, and each round's ratios use that round's figures. The Ray figure is given two
ways: end to end (Ray's start-up, worker imports and model loads included) and steady (files/s through the
embedders once the first batch was embedded). Prints one line per measure, then each ratio's median and spread.

Ray starts its worker processes at niceness 15 (its ``worker_niceness`` setting): on a machine busy with other
jobs they then get a small share of the CPU beside the floor and the plain ingest, which run at 0. By default this
benchmark sets the workers' niceness to 0 (``--ray-niceness ''`` keeps Ray's), which on a quiet machine changes
nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from clip_search.config import load_config
from clip_search.encoder import HFEncoder
from clip_search.engine import SearchEngine
from clip_search.images import decode_image, model_draft_side
from clip_search.ingest import find_images, ingest_paths
from clip_search.ray_ingest import RayOptions, ingest_ray


def forward_rate(settings, paths: list[Path]) -> float:
    """Images/s of ``encode_pixels`` alone on the preprocessed images (decode and preprocess not timed)."""
    encoder = HFEncoder.from_settings(settings.model)
    side = model_draft_side(encoder.input_size)
    pixels = np.stack(
        [encoder.preprocess(decode_image(p.read_bytes(), max_pixels=10**9, draft_side=side).image) for p in paths]
    )
    encoder.encode_pixels(pixels[: settings.model.batch_size])  # warm-up
    start = time.perf_counter()
    encoder.encode_pixels(pixels)
    rate = len(paths) / (time.perf_counter() - start)
    print(f"forward floor: {len(paths)} images, {rate:.2f} images/s (batch {settings.model.batch_size})", flush=True)
    return rate


def single_rate(settings, paths: list[Path], tmp: Path) -> float:
    settings = settings.model_copy(deep=True)
    settings.data_dir = tmp / "single"
    with SearchEngine(settings) as engine:
        engine.encoder.warm_up()
        report = ingest_paths(engine, paths, progress=False)
    rate = report.added / report.seconds
    print(f"single-process ingest: {report.added} images in {report.seconds:.1f} s = {rate:.2f} images/s", flush=True)
    return rate


def ray_rates(settings, paths: list[Path], tmp: Path, cpus: int) -> tuple[float, float]:
    folder = tmp / "source"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path.resolve())
    settings = settings.model_copy(deep=True)
    settings.data_dir = tmp / "ray"
    report = ingest_ray(settings, str(folder), RayOptions(num_cpus=cpus), progress=False)
    end_to_end = report.added / report.seconds
    print(
        f"ray ingest ({cpus} CPUs): {report.added} images in {report.seconds:.1f} s = {end_to_end:.2f} images/s end "
        f"to end; {report.steady_rate:.2f} images/s after {report.startup_seconds:.1f} s of start-up",
        flush=True,
    )
    return end_to_end, report.steady_rate


def measure(step: str, settings, paths: list[Path], tmp: Path, cpus: int, niceness: str) -> dict[str, float]:
    """One measure (see :func:`one_round`)."""
    if niceness:
        os.environ["RAY_worker_niceness"] = niceness  # noqa: SIM112 (Ray reads this exact name)
    if step == "forward":
        return {"forward": forward_rate(settings, paths)}
    if step == "ray":
        return dict(zip(("ray_end_to_end", "ray_steady"), ray_rates(settings, paths, tmp, cpus), strict=True))
    return {"single": single_rate(settings, paths, tmp)}


def one_round(settings, paths: list[Path], tmp: Path, cpus: int, turn: int, niceness: str) -> dict[str, float]:
    """The three measures once, in an order rotated by ``turn``, each ingest into its own fresh collection. Each
    runs in a fresh spawned process: no model, torch thread pool or memory carried over, and Ray never starts in a
    process that has used Lance (Lance is not fork-safe)."""
    steps = ["forward", "ray", "single"]
    figures: dict[str, float] = {}
    for step in steps[turn % 3 :] + steps[: turn % 3]:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            figures.update(pool.submit(measure, step, settings, paths, tmp, cpus, niceness).result())
    return figures


RATIOS = (
    ("ray steady / forward floor", "ray_steady", "forward", " (goal >= 0.85)"),
    ("ray end to end / forward floor", "ray_end_to_end", "forward", ""),
    ("ray steady / single-process", "ray_steady", "single", ""),
    ("ray end to end / single-process", "ray_end_to_end", "single", ""),
    ("single-process / forward floor", "single", "forward", ""),
)


def report(rounds: list[dict[str, float]]) -> None:
    """Each ratio's median over the rounds, with its lowest and highest round."""
    print(f"over {len(rounds)} rounds (median, [min - max]):")
    for name in ("forward", "ray_steady", "ray_end_to_end", "single"):
        values = [r[name] for r in rounds]
        print(f"  {name:<32} {statistics.median(values):5.2f} images/s [{min(values):.2f} - {max(values):.2f}]")
    for label, top, bottom, goal in RATIOS:
        values = [r[top] / r[bottom] for r in rounds]
        print(f"  {label:<32} {statistics.median(values):5.2f}x [{min(values):.2f} - {max(values):.2f}]{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ray-niceness",
        default="0",
        help="CPU niceness of Ray's workers (Ray's own default: 15); '' keeps Ray's. 0, as the floor and the plain "
        "ingest run, compares the three on equal terms on a machine shared with other jobs",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_config(env={})
    settings.model.id = args.model
    settings.model.batch_size = args.batch_size
    paths = find_images(args.folder, recursive=True, extensions=settings.ingest.extensions)[: args.limit]
    rounds = []
    for turn in range(args.rounds):
        print(f"-- round {turn + 1} of {args.rounds}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(one_round(settings, paths, Path(tmp), args.cpus, turn, args.ray_niceness))
    report(rounds)
    niceness = args.ray_niceness or "Ray's default"
    print(
        time.strftime("%Y-%m-%d"),
        f"{len(paths)} images, batch {args.batch_size}, {args.cpus} CPUs for Ray, Ray workers' niceness {niceness}",
    )


if __name__ == "__main__":
    main()
