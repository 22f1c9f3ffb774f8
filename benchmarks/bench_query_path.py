"""Which text-query path is fastest on this CPU while keeping cosine >= 0.999 to the fp32 vectors.

    PYTHONPATH=. python benchmarks/bench_query_path.py [--model DIR] [--rounds 3]

Candidates, on one 64-token query at a time (what a visitor's search does), medians of 15 after warm-up, per round:
- torch fp32 (the floor every ratio is against), torch dynamic int8 of the text tower (what
  ``model.query_quantize: auto`` uses), and, when ``onnxruntime`` is installed, ONNX Runtime fp32 and dynamic int8
  (per-channel weights) of the same tower exported with ``torch.onnx``.
Agreement: the lowest cosine to fp32 over 200 varied queries. Default model: the base-architecture random SigLIP
(``python -m clip_search.testing tiny-model DIR --base-architecture``), whose speed is that of the real one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clip_search.encoder import HFEncoder, quantized_text_clone

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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _onnx_paths(encoder: HFEncoder, folder: Path) -> dict[str, Path]:
    """The text tower exported once to ONNX (fp32) and dynamically quantised (int8, per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class TextTower(torch.nn.Module):
        def __init__(self, text_model: torch.nn.Module) -> None:
            super().__init__()
            self.text_model = text_model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.text_model(input_ids=input_ids).pooler_output

    fp32, int8 = folder / "text.onnx", folder / "text-int8.onnx"
    ids = _ids(encoder, ["a photo"])
    torch.onnx.export(
        TextTower(encoder._model.text_model).eval(),
        (ids,),
        str(fp32),
        input_names=["input_ids"],
        output_names=["vector"],
        dynamic_axes={"input_ids": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return {"onnx fp32": fp32, "onnx int8": int8}


def _ids(encoder: HFEncoder, texts: list[str]) -> torch.Tensor:
    tokens = encoder._processor.tokenizer(
        texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"
    )
    return tokens["input_ids"]


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
    encoder = HFEncoder(args.model, device="cpu", query_quantize="none")
    encoder.load()
    model = encoder._model
    paths: dict[str, object] = {"torch fp32": model, "torch int8": quantized_text_clone(model)}
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        for name, path in _onnx_paths(encoder, work).items():
            paths[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ImportError:
        print("onnxruntime is not installed: ONNX paths skipped (pip install onnxruntime onnx)")

    def encode(path: object, texts: list[str]) -> np.ndarray:
        if isinstance(path, torch.nn.Module):
            return encoder._encode_with(path, texts)
        return _unit(path.run(None, {"input_ids": _ids(encoder, texts).numpy()})[0])

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
