"""Ray ingest throughput against two floors measured in the same run: the bare image-encoder forward pass on the
same images, and today's single-process ingest.

    python -m clip_search.testing tiny-model /tmp/base --base-architecture
    python benchmarks/bench_ray_ingest.py ../shared/data/coco-mini/val2017 --model /tmp/base --limit 128

The forward floor is measured before and after the ingests (the mean is used: the machine may be shared). The Ray
figure is given two ways: end to end (Ray's start-up, worker imports and model loads included) and steady
(files/s once the first embedded batch reached the driver). Prints one line per measure, then the ratios.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import time
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
    del encoder, pixels
    gc.collect()
    return rate


def single_rate(settings, paths: list[Path], tmp: Path) -> float:
    settings = settings.model_copy(deep=True)
    settings.data_dir = tmp / "single"
    with SearchEngine(settings) as engine:
        engine.encoder.warm_up()
        report = ingest_paths(engine, paths, progress=False)
    rate = report.added / report.seconds
    print(f"single-process ingest: {report.added} images in {report.seconds:.1f} s = {rate:.2f} images/s", flush=True)
    gc.collect()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_config(env={})
    settings.model.id = args.model
    settings.model.batch_size = args.batch_size
    paths = find_images(args.folder, recursive=True, extensions=settings.ingest.extensions)[: args.limit]
    before = forward_rate(settings, paths)
    with tempfile.TemporaryDirectory() as tmp:
        end_to_end, steady = ray_rates(settings, paths, Path(tmp), args.cpus)
        single = single_rate(settings, paths, Path(tmp))
    after = forward_rate(settings, paths)
    floor = (before + after) / 2
    print(f"ray steady / forward floor:     {steady / floor:.2f}x (goal >= 0.85)")
    print(f"ray end to end / forward floor: {end_to_end / floor:.2f}x")
    print(f"ray steady / single-process:    {steady / single:.2f}x")
    print(f"ray end to end / single-process: {end_to_end / single:.2f}x")


if __name__ == "__main__":
    main()
