"""Write notebooks/01_build_index.ipynb and notebooks/02_evaluate.ipynb (outputs stripped).

The notebooks are generated so that they stay small, reviewable and free of outputs in git; edit the cells here
and run ``python scripts/make_notebooks.py``. ``--check`` exits 1 when the committed notebooks differ from what this
script writes (the test suite runs it). The notebooks only call the package: no logic of their own to rot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

SETUP = """\
import os
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # plain progress bars without ipywidgets

# Run from a clone without installing the package: put the repository root on the path.
ROOT = Path.cwd() if (Path.cwd() / "clip_search").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT))

from clip_search.config import load_config
from clip_search.logs import quiet_third_party

quiet_third_party()  # no model-loading chatter
# config.yaml's settings; CLIP_SEARCH_MODEL picks another model
settings = load_config(os.environ.get("CLIP_SEARCH_CONFIG") or ROOT / "config.yaml")
print("model:", settings.model.id)"""


def build_index_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# 1. Build an index and look at its embeddings\n\n"
            "Ingest a folder of photos into a fresh collection, then inspect what the model made of them: vector "
            "norms, similarities, a 2-D projection, and a text and an image search.\n\n"
            "Settings, all optional (environment variables):\n\n"
            "- `CLIP_SEARCH_NB_IMAGES`: a folder of photos (default: the sample photos shipped with scikit-image);\n"
            "- `CLIP_SEARCH_NB_LIMIT`: ingest at most this many of them;\n"
            "- `CLIP_SEARCH_NB_DATA_DIR`: where the collection goes (default: a new temporary folder, so your own "
            "collection is never touched);\n"
            "- `CLIP_SEARCH_MODEL`: the model (default: `model.id` in config.yaml, google/siglip-base-patch16-224)."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from clip_search.engine import SearchEngine\n"
            "from clip_search.ingest import find_images, ingest_paths\n"
            "from clip_search.samples import sample_files\n\n"
            'IMAGES = os.environ.get("CLIP_SEARCH_NB_IMAGES")\n'
            'LIMIT = int(os.environ.get("CLIP_SEARCH_NB_LIMIT") or 0) or None\n'
            'DATA_DIR = os.environ.get("CLIP_SEARCH_NB_DATA_DIR") or tempfile.mkdtemp(prefix="clip-search-nb-")\n'
            "settings.data_dir = Path(DATA_DIR)\n"
            'settings.storage.backend = "local"  # a throwaway collection: never the configured bucket\n'
            "engine = SearchEngine(settings)\n\n"
            "if IMAGES:\n"
            "    paths = find_images(Path(IMAGES), recursive=True, extensions=settings.ingest.extensions)[:LIMIT]\n"
            "    report = ingest_paths(engine, paths)\n"
            "else:\n"
            "    samples = sample_files()[:LIMIT]\n"
            "    captions = {p.name: [c] for p, c, _ in samples}\n"
            "    report = ingest_paths(engine, [p for p, _, _ in samples], captions=captions)\n"
            "print(report.summary())\n"
            'print(engine.count(), "images in", settings.data_dir)'
        ),
        new_markdown_cell(
            "## The embeddings\n\n"
            "Every vector is L2-normalised, so a dot product is a cosine similarity. The collection's record is a "
            "Lance table that holds each image's vector; the in-memory FAISS index is loaded from it."
        ),
        new_code_cell(
            "import numpy as np\n\n"
            "ids, vectors = [], []\n"
            "for batch_ids, batch_vectors in engine.collection.iter_vectors():\n"
            "    ids.append(batch_ids)\n"
            "    vectors.append(batch_vectors)\n"
            "ids, vectors = np.concatenate(ids), np.concatenate(vectors)\n"
            "records = engine.collection.get_many(ids.tolist())\n"
            "names = [Path(records[i].source or records[i].key).name for i in ids.tolist()]\n"
            "norms = np.linalg.norm(vectors, axis=1)\n"
            'print(f"{len(ids)} vectors of dimension {vectors.shape[1]}, norms {norms.min():.4f}..{norms.max():.4f}")\n'
            'print("model recorded in the collection:", engine.collection.table.model_id)'
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "shown = min(len(ids), 30)\n"
            "similarity = vectors[:shown] @ vectors[:shown].T\n"
            "centered = vectors - vectors.mean(axis=0)\n"
            "_, _, components = np.linalg.svd(centered, full_matrices=False)  # PCA by SVD\n"
            "xy = centered @ components[:2].T\n\n"
            "fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))\n"
            'im = left.imshow(similarity, cmap="viridis")\n'
            'left.set_title("cosine similarity between images")\n'
            "left.set_xticks(range(shown), names[:shown], rotation=90, fontsize=6)\n"
            "left.set_yticks(range(shown), names[:shown], fontsize=6)\n"
            "fig.colorbar(im, ax=left, shrink=0.8)\n"
            "right.scatter(xy[:, 0], xy[:, 1], s=12)\n"
            "for (x, y), name in list(zip(xy, names))[:40]:\n"
            "    right.annotate(name, (x, y), fontsize=6)\n"
            'right.set_title("the embeddings projected on their first two principal components")\n'
            "plt.tight_layout()\n"
            "plt.show()"
        ),
        new_markdown_cell(
            "## Searching\n\n"
            "A text query gets SigLIP's match probability beside the cosine; an image query (here: the first image "
            '"more like this", itself excluded) gets the cosine only.'
        ),
        new_code_cell(
            'for hit in engine.search_text("a cat sitting on a table", k=5):\n'
            "    name = Path(hit.source or hit.key).name\n"
            "    print(f\"{hit.score:.4f}  p={hit.probability:.2%}  {name}  {hit.caption or ''}\")\n"
            "print()\n"
            "for hit in engine.search_similar(int(ids[0]), k=5):\n"
            '    print(f"{hit.score:.4f}  {Path(hit.source or hit.key).name}")'
        ),
        new_code_cell(
            "first = records[int(ids[0])]\n"
            'labels = ["a cat", "a person", "a rocket", "coffee", "coins", "a landscape"]\n'
            "for label, probability in engine.classify(Path(first.source), labels):\n"
            '    print(f"{label:<12} {probability:7.2%}")\n'
            "engine.close()"
        ),
    ]
    return _notebook(cells)


def evaluate_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# 2. Evaluate retrieval quality\n\n"
            "Runs the same evaluation as `python -m clip_search eval DATASET` (see docs/evaluation.md), shows its "
            "tables and recall@k plots, and a qualitative page: queries with their top results, the relevant ones "
            "framed in green.\n\n"
            "Settings (environment variables):\n\n"
            "- `CLIP_SEARCH_NB_CAPTIONED`: a captioned set, e.g. the Flickr8k test split as a folder with "
            "`captions.csv` (`image,caption`) and `images/`, or a COCO captions JSON;\n"
            "- `CLIP_SEARCH_NB_LABELLED`: a folder of class sub-folders, e.g. Imagenette's `val/` with a "
            "`classes.csv` (folder,name);\n"
            "- `CLIP_SEARCH_NB_LIMIT`: a seeded subset of that many images per data set (default: all);\n"
            "- `CLIP_SEARCH_EVAL_CACHE`: the embedding cache (default `~/.cache/clip-search/eval`);\n"
            "- `CLIP_SEARCH_MODEL`: the model.\n\n"
            "The defaults point at `../shared/data/`, where the project's developers keep these sets. Figures from "
            "the tiny random test model only show that the pipeline runs; they say nothing about quality."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from IPython.display import Image, Markdown, display\n\n"
            "from clip_search.evaluation.cli import encoder_from_settings\n"
            "from clip_search.evaluation.datasets import load_dataset\n"
            "from clip_search.evaluation.embed_cache import EmbeddingCache, default_cache_dir\n"
            "from clip_search.evaluation.report import markdown, plot_pages, plot_recall\n"
            "from clip_search.evaluation.run import evaluate, top_results\n\n"
            'SHARED = ROOT.parent / "shared" / "data"\n'
            'CAPTIONED = Path(os.environ.get("CLIP_SEARCH_NB_CAPTIONED") or SHARED / "flickr8k-test")\n'
            'LABELLED = Path(os.environ.get("CLIP_SEARCH_NB_LABELLED") or SHARED / "imagenette-val")\n'
            'LIMIT = int(os.environ.get("CLIP_SEARCH_NB_LIMIT") or 0) or None\n'
            'OUT = Path(tempfile.mkdtemp(prefix="clip-search-eval-"))\n\n'
            "encoder = encoder_from_settings(settings)\n"
            "cache = EmbeddingCache(default_cache_dir(), encoder)\n"
            'print("model signature:", encoder.name, "| cache:", cache.root)'
        ),
        new_markdown_cell(
            "## Captioned set: text → image and image → text\n\n"
            "Every caption is a query whose relevant item is its image. The keyword baseline is BM25 over each "
            "image's *other* captions and its file name (the query caption is held out of the index)."
        ),
        new_code_cell(
            "captioned = load_dataset(CAPTIONED, limit=LIMIT)\n"
            "results, embedded = evaluate(captioned, encoder, cache=cache, ks=(1, 5, 10))\n"
            "display(Markdown(markdown(results)))"
        ),
        new_code_cell('display(Image(filename=plot_recall(results, OUT / "captioned-recall.png")))'),
        new_code_cell(
            "pages = top_results(embedded, n=4, k=5)\n"
            'plot_pages(pages, OUT / "captioned-pages.png")\n'
            'display(Image(filename=OUT / "captioned-pages.png"))'
        ),
        new_markdown_cell(
            "## Labelled set: image → image, class name → image, zero-shot classification\n\n"
            "Image queries are leave-one-out (the query is not among its own results); same class = relevant. "
            'Class queries are "a photo of a {name}"; zero-shot classification averages several prompt templates.'
        ),
        new_code_cell(
            "labelled = load_dataset(LABELLED, limit=LIMIT)\n"
            "results, embedded = evaluate(labelled, encoder, cache=cache, ks=(1, 5, 10))\n"
            "display(Markdown(markdown(results)))\n"
            'display(Image(filename=plot_recall(results, OUT / "labelled-recall.png")))'
        ),
        new_code_cell(
            "pages = top_results(embedded, k=5)[:4]\n"
            'plot_pages(pages, OUT / "labelled-pages.png")\n'
            'display(Image(filename=OUT / "labelled-pages.png"))'
        ),
    ]
    return _notebook(cells)


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating changes nothing
    return nb


NOTEBOOK_BUILDERS = {"01_build_index.ipynb": build_index_notebook, "02_evaluate.ipynb": evaluate_notebook}


def render(builder) -> str:  # noqa: ANN001
    return nbformat.writes(builder(), version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the notebooks are not what this writes")
    args = parser.parse_args(argv)
    stale = []
    for name, builder in NOTEBOOK_BUILDERS.items():
        path = NOTEBOOKS / name
        text = render(builder)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/make_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
