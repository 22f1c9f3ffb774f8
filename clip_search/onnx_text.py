"""Text queries through ONNX Runtime: the fp32 text tower exported once with ``torch.onnx``, cached on disk.

Why: on CPU, ONNX Runtime runs the same fp32 text tower 1.1-1.7x faster than torch, depending on the CPU, with
vectors equal to torch fp32's to ~1e-7 (``benchmarks/bench_query_path.py``). The export takes seconds (4-6 s for
siglip-base's shapes on 2 cores), so it is done once per model and kept as derived data: a lost or damaged file is
exported again, and the encoder only uses a tower whose probe vectors agree with torch fp32. A dynamic-int8 copy
(ONNX Runtime's quantizer, per-channel weights) is made from the cached file once and kept beside it; on CPUs with
fast int8 (VNNI, AMX) it was the fastest path of all (3x torch fp32). Which one serves is the encoder's timing call.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_search.errors import ClipSearchError
from clip_search.fileio import atomic_write, remove_stale_temp_files
from clip_search.model_source import features_tensor

log = logging.getLogger(__name__)

OPSET = 17
FORMAT = 1  # bump when the exported graph changes (inputs, outputs), so older cached files are not reused


def onnx_available() -> bool:
    """Whether this install can export (``onnx``, which ``torch.onnx.export`` needs) and run (``onnxruntime``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache_dir() -> Path:
    """Where an encoder given no ``cache_dir`` keeps its tower: ``$XDG_CACHE_HOME/clip-search`` (~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clip-search"


def cache_path(folder: Path, signature: str, text_length: int) -> Path:
    """Where the tower of model ``signature`` at ``text_length`` tokens is cached: the name carries everything that
    changes the exported graph (the model, the token count, the torch/transformers that traced it, the opset)."""
    import torch
    import transformers

    key = (
        f"{FORMAT}|{signature}|{text_length}|torch {torch.__version__}|transformers {transformers.__version__}|{OPSET}"
    )
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", signature)[-48:].strip("_.") or "model"
    return folder / f"text-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def _text_features_module(model: Any) -> Any:
    """``model.get_text_features`` as a module of its own, so it traces: the text features exactly as the encoder's
    torch path takes them (SigLIP's pooled head, CLIP's projection), and none of the vision tower."""
    import torch

    class TextFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return features_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    return TextFeatures().eval()


def export_text_tower(model: Any, sample: Mapping[str, Any]) -> bytes:
    """The fp32 text tower of ``model`` as ONNX bytes, traced on ``sample`` (the tokenizer's tensors, whose names
    become the graph's inputs: ``input_ids``, plus ``attention_mask`` for CLIP). Batch and length stay dynamic."""
    import torch

    names = list(sample)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about Python branches on shapes, which are fixed here
        torch.onnx.export(
            _text_features_module(model),
            tuple(sample[name] for name in names),
            buffer,
            input_names=names,
            output_names=["text_features"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxTextTower:
    """An ONNX Runtime session over an exported text tower, called like the torch model's ``get_text_features``
    (tensors in, a tensor out) so the encoder's one encoding loop serves both. ``run`` is thread-safe."""

    def __init__(self, model: str | Path | bytes, *, threads: int, source: str, query_path: str = "onnx-fp32") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        loaded = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(loaded, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.source = source  # the cache file, or "memory" when it could not be written
        self.query_path = query_path  # what HFEncoder.query_path reports for queries through this tower

    def get_text_features(self, **inputs: Any) -> Any:
        """The unnormalised text features of the tokenizer's tensors ``inputs``, as a CPU tensor."""
        import torch

        feeds = {name: np.ascontiguousarray(inputs[name].cpu().numpy(), dtype=np.int64) for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _load_cached(path: Path, threads: int, query_path: str = "onnx-fp32") -> OnnxTextTower | None:
    if not path.is_file():
        return None
    try:
        return OnnxTextTower(path, threads=threads, source=str(path), query_path=query_path)
    except Exception as exc:  # ORT raises its own classes for a truncated or garbled protobuf
        log.warning("cached text tower %s cannot be loaded (%s): exporting it again", path, str(exc)[:200])
        return None


def _export_and_store(model: Any, sample: Mapping[str, Any], path: Path, threads: int) -> OnnxTextTower:
    started = time.perf_counter()
    data = export_text_tower(model, sample)
    exported = time.perf_counter() - started
    try:
        remove_stale_temp_files(path.parent)
        atomic_write(path, [data])
        source = str(path)
    except OSError as exc:  # a read-only cache: the tower still serves from memory, exported again next start
        log.warning("cannot cache the exported text tower in %s (%s): kept in memory only", path.parent, exc)
        source = "memory"
    log.info("exported the text tower to ONNX in %.1f s (%.1f MB) -> %s", exported, len(data) / 1e6, source)
    return OnnxTextTower(data if source == "memory" else path, threads=threads, source=source)


def onnx_text_tower(
    model: Any,
    sample: Mapping[str, Any],
    path: Path,
    *,
    threads: int,
    agreement: Callable[[OnnxTextTower], float],
    floor: float,
    required: bool = False,
) -> OnnxTextTower | None:
    """The text tower through ONNX Runtime, cached at ``path``, provided its lowest probe cosine to torch fp32
    (``agreement``) is >= ``floor``. None where it cannot serve (not installed, the export failed, it disagrees):
    queries then stay on torch, unless the tower is ``required`` (``model.query_runtime: onnx``), which raises."""
    if not onnx_available():
        return _unavailable("onnxruntime and onnx are not installed", required)
    try:
        tower, cosine = _agreeing_tower(model, sample, path, threads, agreement, floor)
    except Exception as exc:  # an exporter or runtime failure must not stop the app: torch still works
        log.warning("the ONNX text tower could not be made", exc_info=True)
        return _unavailable(f"the export failed ({type(exc).__name__}: {str(exc)[:200]})", required)
    if tower is None:
        return _unavailable(f"its lowest probe cosine to fp32 is {cosine:.5f} < {floor}", required)
    return tower


def _unavailable(reason: str, required: bool) -> None:
    if required:
        raise ClipSearchError(f"model.query_runtime is onnx but {reason}; set it to auto or torch")
    log.info("text queries stay on torch: %s", reason)


def _agreeing_tower(
    model: Any,
    sample: Mapping[str, Any],
    path: Path,
    threads: int,
    agreement: Callable[[OnnxTextTower], float],
    floor: float,
) -> tuple[OnnxTextTower | None, float]:
    """The cached tower (exported first if missing or unloadable) and its probe cosine; a cached file that
    disagrees is taken for damaged and exported again; None where even a fresh export disagrees."""
    started = time.perf_counter()
    tower = _load_cached(path, threads)
    cosine = agreement(tower) if tower is not None else -1.0
    if tower is not None and cosine < floor:
        log.warning("cached text tower %s gives cosine %.5f to fp32 (< %.3f): exporting it again", path, cosine, floor)
        tower = None
    if tower is None:
        tower = _export_and_store(model, sample, path, threads)
        cosine = agreement(tower)
    if cosine < floor:
        return None, cosine
    log.info(
        "ONNX text tower ready in %.1f s (%d threads, lowest probe cosine to fp32 %.6f, %s)",
        time.perf_counter() - started,
        threads,
        cosine,
        tower.source,
    )
    return tower, cosine


def int8_path(fp32: Path) -> Path:
    """Where the dynamic-int8 copy of the cached fp32 tower ``fp32`` is kept."""
    return fp32.with_name(f"{fp32.stem}-int8.onnx")


def onnx_int8_tower(
    fp32_file: Path,
    fp32: Callable[[], OnnxTextTower | None],
    *,
    threads: int,
    agreement: Callable[[OnnxTextTower], float],
    floor: float,
) -> OnnxTextTower | None:
    """ONNX Runtime's dynamic int8 (per-channel weights) of the fp32 tower cached at ``fp32_file``, cached beside
    it, provided its lowest probe cosine to torch fp32 is >= ``floor``. A cached int8 file that agrees serves
    without the fp32 tower; otherwise ``fp32()`` (loaded or exported) is quantized. None where quantizing fails,
    the fp32 tower has no file (an unwritable cache) or the probes disagree. On CPUs with VNNI/AMX int8 it was
    the fastest path (bench_query_path)."""
    path = int8_path(fp32_file)
    try:
        tower = _load_cached(path, threads, "onnx-int8")
        if tower is None or agreement(tower) < floor:
            source = fp32()
            if source is None or source.source == "memory":
                return None
            started = time.perf_counter()
            _quantize(Path(source.source), path)
            tower = OnnxTextTower(path, threads=threads, source=str(path), query_path="onnx-int8")
            log.info("quantized the ONNX text tower to int8 in %.1f s -> %s", time.perf_counter() - started, path)
        cosine = agreement(tower)
    except ClipSearchError:
        raise  # query_runtime: onnx with no fp32 tower: the reason, as the fp32 path gives it
    except Exception:  # a quantizer or runtime failure only loses one candidate
        log.warning("the int8 ONNX text tower could not be made", exc_info=True)
        return None
    if cosine < floor:
        log.info("int8 ONNX text tower left out: lowest probe cosine to fp32 %.5f < %s", cosine, floor)
        return None
    return tower


def _quantize(source: Path, path: Path) -> None:
    """Dynamic int8 of ``source`` written to ``path`` atomically (the quantizer writes a file of its own)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    root = logging.getLogger()
    root.addFilter(_quantizer_chatter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, path)
    finally:
        root.removeFilter(_quantizer_chatter)
        Path(tmp).unlink(missing_ok=True)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    """False for what ONNX Runtime's quantizer logs on the root logger (a line per tensor it leaves in fp32, advice
    on pre-processing): the app's log keeps our one line on the quantization instead."""
    return "onnxruntime" not in Path(record.pathname).parts
