"""What the upload content check costs, as a share of the upload's own time measured in the same run.

    PYTHONPATH=. python benchmarks/bench_moderation.py ../shared/data/coco-mini/val2017 --model DIR [--n 20]

Build DIR with ``python -m clip_search.testing tiny-model DIR --base-architecture`` (siglip-base-patch16-224
shapes, random weights: the real model's speed). Each photo is uploaded as a visitor's would be
(``engine.upload``: decode, re-encode, duplicate checks, embed, the check, store, commit) with the shipped
``moderation`` prompts; the check alone (``Moderator.check`` on that photo's vector: one dot product per prompt)
is then timed 200 times on the same vector. Prints the medians and their ratio, and the one-time cost of
embedding the prompts (at the first upload). The photos' verdicts mean nothing with random weights.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from clip_search.config import load_config
from clip_search.engine import SearchEngine

REPEATS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    photos = sorted(args.folder.glob("*.jpg"))[: args.n + 1]
    settings = load_config(env={})
    settings.model.id = args.model
    settings.upload.near_duplicate_threshold = 0.9999  # random weights: distinct photos are close
    with tempfile.TemporaryDirectory() as tmp:
        settings.data_dir = Path(tmp)
        with SearchEngine(settings) as engine:
            engine.encoder.warm_up()
            started = time.perf_counter()
            engine.moderator.prompt_vectors()  # embeds the prompts: once per process (the app does it at start)
            prompts_ms = (time.perf_counter() - started) * 1000
            engine.upload(photos[0].read_bytes(), filename=photos[0].name)  # the first upload's lazy paths
            uploads, checks = [], []
            for photo in photos[1:]:
                data = photo.read_bytes()
                started = time.perf_counter()
                engine.upload(data, filename=photo.name)
                uploads.append(time.perf_counter() - started)
                prepared = engine.prepare(data, reencode=True)  # the same photo's vector, outside the timing
                vector = engine.embed([prepared])[0]
                for _ in range(REPEATS):
                    started = time.perf_counter()
                    engine.moderator.check(vector, prepared.data, prepared.content_type)
                    checks.append(time.perf_counter() - started)
    upload_ms = statistics.median(uploads) * 1000
    check_ms = statistics.median(checks) * 1000
    print(
        f"{len(uploads)} uploads ({Path(args.model).name}, {len(settings.moderation.prompts)} prompts): "
        f"upload median {upload_ms:.1f} ms, check median {check_ms * 1000:.1f} us = "
        f"{check_ms / upload_ms:.4%} of an upload; embedding the prompts once: {prompts_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
