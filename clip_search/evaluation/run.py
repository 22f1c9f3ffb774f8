"""The evaluation run: embed a data set (through the cache), score every task, return one results dict.

Images go through the same path as the engine's: :func:`clip_search.images.decode_image` with the engine's limits,
then ``encoder.preprocess`` and ``encoder.encode_pixels``; decoding runs in a thread pool a few batches ahead of the
model. Nothing is ingested: the vectors are compared by brute force (a dot product, which is what the engine's
``IndexFlatIP`` computes), so the figures are those of the search a user gets.

Tasks
- captioned set: ``text_to_image`` (every caption a query, its image the one relevant item) and ``image_to_text``
  (each image a query, its captions relevant; "R@K" there is the papers' hit rate: any of its captions in the top K);
- labelled set: ``image_to_image`` (leave-one-out: same class relevant, the query excluded), ``class_to_image``
  (the query "a photo of a {name}", the class's images relevant) and ``zero_shot`` (each image against every class
  with the prompt ensemble; top-1/top-5 accuracy).
Each task is scored for the embedding search and, where the keyword baseline can take the query, for BM25.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clip_search.errors import ClipSearchError, InvalidImageError
from clip_search.evaluation import baseline as bm25
from clip_search.evaluation.datasets import CaptionedDataset, Dataset, LabelledDataset
from clip_search.evaluation.embed_cache import EmbeddingCache, sha256_text
from clip_search.evaluation.metrics import Ranks, chance, hit_at_k, rank_relevant, recall_at_k, summarize
from clip_search.evaluation.zeroshot import check_templates, label_vectors
from clip_search.images import decode_image, model_draft_side, sha256_hex
from clip_search.prefetch import ordered_map

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # config.yaml's ingest.max_pixels
CLASS_QUERY = "a photo of a {}"
TIE_POLICY = "worst case: non-relevant items first within a tie"


@dataclass
class Embedded:
    """A data set with its vectors; ``dataset`` keeps only the images that could be decoded."""

    dataset: Dataset
    image_vectors: np.ndarray
    text_vectors: np.ndarray | None = None  # captioned: one per caption
    class_query_vectors: np.ndarray | None = None  # labelled: "a photo of a {name}" per class
    class_vectors: np.ndarray | None = None  # labelled: prompt-ensemble vector per class
    templates: tuple[str, ...] = ()
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


# -- embedding ---------------------------------------------------------------------------------------------------


def embed_images(
    paths: Sequence[Path],
    encoder: Any,
    *,
    cache: EmbeddingCache | None = None,
    workers: int = 2,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], dict[str, float]]:
    """Vectors of image files: (vectors for the readable ones, readable mask, [(file, reason)], stats)."""
    cache = cache or EmbeddingCache(None, encoder)
    draft_side = model_draft_side(encoder.input_size)  # also loads the model before the pool starts
    cache.load("images")  # before the pool starts: the workers only read it
    started = time.perf_counter()

    def read(path: Path) -> _Read:
        return _read_for_model(Path(path), encoder, cache, max_pixels=max_pixels, draft_side=draft_side)

    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    skipped: list[tuple[str, str]] = []
    vectors: dict[int, np.ndarray] = {}
    batch: list[tuple[int, str, np.ndarray]] = []
    embedded = 0
    window = max(2 * batch_size, 4 * workers)
    with tqdm(total=n, desc="embed images", unit="img", disable=not progress, smoothing=0.1) as bar:
        for pos, (digest, pixels, error) in enumerate(ordered_map(read, paths, workers=workers, window=window)):
            if error is not None:
                skipped.append((str(paths[pos]), error))
                log.warning("skipped %s: %s", paths[pos], error)
            elif pixels is None:  # cached
                ok[pos] = True
                vectors[pos] = cache.get("images", [digest])[digest]
            else:
                ok[pos] = True
                batch.append((pos, digest, pixels))
                if len(batch) < batch_size:
                    continue
                embedded += _embed_batch(encoder, cache, batch, vectors)
            bar.update(len(vectors) + len(skipped) - bar.n)
        embedded += _embed_batch(encoder, cache, batch, vectors)
        bar.update(n - bar.n)
    seconds = time.perf_counter() - started
    stats = {
        "images": float(n),
        "embedded": float(embedded),
        "from_cache": float(int(ok.sum()) - embedded),
        "skipped": float(len(skipped)),
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2) if seconds > 0 else 0.0,
    }
    return _stacked(vectors, np.flatnonzero(ok)), ok, skipped, stats


_Read = tuple[str, "np.ndarray | None", "str | None"]  # (sha256, pixels or None when cached, error)


def _read_for_model(path: Path, encoder: Any, cache: EmbeddingCache, *, max_pixels: int, draft_side: int) -> _Read:
    """One file's sha256 and model input (none when its vector is cached), or why it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", None, f"cannot read: {exc.strerror or exc}"
    digest = sha256_hex(data)
    if cache.get("images", [digest]):
        return digest, None, None
    try:
        decoded = decode_image(data, max_pixels=max_pixels, draft_side=draft_side)
    except InvalidImageError as exc:
        return digest, None, str(exc)
    return digest, encoder.preprocess(decoded.image), None


