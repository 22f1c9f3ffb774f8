"""The whole evaluation path with a synthetic oracle encoder: a perfect retriever scores 1.0, a shuffled one chance.

Also the pieces around it: data set loading, the held-out keyword baseline, the embedding cache, the report.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clip_search.errors import ClipSearchError
from clip_search.evaluation import baseline as bm25
from clip_search.evaluation.datasets import CaptionedDataset, LabelledDataset, load_dataset
from clip_search.evaluation.embed_cache import EmbeddingCache
from clip_search.evaluation.report import markdown, to_json, write_report
from clip_search.evaluation.run import evaluate, rank_by_label, top_results
from tests.conftest import shared_data
from tests.eval_oracle import OracleEncoder, id_image, make_captioned, make_labelled


@pytest.fixture(scope="module")
def captioned_dir(tmp_path_factory):
    return make_captioned(tmp_path_factory.mktemp("captioned"), n_images=300)


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    return make_labelled(tmp_path_factory.mktemp("labelled"), n_classes=5, per_class=40)


def run(dataset, encoder, **kw):
    return evaluate(dataset, encoder, progress=False, workers=2, **kw)


def test_perfect_retriever_scores_one_on_captions(captioned_dir):
    dataset = load_dataset(captioned_dir)
    results, _ = run(dataset, OracleEncoder())
    t2i = results["tasks"]["text_to_image"]["methods"]["embedding"]
    for key in ("R@1", "R@5", "R@10", "P@1", "hit@1", "mAP", "MRR", "nDCG@10"):
        assert t2i[key] == 1.0, key
    assert t2i["MedR"] == 1.0 and t2i["queries"] == 1500
    i2t = results["tasks"]["image_to_text"]["methods"]["embedding"]
    for key in ("hit@1", "hit@5", "hit@10", "mAP", "MRR", "nDCG@10", "R@5"):
        assert i2t[key] == 1.0, key
    assert i2t["R@1"] == pytest.approx(1 / 5)  # one of its five captions in the top 1
    # every caption carries a word unique to its image, so the held-out keyword search is perfect too
    assert results["tasks"]["text_to_image"]["methods"]["bm25"]["R@1"] == 1.0


def test_shuffled_retriever_scores_chance_on_captions(captioned_dir):
    dataset = load_dataset(captioned_dir)
    perm = np.random.default_rng(5).permutation(len(dataset))
    results, _ = run(dataset, OracleEncoder(key=lambda i: int(perm[i]), noise=0.01, name="shuffled"))
    task = results["tasks"]["text_to_image"]
    ours, expected = task["methods"]["embedding"], task["chance"]
    assert expected["R@1"] == pytest.approx(1 / 300) and expected["R@10"] == pytest.approx(10 / 300)
    for key in ("R@1", "R@5", "R@10", "MRR"):
        assert abs(ours[key] - expected[key]) < 0.05, (key, ours[key], expected[key])
    assert 100 < ours["MedR"] < 200  # the median of a uniform rank over 300


def test_perfect_and_shuffled_on_a_labelled_set(labelled_dir):
    dataset = load_dataset(labelled_dir)
    assert isinstance(dataset, LabelledDataset) and dataset.class_names[2] == "thing 2"
    results, _ = run(dataset, OracleEncoder(key=lambda i: i // 1000))
    tasks = results["tasks"]
    i2i = tasks["image_to_image"]["methods"]["embedding"]
    for key in ("P@1", "P@5", "P@10", "mAP", "MRR", "hit@1"):
        assert i2i[key] == 1.0, key
    assert i2i["R@10"] == pytest.approx(10 / 39)  # 39 other images of its class, 10 of them found
    assert tasks["class_to_image"]["methods"]["embedding"]["P@10"] == 1.0
    assert tasks["class_to_image"]["methods"]["embedding"]["mAP"] == 1.0
    assert tasks["zero_shot"]["methods"]["embedding"]["hit@1"] == 1.0
    # file names carry no words about the pictures: the keyword search finds nothing
    assert tasks["class_to_image"]["methods"]["bm25"]["P@1"] == 0.0

    random_label = np.random.default_rng(9).integers(0, 5, size=5000)
    shuffled, _ = run(dataset, OracleEncoder(key=lambda i: int(random_label[i]), noise=0.05, name="shuffled"))
    zero_shot = shuffled["tasks"]["zero_shot"]
    assert abs(zero_shot["methods"]["embedding"]["hit@1"] - 0.2) < 0.1
    i2i = shuffled["tasks"]["image_to_image"]
    assert abs(i2i["methods"]["embedding"]["P@10"] - i2i["chance"]["P@10"]) < 0.1
    assert abs(i2i["methods"]["embedding"]["mAP"] - i2i["chance"]["mAP"]) < 0.1


def test_keyword_baseline_never_indexes_the_query_caption(tmp_path):
    for i in range(2):
        id_image(tmp_path / "images" / f"{i}.png", i)
    (tmp_path / "captions.csv").write_text(
        "image,caption\n0.png,zebra alpha\n0.png,walrus beta\n1.png,zebra gamma\n1.png,dog zebra\n"
    )
    data = load_dataset(tmp_path)
    folds = list(bm25.captioned_folds(data.images, data.captions, data.caption_image))
    assert [f.queries.tolist() for f in folds] == [[0, 2], [1, 3]]
    # "walrus beta" (image 0, slot 1) is asked in fold 1, whose index holds "zebra alpha" and "zebra gamma" only
    scores = folds[1].score(np.array([1]))
    assert scores.tolist() == [[0.0, 0.0]]
    ranks = rank_by_label(folds[1].score, data.caption_image, np.arange(2), queries=np.array([1]))
    assert ranks.ranks.tolist() == [[2.0]]  # a tie at zero counts against the method
    # "zebra alpha" (slot 0) is asked in fold 0, whose index holds "walrus beta" and "dog zebra"
    scores = folds[0].score(np.array([0]))[0]
    assert scores[0] == 0.0 and scores[1] > 0.0


def test_tokenizer_stems_and_drops_stop_words():
    assert bm25.tokenize("The dogs are running on the beaches") == ["dog", "run", "beach"]
    assert bm25.file_words(bm25.Path("n01440764/IMG_2041-beachParty.jpg")) == ["img", "2041", "beach", "parti"]


def test_embedding_cache_skips_work_on_a_rerun(captioned_dir, tmp_path):
    dataset = load_dataset(captioned_dir, limit=40)
    first = OracleEncoder()
    results, _ = run(dataset, first, cache=EmbeddingCache(tmp_path / "cache", first))
    assert first.calls["pixels"] == 40 and results["timing"]["from_cache"] == 0
    again = OracleEncoder()
    results, _ = run(dataset, again, cache=EmbeddingCache(tmp_path / "cache", again))
    assert again.calls == {"text": 0, "pixels": 0}
    assert results["timing"]["from_cache"] == 40
    other = OracleEncoder(name="another model")
    run(dataset, other, cache=EmbeddingCache(tmp_path / "cache", other))
    assert other.calls["pixels"] == 40  # a different model signature never reuses vectors


def test_unreadable_images_are_reported_and_left_out(captioned_dir, tmp_path):
    root = make_captioned(tmp_path / "set", n_images=6)
    (root / "images" / "0003.png").write_bytes(b"not an image at all")
    results, emb = run(load_dataset(root), OracleEncoder())
    assert len(emb.dataset.images) == 5 and len(emb.dataset.captions) == 25
    assert [s["file"].endswith("0003.png") for s in results["skipped"]] == [True]
    assert results["tasks"]["text_to_image"]["methods"]["embedding"]["R@1"] == 1.0


def test_limit_is_deterministic_and_balanced(labelled_dir, captioned_dir):
    a = load_dataset(captioned_dir, limit=25, seed=3)
    b = load_dataset(captioned_dir, limit=25, seed=3)
    assert isinstance(a, CaptionedDataset) and a.images == b.images and len(a.images) == 25
    assert len(a.captions) == 125 and load_dataset(captioned_dir, limit=25, seed=4).images != a.images
    labelled = load_dataset(labelled_dir, limit=12)
    assert np.bincount(labelled.labels).tolist() == [3, 3, 2, 2, 2]


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(ClipSearchError, match="no such data set"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipSearchError, match="class folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "caps.csv").write_text("image,caption\nnope.jpg,a cat\n")
    with pytest.raises(ClipSearchError, match="--images"):
        load_dataset(tmp_path / "caps.csv")


def test_coco_layout_is_found():
    coco = shared_data("coco-mini")
    data = load_dataset(coco / "annotations" / "captions_val2017.json")
    assert isinstance(data, CaptionedDataset)
    assert data.images[0].parent == coco / "val2017" and len(data.images) == 79
    assert len(data.captions) >= 5 * 79


def test_report_is_well_formed(labelled_dir, tmp_path):
    results, emb = run(load_dataset(labelled_dir), OracleEncoder(key=lambda i: i // 1000))
    text = markdown(results)
    assert text.startswith("# ") and "| top-1 accuracy | 100.00 | 20.00 |" in text
    for title in ("## image → image", "## class name → image", "## zero-shot classification"):
        assert title in text
    data = json.loads(to_json(results))
    assert data["tasks"]["zero_shot"]["methods"]["embedding"]["hit@1"] == 1.0
    written = write_report(results, tmp_path / "out", stem="x")
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(written["json"].read_text())["dataset"]["classes"] == 5
    pages = top_results(emb, k=3)
    assert len(pages) == 5 and all(len(p["results"]) == 3 and p["rank_of_relevant"] == 1 for p in pages)
    assert not any(math.isnan(v) for v in results["tasks"]["zero_shot"]["chance"].values())
