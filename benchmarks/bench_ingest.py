"""Ingest throughput against the bare image forward of the same model on the same photos, measured side by side.

    PYTHONPATH=. python benchmarks/bench_ingest.py ../shared/data/coco-mini/val2017 --model DIR [--limit 64]
        [--rounds 3] [--batch-size 8] [--workers 2] [--quantize none|int8]

Build models offline with `python -m clip_search.testing tiny-model DIR` (tiny) or
`... tiny-model DIR --base-architecture` (siglip-base-patch16-224 shapes, random weights: same speed as the real
model). Each round times the floor (the model's forward pass alone over the photos' preprocessed pixels, in
batches of --batch-size, nothing else running) and then the whole ingest (read, hash, decode, preprocess, embed,
store, commit) of the same photos into a fresh throw-away collection, with the same model object; it prints
both rates and their ratio, then the median and spread of the ratios.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from clip_search.config import Settings, load_config
from clip_search.encoder import Encoder, HFEncoder
from clip_search.engine import SearchEngine
from clip_search.ingest import find_images, ingest_paths


def ingest_settings(model: str, *, batch_size: int = 8, quantize: str = "none") -> Settings:
    """Default settings with this model (config.yaml's values otherwise; no environment overrides)."""
    settings = load_config(env={})
    settings.model.id = model
    settings.model.batch_size = batch_size
    settings.model.quantize = quantize
    return settings


def photos(folder: Path, limit: int = 0) -> list[Path]:
    """The image files under ``folder`` (sorted), the first ``limit`` of them if given."""
    paths = find_images(Path(folder), recursive=True, extensions=load_config(env={}).ingest.extensions)
    return paths[:limit] if limit else paths


def load_encoder(settings: Settings) -> HFEncoder:
    """The model, loaded and warmed up (first forward passes are slow), shared by floor and ingest."""
    encoder = HFEncoder.from_settings(settings.model)
    encoder.warm_up()
    return encoder


def forward_per_s(encoder: Encoder, pixels: np.ndarray) -> float:
    """Images/s of the model's forward pass alone over preprocessed ``pixels`` (its own batch size)."""
    started = time.perf_counter()
    encoder.encode_pixels(pixels)
    return len(pixels) / (time.perf_counter() - started)


def prepared_pixels(settings: Settings, encoder: Encoder, paths: list[Path]) -> np.ndarray:
    """The photos decoded and preprocessed exactly as the ingest does it (untimed: the floor's input)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings.model_copy(deep=True)
        settings.data_dir = Path(tmp)
        with SearchEngine(settings, encoder=encoder) as engine:
            return np.stack([engine.prepare(p.read_bytes()).pixels for p in paths])


def ingest_per_s(settings: Settings, encoder: Encoder, paths: list[Path], *, workers: int | None = None) -> float:
    """Images/s of a whole ingest of ``paths`` into a fresh collection (model already loaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings.model_copy(deep=True)
        settings.data_dir = Path(tmp)
        with SearchEngine(settings, encoder=encoder) as engine:
            report = ingest_paths(engine, paths, workers=workers, progress=False)
    if report.added != len(paths):
        raise RuntimeError(f"ingest added {report.added} of {len(paths)} photos: {report.summary()}")
    return report.added / report.seconds


def ingest_round(settings: Settings, encoder: Encoder, paths: list[Path], pixels: np.ndarray, **kw) -> dict:
    """One round, floor first: {"floor": images/s, "ingest": images/s, "ratio": ingest / floor}."""
    floor = forward_per_s(encoder, pixels)
    rate = ingest_per_s(settings, encoder, paths, **kw)
    return {"floor": floor, "ingest": rate, "ratio": rate / floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: ingest.decode_workers)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = ingest_settings(args.model, batch_size=args.batch_size, quantize=args.quantize)
    paths = photos(args.folder, args.limit)
    encoder = load_encoder(settings)
    pixels = prepared_pixels(settings, encoder, paths)
    ratios = []
    for round_no in range(1, args.rounds + 1):
        r = ingest_round(settings, encoder, paths, pixels, workers=args.workers)
        ratios.append(r["ratio"])
        print(
            f"round {round_no}: bare forward {r['floor']:.2f} images/s, ingest {r['ingest']:.2f} images/s "
            f"= {r['ratio']:.2f}x",
            flush=True,
        )
    print(
        f"{time.strftime('%Y-%m-%d')} {len(paths)} photos from {args.folder}, model {Path(args.model).name}, batch "
        f"{args.batch_size}, quantize {args.quantize}: ingest / bare forward median {statistics.median(ratios):.2f}x "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
