"""Retrieval metrics from score matrices: pure numpy, one tie policy, every metric per query.

Everything starts from :func:`rank_relevant`, which turns a (queries x items) score matrix and a relevance mask
into the 1-based ranks of each query's relevant items. Every metric below is a function of those ranks only, so
the embedding search, the keyword baseline and zero-shot classification are all scored by the same code.

Tie policy (worst case): items with equal scores are ordered with the *non-relevant ones first*. A method gets no
credit for failing to tell items apart: a constant scorer ranks every relevant item after every non-relevant one,
and a keyword search that shares no word with a relevant image ranks it after every image it did match. Ties among
relevant items cost nothing (their order among themselves changes no metric). This is a concrete ranking, so all
metrics agree with each other; it is ``trec_eval``'s convention with ties broken against the system. For tie-free
scores, :func:`average_precision` equals ``sklearn.metrics.average_precision_score``; with ties, scikit-learn
scores a whole tie group at once and can give a higher figure.

Conventions: ``k`` larger than the collection is allowed (``precision@k`` still divides by ``k``, as trec_eval
does); a query with no relevant item has no defined value for any metric (NaN) and is left out of the means, which
report how many queries they cover. Excluded items (``exclude``, e.g. a query image in leave-one-out) are removed
from the candidate list altogether.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Ranks",
    "average_precision",
    "chance",
    "first_relevant_rank",
    "hit_at_k",
    "mean",
    "mean_average_precision",
    "median_rank",
    "ndcg_at_k",
    "precision_at_k",
    "rank_relevant",
    "recall_at_k",
    "reciprocal_rank",
    "summarize",
]


@dataclass(frozen=True)
class Ranks:
    """The 1-based ranks of each query's relevant items.

    ``ranks`` is (queries, max relevant) float64, each row sorted ascending and padded with ``inf``;
    ``n_relevant`` and ``n_candidates`` are per query (the candidates exclude excluded items).
    """

    ranks: np.ndarray
    n_relevant: np.ndarray
    n_candidates: np.ndarray

    def __len__(self) -> int:
        return int(self.n_relevant.shape[0])

    @classmethod
    def concat(cls, parts: Iterable[Ranks]) -> Ranks:
        """Stack the ranks of several query chunks (in order)."""
        parts = list(parts)
        if not parts:
            return cls(np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        width = max(p.ranks.shape[1] for p in parts)
        padded = [np.pad(p.ranks, ((0, 0), (0, width - p.ranks.shape[1])), constant_values=np.inf) for p in parts]
        return cls(
            np.concatenate(padded),
            np.concatenate([p.n_relevant for p in parts]),
            np.concatenate([p.n_candidates for p in parts]),
        )

    def take(self, index: np.ndarray | Sequence[int]) -> Ranks:
        """These queries only, in this order."""
        index = np.asarray(index, dtype=np.int64)
        return Ranks(self.ranks[index], self.n_relevant[index], self.n_candidates[index])


def rank_relevant(
    scores: np.ndarray,
    relevant: np.ndarray,
    exclude: np.ndarray | None = None,
) -> Ranks:
    """Ranks of the relevant items of each query (row), higher score first, ties broken against the method.

    ``scores``: (Q, N) finite floats; ``relevant``: (Q, N) bool; ``exclude``: optional (Q, N) bool of items that
    are not candidates for that query (an excluded item is never relevant).
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or relevant.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be the same (Q, N) shape")
    n_queries, n_items = scores.shape
    if exclude is None:
        exclude = np.zeros_like(relevant)
    else:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude {exclude.shape} must have the shape of scores {scores.shape}")
    candidates = ~exclude
    if not np.isfinite(scores[candidates]).all():
        raise ValueError("scores must be finite (no NaN or infinity) for every candidate item")
    relevant = relevant & candidates
    keyed = np.where(candidates, -scores.astype(np.float64), np.inf)  # ascending key; excluded items sort last
    # Two stable sorts: first non-relevant before relevant, then by score, which keeps that order inside ties.
    by_relevance = np.argsort(relevant, axis=1, kind="stable")
    by_score = np.argsort(np.take_along_axis(keyed, by_relevance, axis=1), axis=1, kind="stable")
    order = np.take_along_axis(by_relevance, by_score, axis=1)
    position = np.empty((n_queries, n_items), dtype=np.float64)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(1, n_items + 1, dtype=np.float64), order.shape), 1)
    n_relevant = relevant.sum(axis=1)
    width = int(n_relevant.max()) if n_queries else 0
    ranks = np.sort(np.where(relevant, position, np.inf), axis=1)[:, :width]
    return Ranks(ranks, n_relevant.astype(np.int64), candidates.sum(axis=1).astype(np.int64))


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    return int(k)


def _undefined(r: Ranks, values: np.ndarray) -> np.ndarray:
    """NaN for queries with no relevant item."""
    return np.where(r.n_relevant > 0, values, np.nan)


def _hits(r: Ranks, k: int) -> np.ndarray:
    return (r.ranks <= _check_k(k)).sum(axis=1)


