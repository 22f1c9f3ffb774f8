"""Ingest throughput (images/s) of a folder with a given model, into a throw-away data dir.

    python benchmarks/bench_ingest.py ../shared/data/imagenette-val --model DIR [--limit N] [--batch-size 8]

Build models offline with `python -m clip_search.testing tiny-model DIR` (tiny) or
`... tiny-model DIR --base-architecture` (siglip-base-patch16-224 shapes, random weights: same speed as the real
model). Prints one line: images, seconds, images/s, and the settings used.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from clip_search.config import load_config
from clip_search.engine import SearchEngine
from clip_search.ingest import find_images, ingest_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_config(env={})
    settings.model.id = args.model
    settings.model.batch_size = args.batch_size
    settings.model.quantize = args.quantize
    paths = find_images(args.folder, recursive=True, extensions=settings.ingest.extensions)
    if args.limit:
        paths = paths[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        settings.data_dir = Path(tmp)
        with SearchEngine(settings) as engine:
            engine.encoder.warm_up()
            start = time.perf_counter()
            report = ingest_paths(engine, paths, workers=args.workers)
            seconds = time.perf_counter() - start
    print(
        f"{report.added} images in {seconds:.1f} s = {report.added / seconds:.2f} images/s "
        f"(model {Path(args.model).name}, batch {args.batch_size}, {args.workers} decode workers, "
        f"quantize {args.quantize}, failed {len(report.failed)})"
    )


if __name__ == "__main__":
    main()
