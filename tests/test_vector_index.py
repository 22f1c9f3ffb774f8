"""The in-memory vector index, flat and IVF, against numpy brute force (real FAISS, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys

import faiss
import numpy as np
import pytest

from clip_search.collection.scan import BLOCK_ROWS
from clip_search.collection.vector_index import (
    FlatIndex,
    IVFIndex,
    VectorIndex,
    default_nlist,
    make_index,
)
from clip_search.faisslib import openblas_coretype
from tests.conftest import ROOT


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int, centres: int, *, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``centres`` random directions (noise of norm ~``noise`` before normalising)."""
    rng = np.random.default_rng(seed)
    c = unit(rng, centres, dim)
    x = c[rng.integers(0, centres, n)] + noise / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]))


def address(index: FlatIndex) -> int:
    return int(index._index.get_xb())


# -- flat ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flat_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.choice(10**9, size=3000, replace=False).astype(np.int64), unit(rng, 3000, 48)


@pytest.mark.parametrize("nq", [1, 5, 32])
def test_flat_equals_brute_force(flat_data, nq):
    ids, vectors = flat_data
    index = FlatIndex(48)
    for start in range(0, len(ids), 700):
        index.add(ids[start : start + 700], vectors[start : start + 700])
    queries = unit(np.random.default_rng(nq), nq, 48)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(ids, vectors, queries, 10)
    assert scores.shape == found.shape == (nq, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_flat_k_larger_than_index_empty_and_one_row(flat_data):
    ids, vectors = flat_data
    index = FlatIndex(48)
    scores, found = index.search(vectors[:3], 10)
    assert scores.shape == found.shape == (3, 0)
    index.add(ids[:1], vectors[:1])
    scores, found = index.search(vectors[:2], 10)
    assert found.tolist() == [[ids[0]], [ids[0]]]
    np.testing.assert_allclose(scores[:, 0], vectors[:2] @ vectors[0], atol=1e-5)
    index.add(ids[1:7], vectors[1:7])
    for nq in (1, 32):
        scores, found = index.search(vectors[:nq], 100)
        want_scores, want_ids = brute_force(ids[:7], vectors[:7], vectors[:nq], 7)
        assert found.shape == (nq, 7)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert index.search(vectors[:4], 0)[1].shape == (4, 0)
    assert index.search(vectors[:4], -3)[1].shape == (4, 0)


def test_flat_add_remove_ids(flat_data):
    ids, vectors = flat_data
    index = FlatIndex(48)
    index.add(ids, vectors)
    assert len(index) == len(ids)
    assert sorted(index.ids().tolist()) == sorted(ids.tolist())
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [-5, 12345678901]])) == len(gone)  # unknown ids are ignored
    assert index.remove(gone) == 0
    keep = np.setdiff1d(np.arange(len(ids)), np.arange(0, len(ids), 3))
    assert len(index) == len(keep)
    assert sorted(index.ids().tolist()) == sorted(ids[keep].tolist())
    queries = unit(np.random.default_rng(7), 32, 48)
    for batch in (queries[:1], queries):
        scores, found = index.search(batch, 10)
        want_scores, want_ids = brute_force(ids[keep], vectors[keep], batch, 10)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert index.remove(index.ids()) == len(keep)
    assert len(index) == 0 and index.search(queries, 5)[1].shape == (32, 0)


def test_flat_reserve_then_add_one_at_a_time_does_not_reallocate(flat_data):
    ids, vectors = flat_data
    index = make_index("flat", 48, expected=500)
    assert isinstance(index, FlatIndex) and index.capacity >= 500 + 500 // 8
    capacity = index.capacity
    index.add(ids[:1], vectors[:1])
    start = address(index)
    for i in range(1, 500):
        index.add(ids[i : i + 1], vectors[i])
    assert address(index) == start and index.capacity == capacity
    scores, found = index.search(vectors[:32], 5)
    want_scores, want_ids = brute_force(ids[:500], vectors[:500], vectors[:32], 5)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_flat_grows_by_an_eighth_not_double():
    rng = np.random.default_rng(3)
    index = FlatIndex(8)
    index.reserve(40_000)
    index.add(np.arange(40_000), unit(rng, 40_000, 8))
    index.add(np.array([-1]), unit(rng, 1, 8))
    assert index.capacity == 45_000
    assert len(index) == 40_001 and index.search(unit(rng, 1, 8), 3)[1].shape == (1, 3)