def _embed_batch(
    encoder: Any, cache: EmbeddingCache, batch: list[tuple[int, str, np.ndarray]], vectors: dict[int, np.ndarray]
) -> int:
    """Embed and cache a batch of (position, sha256, pixels), filling ``vectors``; the batch is emptied."""
    if not batch:
        return 0
    out = encoder.encode_pixels(np.stack([pixels for _, _, pixels in batch]))
    cache.put("images", [digest for _, digest, _ in batch], out)
    for (pos, _, _), vector in zip(batch, out, strict=True):
        vectors[pos] = vector
    done = len(batch)
    batch.clear()
    return done


def _stacked(vectors: dict[int, np.ndarray], order: np.ndarray) -> np.ndarray:
    dim = next(iter(vectors.values())).shape[0] if vectors else 0
    if not len(order):
        return np.zeros((0, dim), np.float32)
    return np.stack([vectors[i] for i in order]).astype(np.float32)


def embed_texts(
    texts: Sequence[str],
    encoder: Any,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "embed texts",
) -> np.ndarray:
    """Vectors of texts (each distinct text embedded once, then cached)."""
    cache = cache or EmbeddingCache(None, encoder)
    keys = [sha256_text(t) for t in texts]
    have = cache.get("texts", keys)
    missing: dict[str, str] = {}
    for text, key in zip(texts, keys, strict=True):
        if key not in have and key not in missing:
            missing[key] = text
    todo = list(missing.items())
    with tqdm(total=len(todo), desc=desc, unit="text", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            out = encoder.encode_text([text for _, text in chunk])
            cache.put("texts", [key for key, _ in chunk], out)
            have.update(zip([key for key, _ in chunk], out, strict=True))
            bar.update(len(chunk))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([have[k] for k in keys]).astype(np.float32)


def embed_dataset(
    dataset: Dataset,
    encoder: Any,
    *,
    cache: EmbeddingCache | None = None,
    workers: int = 2,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> Embedded:
    """Embed every image and query text of a data set; unreadable images are dropped (and reported)."""
    cache = cache or EmbeddingCache(None, encoder)
    vectors, ok, skipped, stats = embed_images(
        dataset.images,
        encoder,
        cache=cache,
        workers=workers,
        batch_size=batch_size,
        max_pixels=max_pixels,
        progress=progress,
    )
    if not ok.all():
        dataset = dataset.subset(ok)
    if len(dataset.images) < 2:
        raise ClipSearchError(f"{dataset.name}: fewer than two readable images; nothing to evaluate")
    started = time.perf_counter()
    templates = check_templates(templates)
    out = Embedded(dataset=dataset, image_vectors=vectors, templates=templates, skipped=skipped)
    if isinstance(dataset, CaptionedDataset):
        out.text_vectors = embed_texts(dataset.captions, encoder, cache=cache, progress=progress, desc="embed captions")
    else:
        out.class_query_vectors = embed_texts(
            [CLASS_QUERY.format(name) for name in dataset.class_names], encoder, cache=cache, progress=False
        )

        def encode(prompts: list[str]) -> np.ndarray:
            return embed_texts(prompts, encoder, cache=cache, progress=progress, desc="embed prompts")

        out.class_vectors = label_vectors(encoder, dataset.class_names, templates, encode=encode)
    stats["text_seconds"] = round(time.perf_counter() - started, 3)
    out.timing = stats
    return out


# -- scoring ------------------------------------------------------------------------------------------------------


def _chunk_rows(n_items: int) -> int:
    return int(max(16, min(1024, 4_000_000 // max(n_items, 1))))


def rank_by_label(
    score_rows: Callable[[np.ndarray], np.ndarray],
    query_labels: np.ndarray,
    item_labels: np.ndarray,
    *,
    queries: np.ndarray | None = None,
    exclude_self: bool = False,
) -> Ranks:
    """Ranks for queries whose relevant items share their label; ``score_rows(query_indices)`` gives the scores.

    ``queries`` restricts to these query indices (default all); ``exclude_self`` removes item ``q`` from query
    ``q``'s candidates (leave-one-out, when queries and items are the same images).
    """
    query_labels = np.asarray(query_labels)
    item_labels = np.asarray(item_labels)
    queries = np.arange(len(query_labels)) if queries is None else np.asarray(queries, dtype=np.int64)
    items = np.arange(len(item_labels))
    parts = []
    step = _chunk_rows(len(item_labels))
    for start in range(0, len(queries), step):
        idx = queries[start : start + step]
        scores = score_rows(idx)
        relevant = query_labels[idx][:, None] == item_labels[None, :]
        exclude = idx[:, None] == items[None, :] if exclude_self else None
        parts.append(rank_relevant(scores, relevant, exclude))
    return Ranks.concat(parts)


def _dot(queries: np.ndarray, items: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(idx: np.ndarray) -> np.ndarray:
        return queries[idx] @ items.T

    return score


def _curve_ks(n: int) -> list[int]:
    steps = [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000]
    return [k for k in steps if k < n] + ([n] if n > 0 else [])


def _task(
    title: str,
    description: str,
    methods: dict[str, Ranks],
    ks: Sequence[int],
    show: list[tuple[str, str]],
    curve_metric: str,
) -> dict[str, Any]:
    first = next(iter(methods.values()))
    n_items = int(first.n_candidates.max()) if len(first) else 0
    curve_fn = hit_at_k if curve_metric == "hit" else recall_at_k
    curve_ks = _curve_ks(n_items)
    all_ks = sorted({*ks, 1, 5, 10})
    return {
        "title": title,
        "description": description,
        "queries": len(first),
        "candidates": n_items,
        "relevant_per_query": round(float(first.n_relevant.mean()), 3) if len(first) else 0.0,
        "show": show,
        "methods": {name: summarize(r, all_ks) for name, r in methods.items()},
        "chance": chance(first, all_ks),
        "curve": {
            "metric": "hit@k" if curve_metric == "hit" else "recall@k",
            "k": curve_ks,
            **{name: [float(np.nanmean(curve_fn(r, k))) for k in curve_ks] for name, r in methods.items()},
        },
    }


def score_captioned(emb: Embedded, ks: Sequence[int], *, baseline: bool = True) -> dict[str, dict[str, Any]]:
    data = emb.dataset
    assert isinstance(data, CaptionedDataset) and emb.text_vectors is not None
    n_images = len(data.images)
    owner = data.caption_image
    t2i = {"embedding": rank_by_label(_dot(emb.text_vectors, emb.image_vectors), owner, np.arange(n_images))}
    if baseline:
        parts, order = [], []
        for fold in bm25.captioned_folds(data.images, data.captions, owner):
            parts.append(rank_by_label(fold.score, owner, np.arange(n_images), queries=fold.queries))
            order.append(fold.queries)
        ranks = Ranks.concat(parts)
        t2i["bm25"] = ranks.take(np.argsort(np.concatenate(order), kind="stable"))
    i2t = {"embedding": rank_by_label(_dot(emb.image_vectors, emb.text_vectors), np.arange(n_images), owner)}
    r_at = [(f"R@{k}", f"R@{k}") for k in ks]
    return {
        "text_to_image": _task(
            "text → image",
            f"{len(data.captions)} caption queries over {n_images} images; relevant: the captioned image",
            t2i,
            ks,
            [*r_at, ("MRR", "MRR"), ("nDCG@10", "nDCG@10"), ("MedR", "median rank")],
            "recall",
        ),
        "image_to_text": _task(
            "image → text",
            f"{n_images} image queries over {len(data.captions)} captions; "
            "relevant: its captions (R@K = any of them in the top K)",
            i2t,
            ks,
            [*[(f"hit@{k}", f"R@{k}") for k in ks], ("MRR", "MRR"), ("MedR", "median rank")],
            "hit",
        ),
    }


def score_labelled(emb: Embedded, ks: Sequence[int], *, baseline: bool = True) -> dict[str, dict[str, Any]]:
    data = emb.dataset
    assert isinstance(data, LabelledDataset) and emb.class_vectors is not None
    assert emb.class_query_vectors is not None
    labels = data.labels
    n_classes = len(data.class_ids)
    classes = np.arange(n_classes)
    i2i = {"embedding": rank_by_label(_dot(emb.image_vectors, emb.image_vectors), labels, labels, exclude_self=True)}
    c2i = {"embedding": rank_by_label(_dot(emb.class_query_vectors, emb.image_vectors), classes, labels)}
    if baseline:
        index, words = bm25.filename_index(data.images, drop=data.class_ids)

        def by_own_name(idx: np.ndarray) -> np.ndarray:
            return index.scores([words[i] for i in idx])

        i2i["bm25"] = rank_by_label(by_own_name, labels, labels, exclude_self=True)
        class_words = [bm25.tokenize(CLASS_QUERY.format(name)) for name in data.class_names]
        c2i["bm25"] = rank_by_label(lambda idx: index.scores([class_words[i] for i in idx]), classes, labels)
    zero_shot = {"embedding": rank_by_label(_dot(emb.image_vectors, emb.class_vectors), labels, classes)}
    p_at = [(f"P@{k}", f"P@{k}") for k in ks]
    return {
        "image_to_image": _task(
            "image → image",
            f"{len(labels)} image queries over the other {len(labels) - 1} images (leave-one-out); "
            "relevant: same class",
            i2i,
            ks,
            [*p_at, *[(f"R@{k}", f"R@{k}") for k in ks], ("mAP", "mAP")],
            "recall",
        ),
        "class_to_image": _task(
            "class name → image",
            f'{n_classes} queries "{CLASS_QUERY.format("{name}")}" over {len(labels)} images; '
            "relevant: the class's images",
            c2i,
            ks,
            [*p_at, ("mAP", "AP (mean over classes)")],
            "recall",
        ),
        "zero_shot": _task(
            "zero-shot classification",
            f"{len(labels)} images against {n_classes} classes, {len(emb.templates)} prompt templates averaged",
            zero_shot,
            ks,
            [("hit@1", "top-1 accuracy"), ("hit@5", "top-5 accuracy")],
            "hit",
        ),
    }


def score_embedded(emb: Embedded, *, ks: Sequence[int] = (1, 5, 10), baseline: bool = True) -> dict[str, Any]:
    """All tasks of a data set from its vectors (no model needed here)."""
    ks = sorted({int(k) for k in ks})
    started = time.perf_counter()
    if isinstance(emb.dataset, CaptionedDataset):
        tasks = score_captioned(emb, ks, baseline=baseline)
    else:
        tasks = score_labelled(emb, ks, baseline=baseline)
    log.info("scored %s in %.2f s", emb.dataset.name, time.perf_counter() - started)
    return tasks


def evaluate(
    dataset: Dataset,
    encoder: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    cache: EmbeddingCache | None = None,
    workers: int = 2,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    templates: Sequence[str] | None = None,
    baseline: bool = True,
    progress: bool = True,
) -> tuple[dict[str, Any], Embedded]:
    """Embed and score a data set: (results dict, the embedded data for further inspection)."""
    started = time.perf_counter()
    emb = embed_dataset(
        dataset,
        encoder,
        cache=cache,
        workers=workers,
        batch_size=batch_size,
        max_pixels=max_pixels,
        templates=templates,
        progress=progress,
    )
    tasks = score_embedded(emb, ks=ks, baseline=baseline)
    timing = dict(emb.timing, total_seconds=round(time.perf_counter() - started, 3))
    results = {
        "dataset": emb.dataset.describe(),
        "model": str(getattr(encoder, "name", type(encoder).__name__)),
        "ks": sorted({int(k) for k in ks}),
        "tie_policy": TIE_POLICY,
        "templates": list(emb.templates) if isinstance(emb.dataset, LabelledDataset) else [],
        "baseline": "BM25 (bm25s, k1=1.5, b=0.75) over file names + other captions" if baseline else None,
        "tasks": tasks,
        "timing": timing,
        "skipped": [{"file": f, "reason": r} for f, r in emb.skipped],
    }
    return results, emb


def top_results(
    emb: Embedded, query_indices: Sequence[int] | None = None, *, k: int = 5, n: int = 6, seed: int = 0
) -> list[dict[str, Any]]:
    """Queries with their top ``k`` images, for a qualitative look: a list of dicts
    ``{"query": text, "results": [(path, score, relevant), ...], "rank_of_relevant": int}``.

    Captioned sets use caption queries (``n`` picked at random, seeded, unless ``query_indices`` are given);
    labelled sets use the class-name queries.
    """
    data = emb.dataset
    if isinstance(data, CaptionedDataset):
        assert emb.text_vectors is not None
        texts, qvecs, qlabels, ilabels = data.captions, emb.text_vectors, data.caption_image, np.arange(len(data))
    else:
        assert emb.class_query_vectors is not None
        texts = [CLASS_QUERY.format(name) for name in data.class_names]
        qvecs, qlabels, ilabels = emb.class_query_vectors, np.arange(len(texts)), data.labels
    if query_indices is None:
        rng = np.random.default_rng(seed)
        query_indices = np.sort(rng.choice(len(texts), size=min(n, len(texts)), replace=False))
    pages = []
    for q in query_indices:
        scores = emb.image_vectors @ qvecs[q]
        order = np.argsort(-scores, kind="stable")
        relevant = ilabels == qlabels[q]
        first = int(np.flatnonzero(relevant[order])[0]) + 1 if relevant.any() else None
        pages.append(
            {
                "query": texts[q],
                "results": [(data.images[i], float(scores[i]), bool(relevant[i])) for i in order[:k]],
                "rank_of_relevant": first,
            }
        )
    return pages
