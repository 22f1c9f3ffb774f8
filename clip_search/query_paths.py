"""The text query paths an encoder can serve, built by name: torch fp32 and dynamic int8, ONNX Runtime fp32 and int8.

Each path is held to torch fp32 on the probe queries (lowest cosine >= ``QUERY_COSINE_FLOOR``) before it may serve.
Building them by name lets a process that knows which one this machine chose (``query_choice``) build that one
alone: no ONNX export or quantization where torch won, no torch int8 clone where ONNX did.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_search.errors import ClipSearchError

log = logging.getLogger(__name__)

QUERY_COSINE_FLOOR = 0.999
PROBE_QUERIES = (
    "a dog running on a beach",
    "red sports car parked in the street at night",
    "two people eating pizza in a small kitchen",
    "snow-covered mountains under a clear blue sky",
    "a cat",
    "close-up of a yellow flower with a bee",
    "crowded train station, black and white photograph",
    "an old wooden boat on a calm lake at sunset with trees reflected in the water",
)
PATH_NAMES = ("fp32", "int8", "onnx-fp32", "onnx-int8")


def quantized_text_clone(model: Any) -> Any:
    """A shallow clone of ``model`` sharing its vision tower, with dynamic-int8 copies of its text tower (and text
    projection, for CLIP): queries get 1.4-2.2x faster on CPU while the collection's image vectors stay exactly fp32."""
    import torch

    clone = copy.copy(model)
    clone._modules = dict(model._modules)  # replace submodules of the clone only
    for name in ("text_model", "text_projection"):
        part = model._modules.get(name)
        if part is not None:
            with warnings.catch_warnings():  # torch.ao's notice that the API moves to torchao, once per process
                warnings.simplefilter("ignore")
                quantized = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(part), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
                )
            clone._modules[name] = quantized
    return clone.eval()


class QueryPaths:
    """Makes the query paths of one loaded fp32 ``model`` on demand, each checked against its probe vectors.

    ``encode(path, texts)`` runs texts through a path (the encoder's one encoding loop), ``sample`` is the
    tokenizer's tensors the ONNX export traces, ``onnx_file`` where the ONNX fp32 tower is cached (its int8 copy
    lies beside it). ``quantize`` / ``runtime`` are ``model.query_quantize`` / ``model.query_runtime``: a forced
    ``int8`` serves torch int8 whatever its probes say; ``onnx`` raises where no ONNX tower can serve.
    """

    def __init__(
        self,
        model: Any,
        *,
        encode: Callable[[Any, list[str]], np.ndarray],
        sample: Mapping[str, Any],
        onnx_file: Path,
        threads: int,
        quantize: str,
        runtime: str,
    ) -> None:
        self.model = model
        self.encode = encode
        self.sample = sample
        self.onnx_file = onnx_file
        self.threads = threads
        self.quantize = quantize
        self.runtime = runtime
        self.exact = functools.cache(lambda: encode(model, list(PROBE_QUERIES)))
        self._onnx_fp32 = functools.cache(self._make_onnx_fp32)

    def allowed(self, onnx_installed: bool) -> list[str]:
        """The names of the paths the settings allow: torch ones unless ``runtime`` is onnx, ONNX ones unless it is
        torch (for auto, only where ONNX Runtime is installed); ``quantize`` none keeps the fp32 ones, int8 the
        int8 ones. Never empty."""
        precisions = [p for p, ok in (("fp32", self.quantize != "int8"), ("int8", self.quantize != "none")) if ok]
        allowed = list(precisions) if self.runtime != "onnx" else []
        if self.runtime == "onnx" or (self.runtime == "auto" and onnx_installed):
            allowed += [f"onnx-{p}" for p in precisions]
        return allowed

    def build(self, name: str) -> Any | None:
        """The path ``name`` (one of ``PATH_NAMES``), or None where it cannot be made or its probes disagree."""
        makers = {"fp32": lambda: self.model, "int8": self._torch_int8, "onnx-fp32": self._onnx_fp32}
        return makers.get(name, self._onnx_int8)()

    def agreement(self, path: Any) -> float:
        """The lowest cosine between the probe queries' vectors through ``path`` and through torch fp32."""
        return float(np.min(np.sum(self.exact() * self.encode(path, list(PROBE_QUERIES)), axis=1)))

    def fallback(self) -> Any:
        """What serves when no allowed path can: torch fp32, unless ``runtime`` is onnx, which asked for ONNX alone."""
        if self.runtime == "onnx":
            raise ClipSearchError("model.query_runtime is onnx but no ONNX text tower agrees with fp32")
        return self.model

    def _torch_int8(self) -> Any | None:
        clone = quantized_text_clone(self.model)
        if self.quantize == "auto":
            cosine = self.agreement(clone)
            if cosine < QUERY_COSINE_FLOOR:
                log.info("torch int8 text queries left out: cosine %.4f to fp32 (< %.3f)", cosine, QUERY_COSINE_FLOOR)
                return None
        return clone

    def _make_onnx_fp32(self) -> Any | None:
        from clip_search import onnx_text

        return onnx_text.onnx_text_tower(
            self.model,
            self.sample,
            self.onnx_file,
            threads=self.threads,
            agreement=self.agreement,
            floor=QUERY_COSINE_FLOOR,
            required=self.runtime == "onnx",
        )

    def _onnx_int8(self) -> Any | None:
        """The cached int8 tower if it agrees (no fp32 tower needed then), else one quantized from the fp32 tower."""
        from clip_search import onnx_text

        if self.runtime == "onnx" and not onnx_text.onnx_available():
            return self._onnx_fp32()  # raises, saying what is missing
        return onnx_text.onnx_int8_tower(
            self.onnx_file, self._onnx_fp32, threads=self.threads, agreement=self.agreement, floor=QUERY_COSINE_FLOOR
        )
