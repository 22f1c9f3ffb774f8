"""Which text-query path is fastest on this CPU while keeping cosine >= 0.999 to the fp32 vectors.

    PYTHONPATH=. python benchmarks/bench_query_path.py [--model DIR] [--rounds 3]

Candidates, on one 64-token query at a time (what a visitor's search does), medians of 15 after warm-up, per round:
- torch fp32 (the floor every ratio is against), torch dynamic int8 of the text tower (what
  ``model.query_runtime: torch`` with ``query_quantize: auto`` uses), and, when onnxruntime is installed, ONNX
  Runtime fp32 of the tower exported as the encoder exports it (``clip_search.onnx_text``: the default on CPU) and
  its dynamic int8 (per-channel weights). Every path runs through the encoder's own loop, tokenizer included.
Agreement: the lowest cosine to fp32 over 200 varied queries. It also prints which path the default settings pick.
Default model: the base-architecture random SigLIP (``python -m clip_search.testing tiny-model DIR
--base-architecture``), whose speed is that of the real one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clip_search.encoder import HFEncoder
from clip_search.onnx_text import OnnxTextTower, export_text_tower, onnx_available
from clip_search.query_paths import quantized_text_clone

QUERIES = [
    f"{a} {b}{c}"
    for a in ("a photo of", "a painting of", "close-up of", "a blurry picture of", "an aerial view of")
    for b in ("a dog", "two cats", "a red car", "a crowded beach", "mountains", "soup", "a street", "an old man")
    for c in ("", " at night", " in the rain", " with people around", " in winter")
]


def _median_ms(fn, reps: int = 15) -> float:
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _onnx_towers(encoder: HFEncoder, folder: Path) -> dict[str, OnnxTextTower]:
    """The text tower exported as the encoder does (fp32, ``clip_search.onnx_text``) and dynamically quantised
    (int8, per channel), each in an ONNX Runtime session of 2 threads."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / "text.onnx", folder / "text-int8.onnx"
    started = time.perf_counter()
    fp32.write_bytes(export_text_tower(encoder._model, encoder._tokens(["a photo"])))
    print(f"export of the text tower to ONNX: {time.perf_counter() - started:.1f} s", flush=True)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return {
        name: OnnxTextTower(path, threads=2, source=str(path))
        for name, path in (("onnx fp32", fp32), ("onnx int8", int8))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: a base-architecture random SigLIP)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-query-path-"))
    if args.model is None:
        from clip_search.testing import write_tiny_siglip

        args.model = str(write_tiny_siglip(work / "base-random", base_architecture=True))
    torch.set_num_threads(2)
    encoder = HFEncoder(args.model, device="cpu", query_runtime="torch", query_quantize="none")
    encoder.load()
    model = encoder._model
    paths: dict[str, object] = {"torch fp32": model, "torch int8": quantized_text_clone(model)}
    if onnx_available():
        paths.update(_onnx_towers(encoder, work))
    else:
        print("onnxruntime or onnx is not installed: ONNX paths skipped (pip install -r requirements.txt)")
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # its choice is remembered there, not in the user's cache
    default = HFEncoder(args.model, device="cpu", query_runtime="auto", query_quantize="auto", cache_dir=work)
    print(f"the default (model.query_runtime: auto) on this machine: {default.query_path}", flush=True)
    del default

    def encode(path: object, texts: list[str]) -> np.ndarray:
        return encoder._encode_with(path, texts)  # every path through the encoder's own loop: tokenizer included

    exact = encode(model, QUERIES)
    agreement = {name: float(np.min(np.sum(encode(p, QUERIES) * exact, axis=1))) for name, p in paths.items()}
    for round_no in range(1, args.rounds + 1):
        times = {
            name: _median_ms(lambda p=p: encode(p, ["a dog running on a beach at sunset"])) for name, p in paths.items()
        }
        floor = times["torch fp32"]
        cells = "  ".join(
            f"{name} {ms:6.1f} ms ({floor / ms:4.2f}x faster, min cos {agreement[name]:.5f})"
            for name, ms in times.items()
        )
        print(f"round {round_no}: {cells}", flush=True)
    print(time.strftime("%Y-%m-%d"), f"{len(QUERIES)} queries for agreement; speed = one query, 64 tokens, 2 threads")


if __name__ == "__main__":
    main()
