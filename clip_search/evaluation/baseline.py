"""A keyword-only baseline: BM25 over the words a tag search would have, scored by the same metric code.

Each image is a document of words: its file name, plus, for a captioned set, its *other* captions. Text is lower-
cased, split into words of two or more letters or digits, stripped of English stop words and stemmed (Snowball,
through PyStemmer), which is what a reasonable keyword search does. Ranking is BM25 (``bm25s``, Lucene variant,
k1=1.5, b=0.75).

Captioned sets, and why captions are held out by position: a caption may not describe its own image in the index,
or the keyword search would find its query verbatim. Fold ``f`` indexes every image by all its captions except the
``f``-th, and asks each image's ``f``-th caption as a query. Every caption is a query exactly once (the embedding
search is scored on the same queries), every image's document has the same number of captions in a fold (no
length bias for or against the relevant image), and no query ever sees its own words in the index. An image with
a single caption has an empty caption part in its fold, as a photo with no tags would.

Labelled sets: the document is the file name alone. The class folder is the ground truth, so it is never indexed,
and neither is its name where it reappears inside a file name (most Imagenette files are named
``n01440764_10026.JPEG`` after their class folder ``n01440764``: indexing that would be reading the answer). What is
left, ``ILSVRC2012_val_00009111`` or ``IMG_2041``, carries no words about the picture, so a keyword search finds
nothing: under the worst-case tie policy that scores zero for precision, which is the honest figure for a search
that returns nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    try:
        import Stemmer
    except ImportError:  # pragma: no cover - PyStemmer is a runtime requirement
        log.warning("PyStemmer is not installed: the keyword baseline runs without stemming")
        return None
    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of two or more characters, stop words removed, stemmed."""
    stop = _stopwords()
    words = [w for w in _WORD.findall(text.lower().replace("_", " ")) if w not in stop]
    stemmer = _stemmer()
    return stemmer.stemWords(words) if stemmer is not None and words else words


def file_words(path: Path) -> list[str]:
    """The words of a file name (the stem; the folder is not included)."""
    return tokenize(re.sub(r"([a-z])([A-Z])", r"\1 \2", Path(path).stem))


class BM25:
    """BM25 over token lists; :meth:`scores` gives a full score row per query, for the shared metric code."""

    def __init__(self, documents: Sequence[Sequence[str]]) -> None:
        import bm25s

        bm25s_log = logging.getLogger("bm25s")
        if bm25s_log.level == logging.DEBUG:  # bm25s forces DEBUG on import; inherit the application's level
            bm25s_log.setLevel(logging.NOTSET)
        self.n_documents = len(documents)
        self._index = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        self._index.index([list(d) for d in documents], show_progress=False)
        self._vocab = set(self._index.vocab_dict) if hasattr(self._index, "vocab_dict") else None

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.zeros((len(queries), self.n_documents), dtype=np.float32)
        for row, query in enumerate(queries):
            known = [t for t in query if self._vocab is None or t in self._vocab]
            if known:
                out[row] = self._index.get_scores(known)
        return out


@dataclass
class Fold:
    """Queries (indices into the caller's query list) and a scorer over all images for them."""

    queries: np.ndarray
    score: Callable[[np.ndarray], np.ndarray]  # query indices (a subset of ``queries``) -> (len, n_images) scores


def captioned_folds(images: Sequence[Path], captions: Sequence[str], caption_image: np.ndarray) -> Iterator[Fold]:
    """One BM25 index per caption position: see the module docstring."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    tokens = [tokenize(c) for c in captions]
    names = [file_words(p) for p in images]
    slot = np.zeros(len(captions), dtype=np.int64)
    seen: dict[int, int] = {}
    for j, i in enumerate(caption_image.tolist()):
        slot[j] = seen.get(i, 0)
        seen[i] = slot[j] + 1
    n_folds = int(slot.max()) + 1 if len(slot) else 0
    for fold in range(n_folds):
        documents = [list(words) for words in names]
        for j, i in enumerate(caption_image.tolist()):
            if slot[j] != fold:
                documents[i].extend(tokens[j])
        index = BM25(documents)
        queries = np.flatnonzero(slot == fold)

        def score(idx: np.ndarray, index: BM25 = index) -> np.ndarray:
            return index.scores([tokens[j] for j in idx])

        yield Fold(queries=queries, score=score)


def filename_index(images: Sequence[Path], *, drop: Iterable[str] = ()) -> tuple[BM25, list[list[str]]]:
    """BM25 over file names (labelled sets), with each image's own words (its query for image-to-image).

    ``drop``: words never indexed; the evaluation passes the class folder names, which are the ground truth and
    reappear in some file names (Imagenette's ``n01440764/n01440764_10026.JPEG``).
    """
    dropped = {w for text in drop for w in tokenize(text)}
    documents = [[w for w in file_words(p) if w not in dropped] for p in images]
    return BM25(documents), documents