def test_faiss_itself_searches_the_flat_index_through_growth_and_removal(flat_data):
    """FAISS's IndexFlatIP views the index's own array: its search, count and serialisation see exactly the rows
    held, after the array grew (a new allocation) and after removals moved rows."""
    ids, vectors = flat_data
    index = FlatIndex(48)
    for start in range(0, len(ids), 50):  # several growths from an empty index
        index.add(ids[start : start + 50], vectors[start : start + 50])
    index.remove(ids[::4])
    keep = np.setdiff1d(np.arange(len(ids)), np.arange(0, len(ids), 4))
    held = dict(zip(index.ids().tolist(), range(len(index)), strict=True))
    queries = unit(np.random.default_rng(11), 8, 48)
    faiss_scores, faiss_rows = index._index.search(queries, 10)
    assert index._index.ntotal == len(keep)
    np.testing.assert_array_equal(index.ids()[faiss_rows], brute_force(ids[keep], vectors[keep], queries, 10)[1])
    np.testing.assert_allclose(faiss_scores, index.search(queries, 10)[0], atol=1e-5)
    copy = faiss.deserialize_index(faiss.serialize_index(index._index))
    assert copy.ntotal == len(keep) and np.allclose(copy.reconstruct(held[int(ids[1])]), vectors[1])


def test_flat_save_load_round_trip(tmp_path, flat_data):
    ids, vectors = flat_data
    index = FlatIndex(48)
    index.add(ids, vectors)
    index.remove(ids[:10])
    index.save(tmp_path / "flat.idx")
    loaded = VectorIndex.load(tmp_path / "flat.idx")
    assert isinstance(loaded, FlatIndex) and len(loaded) == len(index) and loaded.capacity > len(loaded)
    queries = unit(np.random.default_rng(9), 32, 48)
    for batch in (queries[:1], queries):
        a, b = index.search(batch, 10), loaded.search(batch, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    start = address(loaded)
    loaded.add(np.array([7]), vectors[0])  # the headroom reserved at load takes new uploads in place
    assert address(loaded) == start and loaded.search(vectors[:1], 1)[1][0, 0] == 7


def test_wrong_shapes_are_refused():
    index = FlatIndex(4)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="ids"):
        index.add(np.array([1, 2]), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((2, 3), np.float32), 1)


# -- the flat scan against FAISS's own exact search --------------------------------------------------------------


def faiss_exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) from FAISS's IndexFlatIP over a copy of ``vectors``: the reference the scan must equal."""
    reference = faiss.IndexFlatIP(vectors.shape[1])
    reference.add(np.ascontiguousarray(vectors))
    return reference.search(np.ascontiguousarray(queries), k)


def assert_same_top(scores, found, want_scores, want_ids) -> None:
    """Scores to 1e-5 and the same ids in the same order; two ids may swap only where their scores tie (1e-6)."""
    assert scores.shape == found.shape == want_ids.shape
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    for q in np.flatnonzero((found != want_ids).any(axis=1)):
        assert set(found[q]) == set(want_ids[q])
        for pos in np.flatnonzero(found[q] != want_ids[q]):
            near = np.abs(want_scores[q] - want_scores[q, pos]) <= 1e-6
            assert near.sum() > 1, f"query {q} rank {pos}: {found[q, pos]} instead of {want_ids[q, pos]}"


