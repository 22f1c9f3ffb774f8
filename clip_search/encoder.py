"""Text and image embeddings in one space, from a SigLIP (or CLIP) checkpoint through ``transformers``.

The model is loaded once, lazily, on first use; everything returned is L2-normalised float32 so that a dot
product is a cosine. ``logit_scale``/``logit_bias`` are exposed so a cosine can be turned into SigLIP's match
probability ``sigmoid(cos * exp(scale) + bias)``, which is calibrated for image-text pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from clip_search.errors import ClipSearchError, EmptyQueryError
from clip_search.model_source import features_tensor, load_checkpoint
from clip_search.query_paths import PROBE_QUERIES, QueryPaths

if TYPE_CHECKING:
    from clip_search.config import ModelSettings

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the engine needs from a model back-end. ``HFEncoder`` is the one shipped."""

    name: str

    @property
    def input_size(self) -> int: ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray: ...

    def probability(self, scores: np.ndarray) -> np.ndarray | None: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _weights_fingerprint(directory: Path) -> str:
    """Cheap identity of a local checkpoint: its config plus the head and tail of each weight file."""
    digest = hashlib.sha256()
    config = directory / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weights in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(max(size - (1 << 20), 1 << 20))
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:12]


def model_signature(model_id: str, revision: str | None = None) -> str:
    """The name under which a catalog records which model made its vectors.

    A hub id is its own name (plus ``@revision``); a local directory is its folder name plus a fingerprint of
    its files, so two different checkpoints in folders of the same name never pass for each other.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return f"{path.resolve().name}#{_weights_fingerprint(path)}"
    return f"{model_id}@{revision}" if revision else model_id


def model_label(signature: str) -> str:
    """What a person can set ``model.id`` to, from a recorded signature: a hub id as it is, a local checkpoint
    as "a local folder named X" (the fingerprint after ``#`` means nothing to anyone)."""
    name, sep, _fingerprint = signature.partition("#")
    return f"a local model folder named '{name}'" if sep else f"'{signature}'"


def _pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def processor_input_size(processor: Any) -> int:
    """Side of the square a checkpoint's image processor produces (224 for siglip-base-patch16-224)."""
    size = getattr(processor.image_processor, "size", None)
    if isinstance(size, int):
        return size
    for name in ("height", "shortest_edge"):
        value = size.get(name) if hasattr(size, "get") else getattr(size, name, None)
        if value:
            return int(value)
    return 224


def preprocess_with(processor: Any, image: Image.Image) -> np.ndarray:
    """A processor's ``pixel_values`` (C, H, W) float32 for one RGB image: what :meth:`HFEncoder.preprocess` gives."""
    pixels = processor.image_processor(image, return_tensors="np")["pixel_values"]
    return np.asarray(pixels[0], dtype=np.float32)


class HFEncoder:
    """SigLIP/CLIP through ``AutoModel``/``AutoProcessor``: a hub id or a local directory."""

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        max_text_tokens: int = 64,
        torch_threads: int = 0,
        quantize: str = "none",
        query_quantize: str = "none",
        query_runtime: str = "torch",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.name = model_signature(model_id, revision)
        self.requested_device = device
        self.batch_size = batch_size
        self.max_text_tokens = max_text_tokens
        self.torch_threads = torch_threads
        self.quantize = quantize
        self.query_quantize = query_quantize
        self.query_runtime = query_runtime
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._text_model: Any = None  # what text queries go through (the model, its int8 clone, an ONNX tower)
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"
        self._is_siglip = True
        self._scale: float | None = None
        self._bias: float | None = None
        self._text_length = max_text_tokens

    @classmethod
    def from_settings(cls, model: ModelSettings, *, cache_dir: str | Path | None = None) -> HFEncoder:
        """The encoder ``model.*`` in config.yaml describes; derived files (the ONNX text tower) go to ``cache_dir``
        (``Settings.cache_dir``; None: the user's cache, see :func:`clip_search.onnx_text.default_cache_dir`)."""
        return cls(
            model.id,
            revision=model.revision,
            device=model.device,
            batch_size=model.batch_size,
            max_text_tokens=model.max_text_tokens,
            torch_threads=model.torch_threads,
            quantize=model.quantize,
            query_quantize=model.query_quantize,
            query_runtime=model.query_runtime,
            cache_dir=cache_dir,
        )

    # -- loading -------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load model and processor (once; thread-safe). Called implicitly by every encode method."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            self._load()

    def _load(self) -> None:
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        model, processor = load_checkpoint(self.model_id, self.revision)
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ClipSearchError(
                f"model '{self.model_id}' ({type(model).__name__}) is not a dual text/image encoder such as "
                "SigLIP or CLIP"
            )
        self._device = _pick_device(self.requested_device)
        model = model.to(self._device).eval()
        if self.quantize == "int8":
            if self._device != "cpu":
                log.warning("model.quantize=int8 applies to the CPU only; ignored on %s", self._device)
            else:
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self._is_siglip = getattr(model.config, "model_type", "") in ("siglip", "siglip2")
        self._scale = (
            float(model.logit_scale.detach().float().reshape(-1)[0]) if hasattr(model, "logit_scale") else None
        )
        bias = getattr(model, "logit_bias", None)
        self._bias = float(bias.detach().float().reshape(-1)[0]) if bias is not None else None
        text_positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
        self._text_length = min(self.max_text_tokens, text_positions or self.max_text_tokens)
        self._processor = processor
        self._model = model
        log.info(
            "loaded %s on %s in %.1f s (%s)",
            self.model_id,
            self._device,
            time.perf_counter() - started,
            "SigLIP" if self._is_siglip else type(model).__name__,
        )

    def _query_encoder(self) -> Any:
        """What text queries go through, chosen on first need rather than at load (an ingest never encodes text)."""
        self.load()
        if self._text_model is None:
            with self._query_lock:
                if self._text_model is None:
                    started = time.perf_counter()
                    text_model = self._query_model(self._model)
                    log.info(
                        "text queries: %s (chosen in %.1f s)", self._path_of(text_model), time.perf_counter() - started
                    )
                    self._text_model = text_model
        return self._text_model

    def _query_model(self, model: Any) -> Any:
        """On CPU, the fastest of the query paths ``query_runtime`` and ``query_quantize`` allow whose probe vectors
        keep cosine >= the floor to fp32, timed on this CPU: which one wins depends on the CPU (int8 kernels with
        VNNI/AMX, ONNX Runtime's fp32 kernels), so the choice is measured, not assumed. The first process on a
        machine builds and times every path; later ones build only the path it chose (see query_choice)."""
        import torch

        from clip_search import onnx_text

        if self._device != "cpu" or self.quantize == "int8":
            if self.query_runtime == "onnx":
                log.warning("model.query_runtime=onnx applies to an fp32 model on the CPU only; ignored")
            return model
        paths = QueryPaths(
            model,
            encode=self._encode_with,
            sample=self._tokens(["a photo"]),
            onnx_file=onnx_text.cache_path(
                (self.cache_dir or onnx_text.default_cache_dir()) / "onnx", self.name, self._text_length
            ),
            threads=torch.get_num_threads(),
            quantize=self.query_quantize,
            runtime=self.query_runtime,
        )
        allowed = paths.allowed(onnx_text.onnx_available())
        if len(allowed) == 1:
            built = paths.build(allowed[0])
            return paths.fallback() if built is None else built
        return self._remembered_or_fastest(paths, allowed)

    def _remembered_or_fastest(self, paths: QueryPaths, allowed: list[str]) -> Any:
        """The path this machine chose before among ``allowed``, built alone; else the fastest, measured here while
        other processes starting on the machine wait for it (:func:`clip_search.query_choice.choosing`)."""
        from clip_search import onnx_text, query_choice

        record = query_choice.record_path(
            onnx_text.default_cache_dir(), model=self.name, names=allowed, threads=paths.threads
        )
        chosen = query_choice.remembered(record, allowed)
        if chosen is None:
            with query_choice.choosing(record):
                chosen = query_choice.remembered(record, allowed)  # by another process, while this one waited
                if chosen is None:
                    return self._fastest(paths, allowed, record)
        built = paths.build(chosen)
        if built is not None:
            return built
        log.warning("the query path %s chosen before cannot serve now: measuring every path again", chosen)
        with query_choice.choosing(record):
            return self._fastest(paths, allowed, record)

    def _fastest(self, paths: QueryPaths, allowed: list[str], record: Path) -> Any:
        """Every allowed path that agrees with fp32, timed (median of 5 one-query encodes after a warm-up call);
        the fastest serves and is remembered in ``record``."""
        from clip_search import query_choice

        built = {name: paths.build(name) for name in allowed}
        candidates = {name: path for name, path in built.items() if path is not None}
        if not candidates:
            return paths.fallback()
        probe = [PROBE_QUERIES[0]]

        def seconds(candidate: Any) -> float:
            self._encode_with(candidate, probe)
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                self._encode_with(candidate, probe)
                runs.append(time.perf_counter() - started)
            return float(np.median(runs))

        return query_choice.fastest(candidates, seconds, record, allowed=allowed)

    def warm_up(self) -> None:
        """One throwaway forward of each tower: transformers 5 maps weights lazily, so the first call is slow; this
        also chooses the query path (and exports the ONNX text tower on a first start) before any visitor asks."""
        self._query_encoder()  # logs how long the choice (and an export) took
        started = time.perf_counter()
        self.encode_text(["warm up"])
        text = time.perf_counter()
        self.encode_pixels(self.preprocess(Image.new("RGB", (self.input_size, self.input_size)))[None])
        log.info("warmed up: one text query %.2f s, one image %.2f s", text - started, time.perf_counter() - text)

    # -- facts about the model -------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        self.load()
        return self._device

    @property
    def query_path(self) -> str:
        """How text queries are encoded: "onnx-fp32" / "onnx-int8" (ONNX Runtime), "int8" (torch int8) or "fp32"."""
        return self._path_of(self._query_encoder())

    def _path_of(self, text_model: Any) -> str:
        return getattr(text_model, "query_path", None) or ("fp32" if text_model is self._model else "int8")

    @property
    def input_size(self) -> int:
        """Side of the square the vision tower sees (224 for siglip-base-patch16-224)."""
        self.load()
        return processor_input_size(self._processor)

    @property
    def logit_scale(self) -> float | None:
        self.load()
        return self._scale

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned bias; None for CLIP, whose logits are only meaningful inside a softmax."""
        self.load()
        return self._bias

    def probability(self, scores: np.ndarray) -> np.ndarray | None:
        """SigLIP's image-text match probability for cosine ``scores``; None when the model has no bias (CLIP)."""
        self.load()
        if self._scale is None or self._bias is None:
            return None
        logits = np.asarray(scores, dtype=np.float64) * np.exp(self._scale) + self._bias
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    # -- encoding ---------------------------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts, tokenized the way SigLIP was trained: padded to max length, truncated at 64 tokens."""

        if isinstance(texts, str):
            texts = [texts]
        texts = [t.strip() if isinstance(t, str) else "" for t in texts]
        if not texts or any(not t for t in texts):
            raise EmptyQueryError("the text query is empty: type a few words describing the picture you want")
        return self._encode_with(self._query_encoder(), texts)

    def encode_text_exact(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts through the torch fp32 text tower whatever the query path is (checks, evaluation)."""
        self.load()
        return self._encode_with(self._model, list(texts))

    def _tokens(self, texts: list[str]) -> dict[str, Any]:
        """The model's inputs for ``texts``: SigLIP's padded to max length without a mask, CLIP's padded to the
        longest with one (as each model card does)."""
        padding = "max_length" if self._is_siglip else True
        inputs = self._processor.tokenizer(
            texts, padding=padding, truncation=True, max_length=self._text_length, return_tensors="pt"
        )
        inputs = {k: v.to(self._device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        if self._is_siglip:
            # SigLIP was trained with no attention mask over its padding (pad == eos, pooled from the last
            # position); masking the pads would give vectors the image tower was never aligned with.
            inputs.pop("attention_mask", None)
        return inputs

    def _encode_with(self, model: Any, texts: list[str]) -> np.ndarray:
        """Texts through ``model``'s ``get_text_features``: the torch model, its int8 clone or an ONNX tower."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), max(self.batch_size, 32)):
                inputs = self._tokens(texts[start : start + max(self.batch_size, 32)])
                feats = features_tensor(model.get_text_features(**inputs))
                out.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(out))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's own processor on one RGB image -> ``pixel_values`` (C, H, W) float32. Thread-safe."""
        self.load()
        return preprocess_with(self._processor, image)

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """Embed a (N, C, H, W) batch of preprocessed images."""
        import torch

        self.load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixel_values), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(pixel_values[start : start + self.batch_size]))
                feats = features_tensor(self._model.get_image_features(pixel_values=batch.to(self._device)))
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return l2_normalize(np.concatenate(out))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images (see :func:`clip_search.images.decode_image` for getting them from bytes)."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        return self.encode_pixels(np.stack([self.preprocess(img.convert("RGB")) for img in images]))

    def describe(self) -> dict[str, Any]:
        """Facts for logs and the app header, without loading anything that is not loaded yet."""
        info: dict[str, Any] = {"model": self.model_id, "signature": self.name}
        config = Path(self.model_id) / "config.json"
        if config.exists():
            info["architecture"] = json.loads(config.read_text()).get("architectures", ["?"])[0]
        return info
