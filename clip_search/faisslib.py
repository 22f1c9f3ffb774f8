"""FAISS, imported so that the OpenBLAS inside the faiss-cpu wheel runs kernels made for this CPU.

That OpenBLAS (0.3.15 in faiss-cpu 1.15.1) picks its kernels from the CPU model it recognises, and on CPUs newer
than itself (Sapphire Rapids, the development machine) it falls back to generic SSE3 ("Prescott") kernels: FAISS's
k-means, hence IVF training, ran 4x slower there, and its batched searches likewise. OpenBLAS reads
``OPENBLAS_CORETYPE`` when it loads, so it is set from the CPU's own feature flags (AVX-512 -> SkylakeX, AVX2 ->
Haswell) for the moment FAISS loads, numpy's BLAS having loaded and chosen for itself before. A value already in
the environment is left alone; a CPU with neither feature, or not Linux, keeps OpenBLAS's own choice.

Every module of clip_search takes FAISS from here: ``from clip_search.faisslib import faiss``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import numpy  # noqa: F401  (first: numpy's own BLAS picks its kernels itself)

_KERNELS = (  # (CPU flags all present, OpenBLAS core type), best first
    ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}, "SkylakeX"),
    ({"avx2", "fma"}, "Haswell"),
)


def openblas_coretype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The OpenBLAS core type this CPU's feature flags support, or None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    flags = set(lines[0].split(":", 1)[1].split()) if lines else set()
    return next((kernel for needed, kernel in _KERNELS if needed <= flags), None)


def _import_faiss() -> ModuleType:
    if "faiss" in sys.modules or "OPENBLAS_CORETYPE" in os.environ or not sys.platform.startswith("linux"):
        import faiss

        return faiss
    kernels = openblas_coretype()
    if kernels:
        os.environ["OPENBLAS_CORETYPE"] = kernels
    try:
        import faiss
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


faiss = _import_faiss()