@pytest.fixture(scope="module")
def many() -> dict:
    """More rows than two scan blocks (so scans split into parts and merge blocks), ids unlike row numbers."""
    rng = np.random.default_rng(11)
    n = 2 * BLOCK_ROWS + 5_003
    vectors = clustered(n, 32, 40, seed=11)
    ids = rng.choice(10**12, size=n, replace=False).astype(np.int64)
    index = FlatIndex(32)
    for start in range(0, n, 9_000):
        index.add(ids[start : start + 9_000], vectors[start : start + 9_000])
    return {"ids": ids, "vectors": vectors, "index": index, "queries": clustered(64, 32, 40, seed=12)}


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("batch_scan", ["fp32", "bf16"], indirect=True)
@pytest.mark.parametrize("nq", [1, 7, 32, 64])
@pytest.mark.parametrize("k", [1, 10, 250])
def test_flat_scan_equals_faiss_exact_search(many, threads, batch_scan, nq, k):
    queries = many["queries"][:nq]
    scores, found = many["index"].search(queries, k)
    want_scores, rows = faiss_exact(many["vectors"], queries, k)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert_same_top(scores, found, want_scores, many["ids"][rows])


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("batch_scan", ["fp32", "bf16"], indirect=True)
def test_flat_scan_when_every_block_beats_the_last(threads, batch_scan):
    """Rows sorted from worst to best for the first query: each block replaces the k best found so far."""
    vectors = clustered(3 * BLOCK_ROWS, 16, 10, seed=5)
    queries = clustered(8, 16, 10, seed=6)
    vectors = vectors[np.argsort(vectors @ queries[0])]
    index = FlatIndex(16)
    index.add(np.arange(len(vectors)), vectors)
    for batch in (queries[:1], queries):
        scores, found = index.search(batch, 20)
        want_scores, want_rows = faiss_exact(vectors, batch, 20)
        assert_same_top(scores, found, want_scores, want_rows)
    assert found[0, 0] == len(vectors) - 1


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_flat_scan_k_beyond_the_collection_empty_and_one_row(threads):
    rng = np.random.default_rng(4)
    vectors, queries = unit(rng, 7, 24), unit(rng, 32, 24)
    index = FlatIndex(24)
    for nq in (1, 32):
        assert index.search(queries[:nq], 5)[1].shape == (nq, 0)  # empty
    index.add(np.array([42]), vectors[:1])
    for nq in (1, 32):  # one row
        scores, found = index.search(queries[:nq], 5)
        want_scores, _ = faiss_exact(vectors[:1], queries[:nq], 1)
        assert found.tolist() == [[42]] * nq
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    index.add(np.arange(100, 106), vectors[1:])
    for nq in (1, 32):  # k > N: every row, best first
        scores, found = index.search(queries[:nq], 50)
        want_scores, rows = faiss_exact(vectors, queries[:nq], 7)
        assert_same_top(scores, found, want_scores, np.array([42, 100, 101, 102, 103, 104, 105])[rows])


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("batch_scan", ["fp32", "bf16"], indirect=True)
def test_flat_scan_a_query_without_numbers_finds_nothing(many, threads, batch_scan):
    queries = many["queries"][:3].copy()
    queries[1, 5] = np.nan
    scores, found = many["index"].search(queries, 4)
    assert (found[1] == -1).all() and np.isneginf(scores[1]).all()
    want_scores, rows = faiss_exact(many["vectors"], queries[[0, 2]], 4)
    assert_same_top(scores[[0, 2]], found[[0, 2]], want_scores, many["ids"][rows])


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("share", [0.6, 0.05])  # scanned in place with a mask / gathered
@pytest.mark.parametrize("nq", [1, 32])
@pytest.mark.parametrize("batch_scan", ["fp32", "bf16"], indirect=True)
def test_flat_scan_allowed_equals_faiss_over_the_allowed_rows(many, threads, share, nq, batch_scan):
    rng = np.random.default_rng(8)
    rows = np.sort(rng.choice(len(many["ids"]), int(len(many["ids"]) * share), replace=False))
    queries = many["queries"][:nq]
    scores, found = many["index"].search(queries, 10, allowed=many["ids"][rows])
    want_scores, picked = faiss_exact(many["vectors"][rows], queries, 10)
    assert_same_top(scores, found, want_scores, many["ids"][rows][picked])
    few = many["ids"][rows[:3]]
    scores, found = many["index"].search(queries, 10, allowed=few)
    assert found.shape == (nq, 3) and (np.sort(found, axis=1) == np.sort(few)).all()