def recall_at_k(r: Ranks, k: int) -> np.ndarray:
    """Share of the query's relevant items found in the top ``k``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined(r, _hits(r, k) / r.n_relevant)


def precision_at_k(r: Ranks, k: int) -> np.ndarray:
    """Share of the top ``k`` that is relevant (divided by ``k`` even when fewer than ``k`` items exist)."""
    return _undefined(r, _hits(r, k) / _check_k(k))


def hit_at_k(r: Ranks, k: int) -> np.ndarray:
    """1 when at least one relevant item is in the top ``k`` (the "R@K" of image-to-text retrieval papers)."""
    return _undefined(r, (_hits(r, k) > 0).astype(np.float64))


def first_relevant_rank(r: Ranks) -> np.ndarray:
    """Rank of the best-placed relevant item (NaN when there is none)."""
    if r.ranks.shape[1] == 0:
        return np.full(len(r), np.nan)
    return _undefined(r, r.ranks[:, 0])


def reciprocal_rank(r: Ranks) -> np.ndarray:
    """1 / rank of the first relevant item."""
    return 1.0 / first_relevant_rank(r)


def average_precision(r: Ranks) -> np.ndarray:
    """Mean over the relevant items of the precision at each one's rank (every relevant item is ranked)."""
    if r.ranks.shape[1] == 0:
        return np.full(len(r), np.nan)
    found = np.arange(1, r.ranks.shape[1] + 1, dtype=np.float64)  # i-th relevant item: i relevant at or above it
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(np.isfinite(r.ranks), found / r.ranks, 0.0)
        return _undefined(r, precision.sum(axis=1) / r.n_relevant)


def ndcg_at_k(r: Ranks, k: int) -> np.ndarray:
    """Normalised discounted cumulative gain at ``k`` with binary relevance (gain 1 / log2(rank + 1))."""
    k = _check_k(k)
    with np.errstate(divide="ignore"):
        gains = np.where(r.ranks <= k, 1.0 / np.log2(r.ranks + 1.0), 0.0)
    ideal_discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))
    ideal = ideal_discounts[np.clip(np.minimum(r.n_relevant, k) - 1, 0, None)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined(r, gains.sum(axis=1) / ideal)


def mean(values: np.ndarray) -> float:
    """Mean over the queries where the metric is defined (NaN when it is defined nowhere)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))


def mean_average_precision(r: Ranks) -> float:
    return mean(average_precision(r))


def median_rank(r: Ranks) -> float:
    """Median over queries of the rank of the first relevant item ("MedR")."""
    first = first_relevant_rank(r)
    if first.size == 0 or np.isnan(first).all():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(first))


def summarize(r: Ranks, ks: Sequence[int] = (1, 5, 10), *, ndcg_k: int = 10) -> dict[str, float]:
    """Every metric, averaged over the queries that have a relevant item."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = mean(recall_at_k(r, k))
    for k in ks:
        out[f"P@{k}"] = mean(precision_at_k(r, k))
    for k in ks:
        out[f"hit@{k}"] = mean(hit_at_k(r, k))
    out["mAP"] = mean_average_precision(r)
    out["MRR"] = mean(reciprocal_rank(r))
    out[f"nDCG@{ndcg_k}"] = mean(ndcg_at_k(r, ndcg_k))
    out["MedR"] = median_rank(r)
    out["MeanR"] = mean(first_relevant_rank(r))
    out["queries"] = float(len(r))
    out["queries_without_relevant"] = float(int((r.n_relevant == 0).sum()))
    return out


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log C(n, k), -inf where k < 0 or k > n (so exp() gives 0)."""
    n, k = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64))
    valid = (k >= 0) & (k <= n)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    safe_n, safe_k = np.where(valid, n, 1.0), np.where(valid, k, 0.0)
    out = lgamma(safe_n + 1.0) - lgamma(safe_k + 1.0) - lgamma(safe_n - safe_k + 1.0)
    return np.where(valid, out, -np.inf)


def chance(r: Ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking with the same queries, relevant counts and candidates.

    Exact expectations: recall@k = min(k, N) / N; precision@k = R min(k, N) / (N k); hit@k = 1 - C(N-R, k) / C(N, k);
    AP = (H_N + (R-1)/(N-1) (N - H_N)) / N (H_N the N-th harmonic number); MRR = sum_r C(N-r, R-1) / (r C(N, R)).
    """
    defined = r.n_relevant > 0
    n = r.n_candidates[defined].astype(np.float64)
    rel = r.n_relevant[defined].astype(np.float64)
    out: dict[str, float] = {}
    if n.size == 0:
        return out
    for k in ks:
        out[f"R@{k}"] = float(np.mean(np.minimum(k, n) / n))
    for k in ks:
        out[f"P@{k}"] = float(np.mean(rel * np.minimum(k, n) / (n * k)))
    for k in ks:
        kk = np.minimum(float(k), n)
        miss = np.exp(_log_comb(n - rel, kk) - _log_comb(n, kk))
        out[f"hit@{k}"] = float(np.mean(1.0 - miss))
    pairs, counts = np.unique(np.stack([n, rel], axis=1), axis=0, return_counts=True)
    ap, rr = np.zeros(len(pairs)), np.zeros(len(pairs))
    for p, (size, count) in enumerate(pairs):
        harmonic = float(np.sum(1.0 / np.arange(1, size + 1)))
        ap[p] = (harmonic + ((count - 1) / (size - 1) if size > 1 else 0.0) * (size - harmonic)) / size
        ranks = np.arange(1, size - count + 2)
        rr[p] = float(np.sum(np.exp(_log_comb(size - ranks, count - 1) - _log_comb(size, count)) / ranks))
    weights = counts / counts.sum()
    out["mAP"] = float(np.sum(weights * ap))
    out["MRR"] = float(np.sum(weights * rr))
    return out
