"""The operator's commands on visitors' photos: review (list, approve, reject), uploads, delete in bulk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clip_search.engine import SearchEngine
from tests.conftest import ROOT, make_settings, shared_data
from tests.moderation_hooks import FLAGGED_ENV, size_of


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "clip_search", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


def test_review_uploads_and_bulk_delete_from_the_command_line(cli_env, tiny_model_dir, tmp_path, monkeypatch):
    photos = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[130:140]
    sizes = [size_of(p.read_bytes()) for p in photos]
    flagged = [p for p, size in zip(photos, sizes, strict=True) if sizes.count(size) == 1][:2]
    listed = tmp_path / "flagged.txt"
    listed.write_text("\n".join(size_of(p.read_bytes()) for p in flagged))
    monkeypatch.setenv(FLAGGED_ENV, str(listed))
    settings = make_settings(
        Path(cli_env["CLIP_SEARCH_DATA_DIR"]),
        tiny_model_dir,
        upload={"near_duplicate_threshold": 0.9999},
        moderation={"enabled": True, "prompts": [], "hook": "tests.moderation_hooks:flag_listed"},
    )
    others = [p for p in photos if p not in flagged][:4]
    with SearchEngine(settings) as engine:
        held = [engine.upload(p.read_bytes(), filename=p.name, client="c-aaaaaaaaaaaa").id for p in flagged]
        spammer = [engine.upload(p.read_bytes(), filename=p.name, client="c-bbbbbbbbbbbb").id for p in others[:2]]
        kept = [engine.upload(p.read_bytes(), filename=p.name, client="c-cccccccccccc").id for p in others[2:]]
        assert engine.count() == 4

    listing = json.loads(_cli(cli_env, "review", "--json").stdout)
    assert [row["id"] for row in listing] == held[::-1]  # newest first
    assert all(row["visibility"] == "held" and row["client_id"] == "c-aaaaaaaaaaaa" for row in listing)
    assert f"approved 1 of 2: {held[0]}" in _cli(cli_env, "review", "approve", str(held[0]), str(kept[0])).stdout
    assert f"rejected and deleted 1 of 1: {held[1]}" in _cli(cli_env, "review", "reject", str(held[1])).stdout
    assert "no upload is waiting for review" in _cli(cli_env, "review").stdout

    uploads = json.loads(_cli(cli_env, "uploads", "--json").stdout)
    assert [row["id"] for row in uploads] == [*kept[::-1], *spammer[::-1], held[0]]
    assert {row["client_id"] for row in uploads} == {"c-aaaaaaaaaaaa", "c-bbbbbbbbbbbb", "c-cccccccccccc"}
    assert all(row["moderation_score"] == 0.0 for row in uploads)  # checked (by the hook alone here)
    table = _cli(cli_env, "uploads", "-n", "2").stdout.splitlines()
    assert len(table) == 2 and str(kept[1]) in table[0] and "client=c-cccccccccccc" in table[0]

    assert "deleted 2 images" in _cli(cli_env, "delete", "--client", "c-bbbbbbbbbbbb").stdout
    assert "deleted 2 images" in _cli(cli_env, "delete", str(kept[0]), str(held[0])).stdout
    assert json.loads(_cli(cli_env, "info").stdout)["images"] == 1
    assert [row["id"] for row in json.loads(_cli(cli_env, "uploads", "--json").stdout)] == [kept[1]]