def test_openblas_kernels_follow_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd\n")
    assert openblas_coretype(cpuinfo) == "SkylakeX"
    cpuinfo.write_text("flags : fpu sse2 avx avx2 fma\n")
    assert openblas_coretype(cpuinfo) == "Haswell"
    cpuinfo.write_text("flags : fpu sse2 avx\n")
    assert openblas_coretype(cpuinfo) is None
    assert openblas_coretype(tmp_path / "missing") is None


def test_faiss_blas_runs_kernels_made_for_this_cpu():
    """The OpenBLAS inside faiss-cpu falls back to generic SSE3 kernels on CPUs newer than itself; clip_search
    loads FAISS with the kernels this CPU's flags allow, and leaves OPENBLAS_CORETYPE as it found it."""
    want = openblas_coretype()
    if want is None:
        pytest.skip("no AVX2 or AVX-512 flags in /proc/cpuinfo: OpenBLAS keeps its own choice")
    code = (
        "import os, clip_search.collection.vector_index\n"
        "from threadpoolctl import threadpool_info\n"
        "print([i['architecture'] for i in threadpool_info() if i['user_api'] == 'blas' and 'faiss' in i['filepath']], "
        "os.environ.get('OPENBLAS_CORETYPE'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"['{want}'] None"


# -- IVF -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters() -> dict:
    """20,000 x 64 around 50 centres, an IVF index trained on all of it, flat truth for 100 fresh queries."""
    data = clustered(20_100, 64, 50, seed=0)
    vectors, queries = data[:20_000], data[20_000:]
    ids = np.arange(20_000, dtype=np.int64) * 7 + 3
    flat = FlatIndex(64)
    flat.add(ids, vectors)
    _, truth = flat.search(queries, 10)
    return {"ids": ids, "vectors": vectors, "queries": queries, "truth": truth}


def build_ivf(clusters: dict, n: int = 20_000) -> IVFIndex:
    index = make_index("ivf", 64, sample=clusters["vectors"], expected=20_000)
    assert isinstance(index, IVFIndex)
    index.add(clusters["ids"][:n], clusters["vectors"][:n])
    return index


def exact_scores(clusters: dict, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    rows = (found - 3) // 7
    return np.einsum("qd,qkd->qk", queries.astype(np.float64), clusters["vectors"][rows].astype(np.float64))


def test_ivf_recall_and_exact_scores(clusters):
    index = build_ivf(clusters)
    assert index.nlist == default_nlist(20_000) == 512 and index.nprobe == 16 and index.trained_on == 20_000
    scores, found = index.search(clusters["queries"], 10)
    assert recall(clusters["truth"], found) >= 0.95
    assert (found >= 0).all()
    np.testing.assert_allclose(scores, exact_scores(clusters, clusters["queries"], found), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    single = index.search(clusters["queries"][0], 10)
    np.testing.assert_array_equal(single[1][0], found[0])


def test_ivf_adds_without_retraining_and_removes(clusters):
    index = build_ivf(clusters, n=15_000)
    centroids = faiss.rev_swig_ptr(index._quantizer.get_xb(), index.nlist * 64).copy()
    new_ids, new_vectors = clusters["ids"][15_000:], clusters["vectors"][15_000:]
    index.add(new_ids, new_vectors)
    assert len(index) == 20_000
    np.testing.assert_array_equal(faiss.rev_swig_ptr(index._quantizer.get_xb(), index.nlist * 64), centroids)
    scores, found = index.search(new_vectors[:50], 1)
    np.testing.assert_array_equal(found[:, 0], new_ids[:50])  # each new vector finds itself
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert sorted(index.ids().tolist()) == sorted(clusters["ids"].tolist())

    gone = new_ids[:50]
    assert index.remove(np.concatenate([gone, [-1, 10**12]])) == 50
    assert index.remove(gone) == 0
    assert len(index) == 19_950 and not set(gone) & set(index.ids().tolist())
    _, found = index.search(new_vectors[:50], 10)
    assert not set(gone) & set(found.ravel().tolist())


def test_ivf_fewer_found_than_k_and_edge_cases(clusters):
    index = IVFIndex(64, nlist=50, nprobe=1)
    assert index.search(clusters["queries"][:2], 5)[1].shape == (2, 0)  # empty
    with pytest.raises(ValueError, match="train"):
        index.add(clusters["ids"][:1], clusters["vectors"][:1])
    index.train(clusters["vectors"][:5000])
    with pytest.raises(ValueError, match="already trained"):
        index.train(clusters["vectors"][:5000])
    index.add(clusters["ids"][:300], clusters["vectors"][:300])
    scores, found = index.search(clusters["queries"][:4], 300)  # the one list probed holds a few of the 300
    assert found.shape == (4, 300) and (found == -1).any()
    assert np.isneginf(scores[found == -1]).all() and np.isfinite(scores[found >= 0]).all()
    index.nprobe = 50  # every list: now everything is found, in flat order
    _, found = index.search(clusters["queries"][:4], 300)
    assert (found >= 0).all()
    with pytest.raises(ValueError):
        index.nprobe = 0
    with pytest.raises(ValueError, match="39 per list"):
        IVFIndex(64, nlist=100, nprobe=1).train(clusters["vectors"][:50])


def test_ivf_save_load_round_trip(tmp_path, clusters):
    index = build_ivf(clusters)
    index.nprobe = 24
    index.save(tmp_path / "ivf.idx")
    loaded = VectorIndex.load(tmp_path / "ivf.idx")
    assert isinstance(loaded, IVFIndex)
    assert (loaded.nlist, loaded.nprobe, loaded.trained_on, len(loaded)) == (512, 24, 20_000, 20_000)
    assert loaded.is_trained and not loaded.needs_retrain(20_000)
    for batch in (clusters["queries"][:1], clusters["queries"]):
        a, b = index.search(batch, 10), loaded.search(batch, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    loaded.add(np.array([-42]), clusters["queries"][0])  # a loaded index keeps taking new vectors
    assert loaded.search(clusters["queries"][:1], 1)[1][0, 0] == -42


def test_damaged_or_foreign_files_raise_value_error(tmp_path, clusters):
    index = IVFIndex(64, nlist=20, nprobe=4)
    index.train(clusters["vectors"][:2000])
    index.add(clusters["ids"][:2000], clusters["vectors"][:2000])
    flat = FlatIndex(64)
    flat.add(clusters["ids"][:2000], clusters["vectors"][:2000])
    for name, good in (("ivf", index), ("flat", flat)):
        good.save(tmp_path / name)
        raw = (tmp_path / name).read_bytes()
        middle = len(raw) // 2
        bad = {
            "truncated": raw[:middle],
            "cut-short": raw[:-1],
            "garbage": bytes(range(256)) * 40,
            "empty": b"",
            "flipped": raw[:middle] + bytes([raw[middle] ^ 0x10]) + raw[middle + 1 :],
            "foreign": faiss.serialize_index(faiss.IndexFlatIP(64)).tobytes(),
        }
        for what, data in bad.items():
            (tmp_path / what).write_bytes(data)
            with pytest.raises(ValueError, match="vector index file"):
                VectorIndex.load(tmp_path / what)
    assert len(VectorIndex.load(tmp_path / "ivf")) == 2000  # the good files still load
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left by the atomic writes


def test_needs_retrain_after_fourfold_growth():
    index = IVFIndex(8, nlist=4, nprobe=2)
    assert index.needs_retrain(0)  # untrained
    index.train(unit(np.random.default_rng(0), 1000, 8))
    assert index.trained_on == 1000
    assert not index.needs_retrain(1000) and not index.needs_retrain(3999)
    assert index.needs_retrain(4000) and index.needs_retrain(10_000)
    assert not index.needs_retrain(4000, growth=8.0)


# -- rules and the factory -----------------------------------------------------------------------------------------


def test_default_nlist_rule():
    assert default_nlist(0) == 1 and default_nlist(1) == 1 and default_nlist(77) == 1
    assert default_nlist(78) == 2  # n // 39 caps small collections
    assert default_nlist(20_000) == 512  # 20,000 // 39 (4 * sqrt(20,000) would be 566)
    assert default_nlist(100_000) == round(4 * 100_000**0.5) == 1265
    assert default_nlist(1_000_000) == 4000
    values = [default_nlist(n) for n in range(0, 200_000, 997)]
    assert values == sorted(values)
    assert all(default_nlist(n) <= max(1, n // 39) for n in range(0, 200_000, 997))


def test_make_index():
    rng = np.random.default_rng(5)
    sample = unit(rng, 2000, 16)
    ivf = make_index("ivf", 16, sample=sample, nprobe=3, expected=100_000)
    assert isinstance(ivf, IVFIndex)
    assert ivf.nlist == 2000 // 39 and ivf.nprobe == 3 and ivf.trained_on == 100_000  # capped by the sample
    assert make_index("ivf", 16, sample=sample, nlist=10).nlist == 10
    flat = make_index("flat", 16, expected=1234)
    assert isinstance(flat, FlatIndex) and flat.capacity == 1234 + 1024 and len(flat) == 0  # room for uploads
    with pytest.raises(ValueError, match="sample"):
        make_index("ivf", 16)
    with pytest.raises(ValueError, match="kind"):
        make_index("hnsw", 16)


def test_index_kinds_are_vector_indexes():
    assert FlatIndex.kind == "flat" and IVFIndex.kind == "ivf"
    assert issubclass(FlatIndex, VectorIndex) and issubclass(IVFIndex, VectorIndex)


def test_concurrent_searches_agree_with_sequential(clusters):
    """Searches only read: several threads at once get what one thread gets (writers are the caller's to lock)."""
    from concurrent.futures import ThreadPoolExecutor

    flat = FlatIndex(64)
    flat.add(clusters["ids"], clusters["vectors"])
    ivf = build_ivf(clusters)
    queries = clusters["queries"]
    for index in (flat, ivf):
        want = [index.search(queries[i : i + 1], 10)[1] for i in range(len(queries))]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i, index=index: index.search(queries[i : i + 1], 10)[1], range(len(queries))))
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("share", [0.5, 0.002])
def test_allowed_ids_compete_before_ranking(clusters, kind, share):
    """A filter keeps k results whenever k ids are allowed (a selective filter empties IVF's probed lists: the
    index then scans every list), and equals brute force over the allowed vectors."""
    index = build_ivf(clusters) if kind == "ivf" else FlatIndex(64)
    if kind == "flat":
        index.add(clusters["ids"], clusters["vectors"])
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(20_000, int(20_000 * share), replace=False))
    allowed = np.concatenate([clusters["ids"][rows], [10**12]])  # an id the index lacks is harmless
    queries = clusters["queries"][:20]
    scores, found = index.search(queries, 10, allowed=allowed)
    assert (found >= 0).all() and np.isin(found, allowed).all()
    _, truth = brute_force(clusters["ids"][rows], clusters["vectors"][rows], queries, 10)
    assert recall(truth, found) >= (1.0 if kind == "flat" or share < 0.01 else 0.9)
    np.testing.assert_allclose(scores, exact_scores(clusters, queries, found), atol=1e-5)
    _, few = index.search(queries, 10, allowed=clusters["ids"][:3])
    assert (np.sort(few[:, :3], axis=1) == np.sort(clusters["ids"][:3])).all()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_blocked_ids_never_compete(clusters, kind):
    """Rows a viewer may not see (many of them: over the collection's over-fetch) are left out inside the scan:
    the results equal brute force over the others."""
    index = build_ivf(clusters) if kind == "ivf" else FlatIndex(64)
    if kind == "flat":
        index.add(clusters["ids"], clusters["vectors"])
    rng = np.random.default_rng(4)
    hidden = np.zeros(20_000, dtype=bool)
    hidden[rng.choice(20_000, 5_000, replace=False)] = True
    blocked = np.sort(np.concatenate([clusters["ids"][hidden], [10**12]]))  # an id the index lacks is harmless
    queries = clusters["queries"][:20]
    scores, found = index.search(queries, 10, blocked=blocked)
    assert (found >= 0).all() and not np.isin(found, blocked).any()
    _, truth = brute_force(clusters["ids"][~hidden], clusters["vectors"][~hidden], queries, 10)
    assert recall(truth, found) >= (1.0 if kind == "flat" else 0.9)
    np.testing.assert_allclose(scores, exact_scores(clusters, queries, found), atol=1e-5)
