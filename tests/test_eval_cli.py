"""`eval` and `classify` as a user runs them, with the tiny random SigLIP: they must run and produce well-formed
output. No quality is asserted: the tiny model's figures are pipeline checks only."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from clip_search.evaluation.zeroshot import LabelProbability, parse_labels, probabilities
from tests.conftest import ROOT, shared_data


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clip_search", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=check
    )


def check_values(methods: dict) -> None:
    for metrics in methods.values():
        for key, value in metrics.items():
            if key in ("MedR", "MeanR", "queries", "queries_without_relevant"):
                assert value is None or value >= 0, key
            else:
                assert value is None or 0.0 <= value <= 1.0, (key, value)


def test_eval_captioned_subset(cli_env, tmp_path):
    flickr = shared_data("flickr8k-test")
    out = run(
        cli_env,
        "eval", str(flickr), "--limit", "100", "--k", "1,5,10",
        "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    report = out.stdout
    assert report.startswith("# flickr8k-test")
    assert "| metric | embedding search | BM25 keywords | random |" in report
    for row in ("| R@1 |", "| R@5 |", "| R@10 |", "| MRR |", "| nDCG@10 |", "| median rank |"):
        assert row in report
    assert "## image → text" in report
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["dataset"]["images"] == 100 and results["dataset"]["captions"] == 500
    t2i = results["tasks"]["text_to_image"]
    assert set(t2i["methods"]) == {"embedding", "bm25"} and t2i["queries"] == 500
    check_values(t2i["methods"])
    check_values(results["tasks"]["image_to_text"]["methods"])
    assert results["timing"]["embedded"] == 100
    assert (tmp_path / "out" / "flickr8k-test-limit100.md").read_text() == report
    assert (tmp_path / "out" / "flickr8k-test-limit100-recall.png").stat().st_size > 1000

    again = run(
        cli_env,
        "eval", str(flickr), "--limit", "100", "--json", "-", "-q", "--no-plot",
        "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out2"),
    )  # fmt: skip
    rerun = json.loads(again.stdout)
    assert rerun["timing"]["from_cache"] == 100 and rerun["timing"]["embedded"] == 0
    assert rerun["tasks"]["text_to_image"]["methods"] == t2i["methods"]  # same vectors, same figures


def test_eval_labelled_subset(cli_env, tmp_path):
    imagenette = shared_data("imagenette-val")
    out = run(
        cli_env,
        "eval", str(imagenette), "--limit", "200", "--k", "1,10", "-q",
        "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), "--json", "-",
    )  # fmt: skip
    results = json.loads(out.stdout)
    assert results["dataset"]["classes"] == 10 and results["dataset"]["images"] == 200
    tasks = results["tasks"]
    assert set(tasks) == {"image_to_image", "class_to_image", "zero_shot"}
    assert tasks["image_to_image"]["queries"] == 200 and tasks["image_to_image"]["candidates"] == 199
    assert tasks["class_to_image"]["queries"] == 10
    assert tasks["zero_shot"]["chance"]["hit@1"] == pytest.approx(0.1)
    for task in tasks.values():
        check_values(task["methods"])
    assert "P@10" in tasks["image_to_image"]["methods"]["embedding"]
    assert len(results["templates"]) >= 1
    report = (tmp_path / "out" / "imagenette-val-limit200.md").read_text()
    assert "| top-1 accuracy |" in report and "| AP (mean over classes) |" in report


def test_eval_errors_are_clear(cli_env, tmp_path):
    out = run(cli_env, "eval", str(tmp_path / "nothing"), check=False)
    assert out.returncode == 2 and "no such data set" in out.stderr and "Traceback" not in out.stderr
    out = run(cli_env, "eval", str(tmp_path), "--k", "0,5", check=False)
    assert out.returncode == 2 and "--k" in out.stderr


def test_classify_cli(cli_env):
    photo = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    out = run(cli_env, "classify", str(photo), "--labels", "cat, dog,car,dog")
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] and len(lines) == 3
    assert "need not add up to 1" in out.stderr
    data = json.loads(run(cli_env, "classify", str(photo), "--labels", "cat,dog", "--json").stdout)
    assert data["method"] == "sigmoid"
    probs = [item["probability"] for item in data["labels"]]
    assert probs == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs)
    out = run(cli_env, "classify", str(photo), "--labels", " , ", check=False)
    assert out.returncode == 2 and "at least one label" in out.stderr


def test_engine_classify(engine):
    photo = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    result = engine.classify(photo, ["cat", "dog", "pizza"], templates=["a photo of a {}.", "{}"])
    assert [label for label, _ in result] and len(result) == 3
    assert all(isinstance(item, LabelProbability) and 0.0 <= item.probability <= 1.0 for item in result)
    assert [p for _, p in result] == sorted((p for _, p in result), reverse=True)
    same = engine.classify(photo.read_bytes(), "cat,dog,pizza", templates=["a photo of a {}.", "{}"])
    assert same == result
    assert engine.count() == 0  # classifying stores nothing


class _ClipLike:
    logit_scale = math.log(100.0)

    def probability(self, scores):
        return None


def test_clip_falls_back_to_a_softmax_over_the_labels():
    probs, method = probabilities(_ClipLike(), np.array([0.30, 0.25, 0.10]))
    assert method == "softmax" and probs.sum() == pytest.approx(1.0) and probs.argmax() == 0
    assert parse_labels(["a", " b ", "a", ""]) == ["a", "b"]


def test_help_shows_the_model_option_as_users_type_it():
    import argparse

    from clip_search.__main__ import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("eval", "classify"):
        text = commands[name].format_help()
        assert "--model MODEL" in text and "SUB_MODEL" not in text, name
