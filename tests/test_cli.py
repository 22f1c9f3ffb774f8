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


def test_query_flags_give_the_engines_results(cli_env: dict[str, str], tmp_path):
    """Every flag of ``search`` reaches the engine's query: same ids as the engine call, page by page."""
    coco = shared_data("coco-mini")
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted((coco / "val2017").glob("*.jpg"))[:30]:
        (folder / src.name).symlink_to(src)
    captions = coco / "annotations" / "captions_val2017.json"
    run(cli_env, "ingest", str(folder), "--captions", str(captions), "--quiet")
    photo = sorted(folder.glob("*.jpg"))[0]
    first = json.loads(run(cli_env, "search", "a dog", "-k", "4", "--json").stdout)
    like, unlike = first[1]["id"], first[2]["id"]
    flags = [
        *("a dog on grass^2", "a park", "--minus", "people^0.5", "--image", f"{photo}^0.5"),
        *("--like", str(like), "--unlike", str(unlike), "--after", "2020-01-01", "--source", str(folder)),
        *("--orientation", "landscape", "--min-width", "300", "-k", "3"),
    ]
    pages = [json.loads(run(cli_env, "search", *flags, "--page", str(n), "--json").stdout) for n in (1, 2)]
    table = run(cli_env, "search", "a dog", "--caption", "dog", "--sort", "newest", "-k", "50", "--json").stdout

    from clip_search.config import load_config
    from clip_search.engine import SearchEngine

    with SearchEngine(load_config(ROOT / "config.yaml", env=cli_env)) as engine:
        query = (
            engine.query("a dog on grass", weight=2)
            .plus("a park")
            .minus("people", weight=0.5)
            .plus(image=photo.read_bytes(), weight=0.5)
            .like(like)
            .unlike(unlike)
            .where(after="2020-01-01", source=str(folder), orientation="landscape", min_width=300)
            .limit(3)
        )
        expected = [[h.id for h in query.page(n).run().hits] for n in (1, 2)]
        dogs = engine.query("a dog").where(caption="dog").sort_by("newest").limit(50).run()
    assert [[h["id"] for h in page] for page in pages] == expected
    assert len(expected[0]) == 3 and unlike not in expected[0] + expected[1]
    assert [h["id"] for h in json.loads(table)] == [h.id for h in dogs.hits]
    assert dogs.hits and all("dog" in h.caption.lower() for h in dogs.hits)


def test_bad_query_flags_are_clear_errors(cli_env: dict[str, str]):
    for flags, message in (
        (["a dog", "--after", "last week"], "not a date"),
        (["a dog", "--minus", "a dog"], "cancel"),
        (["--sort", "relevance"], "give a text"),
        (["a dog", "--page", "0"], "at least 1"),
    ):
        out = run(cli_env, "search", *flags, check=False)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
