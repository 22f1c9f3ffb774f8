"""The command line as a user runs it: JSON output, clear errors, the empty-collection hint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, shared_data


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clip_search", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=check
    )


def test_samples_then_search_json(cli_env: dict[str, str]):
    out = run(cli_env, "ingest", "--samples", "--json")
    report = json.loads(out.stdout)
    assert report["added"] >= 10 and not report["failed"]

    hits = json.loads(run(cli_env, "search", "a cat", "-k", "3", "--json").stdout)
    assert len(hits) == 3
    for hit in hits:
        assert {"id", "key", "score", "probability", "url", "caption"} <= set(hit)
        assert 0.0 <= hit["probability"] <= 1.0
        assert hit["key"].startswith("images/")
        assert hit["url"] == hit["key"]  # local storage: relative to the data dir, no absolute server path
        assert (Path(cli_env["CLIP_SEARCH_DATA_DIR"]) / hit["url"]).is_file()

    table = run(cli_env, "search", "a cat", "-k", "2").stdout.splitlines()
    assert len(table) == 2 and table[0].lstrip().startswith("1.")


def test_search_by_image_json(cli_env: dict[str, str]):
    photo = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[0]
    run(cli_env, "ingest", str(photo.parent), "--quiet")
    hits = json.loads(run(cli_env, "search", "--image", str(photo), "-k", "1", "--json").stdout)
    assert hits[0]["source"] == str(photo)
    assert hits[0]["probability"] is None  # SigLIP's sigmoid is calibrated for image-text pairs only


def test_empty_query_is_a_clear_error(cli_env: dict[str, str]):
    out = run(cli_env, "search", "   ", check=False)
    assert out.returncode == 2
    assert "empty" in out.stderr and "Traceback" not in out.stderr


def test_empty_collection_says_how_to_add_photos(cli_env: dict[str, str]):
    out = run(cli_env, "search", "anything")
    assert "ingest --samples" in out.stderr


def test_bad_config_fails_at_start_naming_the_key(cli_env: dict[str, str], tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  max_k: -1\n")
    out = run(dict(cli_env, CLIP_SEARCH_CONFIG=str(bad)), "info", check=False)
    assert out.returncode == 2 and "search.max_k" in out.stderr
