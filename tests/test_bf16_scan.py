"""Batches through the bfloat16 copy give FAISS's exact answer, wherever bfloat16 alone could not tell rows apart."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from clip_search.collection import bf16_scan
from clip_search.collection.bf16_scan import Bf16Copy, scan_topk_bf16, set_batch_scan
from clip_search.collection.scan import set_search_threads
from clip_search.collection.vector_index import FlatIndex
from tests.conftest import ROOT
from tests.test_vector_index import assert_same_top, clustered, faiss_exact, unit

BATCHES_IN_BF16 = pytest.mark.parametrize("batch_scan", ["bf16"], indirect=True)
TWO_THREAD_COUNTS = pytest.mark.parametrize("threads", [1, 2], indirect=True)


def exact_via_copy(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return scan_topk_bf16(Bf16Copy(vectors.shape[1]), vectors, queries, k)


@TWO_THREAD_COUNTS
def test_rows_bfloat16_cannot_tell_apart_rank_as_in_float32(threads):
    """Rows within 1e-3 of one another, below bfloat16's step of 4e-3 near 1 but far above float32's."""
    rng = np.random.default_rng(3)
    base = unit(rng, 1, 64)
    vectors = base + 1e-3 * rng.standard_normal((3_000, 64), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = base + 0.3 * unit(rng, 8, 64)
    scores, rows = exact_via_copy(vectors, queries, 25)
    want_scores, want_rows = faiss_exact(vectors, queries, 25)
    assert_same_top(scores, rows, want_scores, want_rows)
    bf16_only = (torch.from_numpy(vectors).bfloat16() @ torch.from_numpy(queries).bfloat16().T).float().numpy()
    bf16_rows = np.argsort(-bf16_only, axis=0, kind="stable")[:25].T
    assert (bf16_rows != want_rows).any()  # bfloat16 alone ranks them wrong


@TWO_THREAD_COUNTS
def test_scores_near_zero_rank_as_in_float32(threads):
    """Text-to-image cosines are small (SigLIP: 0.05-0.2): there the rounding of the inputs, not of the output,
    is what bfloat16 gets wrong, and the bound must cover it."""
    rng = np.random.default_rng(4)
    away = unit(rng, 1, 256)
    vectors = away + 0.005 * rng.standard_normal((3_000, 256), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = unit(rng, 32, 256)
    queries -= (queries @ away.T) * away  # orthogonal to the rows' common direction: scores of 0.01-0.03
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, rows = exact_via_copy(vectors, queries, 25)
    want_scores, want_rows = faiss_exact(vectors, queries, 25)
    assert np.abs(want_scores).max() < 0.05
    assert_same_top(scores, rows, want_scores, want_rows)


@TWO_THREAD_COUNTS
def test_vectors_of_any_length(threads):
    """The bound scales with the norms: rows from 0.01 to 100 long, queries likewise."""
    rng = np.random.default_rng(5)
    vectors = clustered(40_000, 48, 30, seed=5) * rng.uniform(0.01, 100, (40_000, 1)).astype(np.float32)
    queries = clustered(16, 48, 30, seed=6) * rng.uniform(0.01, 100, (16, 1)).astype(np.float32)
    scores, rows = exact_via_copy(vectors, queries, 10)
    want_scores, want_rows = faiss_exact(vectors, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-3)
    assert (rows == want_rows).mean() > 0.999


def test_empty_one_row_and_k_beyond_the_rows():
    rng = np.random.default_rng(7)
    vectors, queries = unit(rng, 9, 24), unit(rng, 32, 24)
    scores, rows = exact_via_copy(vectors[:0], queries, 5)
    assert (rows == -1).all() and np.isneginf(scores).all()
    scores, rows = exact_via_copy(vectors[:1], queries, 3)
    assert (rows[:, 0] == 0).all() and (rows[:, 1:] == -1).all() and np.isneginf(scores[:, 1:]).all()
    scores, rows = exact_via_copy(vectors, queries, 20)
    want_scores, want_rows = faiss_exact(vectors, queries, 9)
    assert_same_top(scores[:, :9], rows[:, :9], want_scores, want_rows)
    assert (rows[:, 9:] == -1).all()


@BATCHES_IN_BF16
@TWO_THREAD_COUNTS
def test_the_copy_follows_adds_and_removals(batch_scan, threads):
    rng = np.random.default_rng(9)
    vectors = clustered(50_000, 32, 50, seed=9)
    ids = rng.choice(10**12, size=len(vectors), replace=False).astype(np.int64)
    queries = clustered(12, 32, 50, seed=10)
    index = FlatIndex(32)
    index.add(ids[:40_000], vectors[:40_000])
    index.search(queries, 10)
    assert index._bf16 is not None and index._bf16.size == 40_000
    index.add(ids[40_000:], vectors[40_000:])  # converted on the next batch
    gone = rng.choice(len(ids), 7_000, replace=False)
    index.remove(ids[gone])  # holes filled with the last rows, some of them not yet converted
    left = np.setdiff1d(np.arange(len(ids)), gone)
    scores, found = index.search(queries, 10)
    want_scores, rows = faiss_exact(vectors[left], queries, 10)
    assert_same_top(scores, found, want_scores, ids[left][rows])
    index.remove(ids[left[:100]])  # after a full sync: rows move inside the copy
    scores, found = index.search(queries, 10)
    want_scores, rows = faiss_exact(vectors[left[100:]], queries, 10)
    assert_same_top(scores, found, want_scores, ids[left[100:]][rows])


def test_fp32_batches_and_single_queries_make_no_copy():
    vectors = clustered(40_000, 16, 20, seed=1)
    index = FlatIndex(16)
    index.add(np.arange(len(vectors)), vectors)
    set_batch_scan("bf16")
    index.search(vectors[:1], 5)  # one query: float32, always
    assert index._bf16 is None
    set_batch_scan("fp32")
    index.search(vectors[:8], 5)
    assert index._bf16 is None
    set_batch_scan("auto")
    index.search(vectors[:8], 5)
    assert (index._bf16 is not None) == bf16_scan.batches_use_bf16()
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        set_batch_scan("fp16")  # type: ignore[arg-type]


@BATCHES_IN_BF16
def test_a_batch_leaves_torch_threads_of_other_threads_alone(batch_scan):
    """The scan's workers run torch on one core each; the encoder's threads keep their own setting."""

    def in_a_new_thread() -> int:
        seen: list[int] = []
        fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        return seen[0]

    before, before_new = torch.get_num_threads(), in_a_new_thread()
    vectors = clustered(40_000, 16, 20, seed=2)
    index = FlatIndex(16)
    index.add(np.arange(len(vectors)), vectors)
    set_search_threads(2)
    try:
        index.search(vectors[:8], 5)
    finally:
        set_search_threads(1)
    assert index._bf16 is not None
    assert torch.get_num_threads() == before and in_a_new_thread() == before_new


@BATCHES_IN_BF16
def test_concurrent_first_batches_agree_with_faiss(batch_scan):
    """Several threads' first batches at once: the copy is made and extended once per call under its lock."""
    vectors = clustered(45_000, 32, 40, seed=12)
    queries = clustered(64, 32, 40, seed=13)
    index = FlatIndex(32)
    index.add(np.arange(40_000), vectors[:40_000])
    want_scores, want_rows = faiss_exact(vectors[:40_000], queries, 10)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda part: index.search(queries[part::4], 10), range(4)))
    for part, (scores, found) in enumerate(results):
        assert_same_top(scores, found, want_scores[part::4], want_rows[part::4])
    index.add(np.arange(40_000, 45_000), vectors[40_000:])
    want_scores, want_rows = faiss_exact(vectors, queries, 10)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda part: index.search(queries[part::4], 10), range(4)))
    for part, (scores, found) in enumerate(results):
        assert_same_top(scores, found, want_scores[part::4], want_rows[part::4])


def test_the_collection_loads_without_torch_until_a_batch_needs_it():
    """The admin CLI and other users of the collection start without torch's second of imports."""
    code = (
        "import sys; import clip_search.cli_admin, clip_search.collection.vector_index as v; import numpy as np\n"
        "assert 'torch' not in sys.modules, 'imported'\n"
        "index = v.FlatIndex(8); index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))\n"
        "index.search(np.eye(2, 8), 2)  # a batch over a small collection: the float32 scan\n"
        "assert 'torch' not in sys.modules, 'searched'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
