"""How text queries are encoded on CPU: the fastest path that keeps cosine >= 0.999 to the fp32 vectors.

By default (``model.query_runtime: auto``) the candidates are torch fp32 and dynamic int8, and ONNX Runtime fp32 (the
text tower exported once per model and machine into the user's cache) and dynamic int8; those whose probe vectors
agree with fp32 are timed at the first warm-up on a machine and the fastest serves; later processes build only that
one. Image vectors never change.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip_search.encoder import HFEncoder
from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError
from tests.conftest import make_settings

VARIED_QUERIES = [
    f"{style} {subject}{where}".strip()
    for style in ("a photo of", "a painting of", "close-up of", "a blurry picture of", "an aerial view of")
    for subject in (
        "a dog",
        "two cats",
        "a red car",
        "a crowded beach",
        "snowy mountains",
        "a bowl of soup",
        "a city street",
        "an old man laughing",
        "a sailboat",
        "yellow flowers",
    )
    for where in ("", " at night", " in the rain", " with people around")
]
TEXTS = [*VARIED_QUERIES, "x " * 200, "cat"]  # and one cut at the token limit, and a short one


@functools.cache
def _exact_vectors(directory: Path) -> np.ndarray:
    """torch fp32 vectors of ``TEXTS``: the reference every query path is held to (once per model: slow at base)."""
    return HFEncoder(str(directory), device="cpu", query_runtime="torch").encode_text_exact(TEXTS)


@pytest.mark.parametrize("model", ["tiny", "base"])
def test_int8_query_path_keeps_cosine_to_fp32_and_leaves_images_exact(model, tiny_model_dir, request):
    directory = tiny_model_dir if model == "tiny" else request.getfixturevalue("base_model_dir")
    fast = HFEncoder(str(directory), device="cpu", query_runtime="torch", query_quantize="int8")
    assert fast.query_path == "int8"
    assert len(VARIED_QUERIES) == 200
    cosine = np.sum(fast.encode_text(TEXTS) * _exact_vectors(directory), axis=1)
    assert cosine.min() >= 0.999
    assert cosine.max() < 1 - 1e-7  # the int8 tower really answered
    exact = HFEncoder(str(directory), device="cpu", query_quantize="none")
    assert exact.query_path == "fp32"
    pixels = np.stack([exact.preprocess(Image.new("RGB", (64, 48), c)) for c in ("red", "navy")])
    np.testing.assert_array_equal(fast.encode_pixels(pixels), exact.encode_pixels(pixels))


def _onnx_files(folder: Path) -> list[Path]:
    """The cached fp32 towers (not their int8 copies)."""
    return sorted(p for p in (folder / "onnx").glob("*.onnx") if not p.stem.endswith("-int8"))


def _onnx_fp32(directory: Path, cache_dir: Path) -> HFEncoder:
    """An encoder whose queries must go through the ONNX fp32 tower (the cache tests' subject)."""
    return HFEncoder(str(directory), device="cpu", query_runtime="onnx", query_quantize="none", cache_dir=cache_dir)


def _min_cosine(encoder: HFEncoder, texts: list[str]) -> float:
    return float(np.min(np.sum(encoder.encode_text(texts) * encoder.encode_text_exact(texts), axis=1)))


@pytest.mark.parametrize("model", ["tiny", "base", "clip"])
@pytest.mark.parametrize("path", ["onnx-fp32", "onnx-int8", "default"])
def test_each_query_path_keeps_cosine_to_fp32_and_leaves_images_exact(model, path, request, tmp_path, user_cache):
    directory = request.getfixturevalue(
        {"tiny": "tiny_model_dir", "base": "base_model_dir", "clip": "tiny_clip_dir"}[model]
    )
    choice = {"onnx-fp32": {"query_runtime": "onnx", "query_quantize": "none"}, "default": {}}.get(
        path, {"query_runtime": "onnx", "query_quantize": "int8"}
    )
    settings = make_settings(tmp_path / "data", directory, model={"device": "cpu", **choice})  # else config.yaml's
    encoder = HFEncoder.from_settings(settings.model)
    try:
        encoder.warm_up()
    except ClipSearchError as exc:  # int8 of a tiny random model may disagree: then it is refused, never used
        assert path == "onnx-int8" and "no ONNX text tower agrees with fp32" in str(exc)
        return
    assert encoder.query_path == path or path == "default"
    if path != "default":  # in the user's cache, shared by every collection on the machine, not in the data dir
        assert Path(encoder._query_encoder().source).is_relative_to(user_cache)
        assert not (settings.cache_dir / "onnx").exists()
    assert len(VARIED_QUERIES) == 200
    fast, exact = encoder.encode_text(TEXTS), _exact_vectors(directory)
    assert np.sum(fast * exact, axis=1).min() >= 0.999
    if path != "default":
        assert not np.array_equal(fast, exact)  # ONNX Runtime really answered (its kernels round differently)
    torch_only = HFEncoder(str(directory), device="cpu", query_runtime="torch", query_quantize="none")
    pixels = np.stack([encoder.preprocess(Image.new("RGB", (64, 48), c)) for c in ("red", "navy")])
    np.testing.assert_array_equal(encoder.encode_pixels(pixels), torch_only.encode_pixels(pixels))  # query side only


def test_auto_times_every_agreeing_path_and_keeps_the_fastest(tmp_path, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))  # no choice remembered yet
    caplog.set_level(logging.INFO)
    encoder = _auto(tiny_model_dir, tmp_path)
    encoder.warm_up()
    assert any("quantized the ONNX text tower to int8" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.name == "root"]  # ONNX Runtime's quantizer talks a line per tensor
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("text query paths on this CPU")]
    timed = dict(re.findall(r"([a-z0-9-]+) ([0-9.]+) ms", line.split(": ", 1)[1].split(";")[0]))
    assert {"fp32", "onnx-fp32"} <= set(timed)  # the fp32 paths always agree; the int8 ones where their probes do
    assert float(timed[encoder.query_path]) == min(float(ms) for ms in timed.values())  # as logged, rounded
    assert line.endswith(f"fastest: {encoder.query_path}")


def test_the_choice_is_remembered_so_every_process_on_the_machine_takes_the_same_path(
    tmp_path, tiny_model_dir, caplog, monkeypatch
):
    """Two processes on one machine (an app and its CLI, a restart on a wiped data dir) must rank alike: the
    second takes the first's choice, from the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    first = HFEncoder(str(tiny_model_dir), device="cpu", query_runtime="auto", cache_dir=tmp_path)
    first.warm_up()
    (record,) = (tmp_path / "user-cache" / "clip-search").glob("query-path-*.json")
    caplog.set_level(logging.INFO, logger="clip_search.query_choice")
    for _ in range(3):
        again = HFEncoder(str(tiny_model_dir), device="cpu", query_runtime="auto", cache_dir=tmp_path)
        assert again.query_path == first.query_path
        np.testing.assert_array_equal(again.encode_text(VARIED_QUERIES[:8]), first.encode_text(VARIED_QUERIES[:8]))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("as measured on this machine before" in m for m in messages) == 3
    assert not any(m.startswith("text query paths on this CPU") for m in messages)
    record.write_text("{not json")  # damaged: measured again, and remembered again
    caplog.clear()
    assert HFEncoder(str(tiny_model_dir), device="cpu", query_runtime="auto", cache_dir=tmp_path).query_path
    assert any(r.getMessage().startswith("text query paths on this CPU") for r in caplog.records)
    assert '"chosen"' in record.read_text()


def _start_at_once(directory: str, towers: str, cache: str, start: Any, results: Any) -> None:
    """A process starting on a fresh machine: loads the model, waits for the other, then chooses its query path."""
    os.environ["XDG_CACHE_HOME"] = cache
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("clip_search").addHandler(handler)
    logging.getLogger("clip_search").setLevel(logging.INFO)
    encoder = HFEncoder(directory, device="cpu", query_runtime="auto", query_quantize="auto", cache_dir=towers)
    encoder.load()
    start.wait(timeout=120)
    path = encoder.query_path
    results.put((path, sum(m.startswith("text query paths on this CPU") for m in messages)))


def test_processes_starting_at_once_measure_once_and_take_the_same_path(tmp_path, tiny_model_dir):
    """Two replicas starting together on a fresh machine: one measures (and exports) while the other waits for
    its choice, so both rank alike and the work is done once."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    cache = tmp_path / "user-cache"
    args = (str(tiny_model_dir), str(tmp_path / "towers"), str(cache), start, results)
    processes = [context.Process(target=_start_at_once, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert outcomes[0][0] == outcomes[1][0]
    assert sorted(measured for _, measured in outcomes) == [0, 1]
    assert len(list((cache / "clip-search").glob("query-path-*.json"))) == 1


def _auto(directory: Path, towers: Path) -> HFEncoder:
    """An encoder with the shipped defaults: every runtime and precision may compete."""
    return HFEncoder(str(directory), device="cpu", query_runtime="auto", query_quantize="auto", cache_dir=towers)


def _remember(user_cache: Path, chosen: str) -> Path:
    """Rewrites this machine's one query path record as if ``chosen`` had been measured fastest."""
    (record,) = (user_cache / "clip-search").glob("query-path-*.json")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "chosen": chosen}))
    return record


@pytest.mark.parametrize("chosen", ["int8", "onnx-fp32", "onnx-int8"])
def test_a_later_process_builds_only_the_path_chosen_before(chosen, tmp_path, tiny_model_dir, caplog, monkeypatch):
    """No ONNX export where torch won; the int8 ONNX tower loads from its file without the fp32 one; no timing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    _auto(tiny_model_dir, tmp_path / "towers").warm_up()
    _remember(tmp_path / "user-cache", chosen)
    towers = tmp_path / ("towers" if chosen.startswith("onnx") else "none-yet")
    if chosen == "onnx-int8":
        for fp32 in _onnx_files(towers):
            fp32.unlink()  # only the int8 copy is left
    caplog.set_level(logging.INFO)
    again = _auto(tiny_model_dir, towers)
    assert again.query_path == chosen
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "exported the text tower" in m or "quantized the ONNX" in m]
    assert not [m for m in messages if m.startswith("text query paths on this CPU")]
    assert not [m for m in messages if "torch int8 text queries left out" in m]
    if not chosen.startswith("onnx"):
        assert not towers.exists()  # nothing exported
    assert _min_cosine(again, VARIED_QUERIES[:20]) >= 0.999


def test_a_choice_that_cannot_serve_now_is_measured_again(tmp_path, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    _auto(tiny_model_dir, tmp_path / "towers").warm_up()
    record = _remember(tmp_path / "user-cache", "onnx-int8")
    blocker = tmp_path / "not-a-folder"  # an unwritable cache: the fp32 tower lives in memory, no int8 copy
    blocker.write_text("a file where the cache folder should be")
    caplog.set_level(logging.INFO)
    again = _auto(tiny_model_dir, blocker)
    assert again.query_path != "onnx-int8"
    messages = [r.getMessage() for r in caplog.records]
    assert any("the query path onnx-int8 chosen before cannot serve now" in m for m in messages)
    assert any(m.startswith("text query paths on this CPU") for m in messages)
    assert json.loads(record.read_text())["chosen"] == again.query_path  # remembered anew


def test_the_engine_searches_through_the_onnx_tower_in_the_user_cache(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    settings = make_settings(
        tmp_path / "data", tiny_model_dir, model={"query_runtime": "onnx", "query_quantize": "none"}
    )
    with SearchEngine(settings) as engine:
        engine.add_image(_png("red"), source="red.png")
        assert engine.search_text("a red picture", k=1)[0].source == "red.png"
        assert engine.encoder.query_path == "onnx-fp32"
    assert len(_onnx_files(tmp_path / "user-cache" / "clip-search")) == 1
    assert not (settings.cache_dir / "onnx").exists()  # derived from the model, not from the collection


def test_a_restart_loads_the_cached_tower_without_exporting_again(tmp_path, tiny_model_dir, caplog):
    first = _onnx_fp32(tiny_model_dir, tmp_path)
    first.warm_up()
    (cached,) = _onnx_files(tmp_path)
    before = cached.stat()
    caplog.set_level(logging.INFO, logger="clip_search.onnx_text")
    again = _onnx_fp32(tiny_model_dir, tmp_path)
    assert again.query_path == "onnx-fp32"
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    assert not [r for r in caplog.records if "exported the text tower" in r.getMessage()]
    np.testing.assert_array_equal(again.encode_text(VARIED_QUERIES[:8]), first.encode_text(VARIED_QUERIES[:8]))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another model's tower"])
def test_a_damaged_cached_tower_is_exported_again(damage, tmp_path, tiny_model_dir, other_tiny_model_dir, caplog):
    _onnx_fp32(tiny_model_dir, tmp_path).warm_up()
    (cached,) = _onnx_files(tmp_path)
    good = cached.read_bytes()
    if damage == "another model's tower":  # loads fine, gives other vectors: only the probes can tell
        other = _onnx_fp32(
            other_tiny_model_dir,
            tmp_path / "other",
        )
        other.warm_up()
        (theirs,) = _onnx_files(tmp_path / "other")
        cached.write_bytes(theirs.read_bytes())
    else:
        cached.write_bytes(
            {"truncated": good[: len(good) // 2], "garbage": b"\x08\x07junk" * 999, "empty": b""}[damage]
        )
    caplog.set_level(logging.INFO, logger="clip_search.onnx_text")
    encoder = _onnx_fp32(tiny_model_dir, tmp_path)
    assert encoder.query_path == "onnx-fp32"
    assert _min_cosine(encoder, VARIED_QUERIES) >= 0.999
    assert any("exporting it again" in r.getMessage() for r in caplog.records)
    assert any("exported the text tower" in r.getMessage() for r in caplog.records)
    assert _onnx_files(tmp_path) == [cached]  # replaced in place, no temporary file left
    assert not list((tmp_path / "onnx").glob(".*.tmp"))
    _onnx_fp32(tiny_model_dir, tmp_path).warm_up()  # now loads
    assert cached.stat().st_size > 0


def test_an_unwritable_cache_keeps_the_tower_in_memory(tmp_path, tiny_model_dir, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    caplog.set_level(logging.WARNING, logger="clip_search.onnx_text")
    encoder = _onnx_fp32(tiny_model_dir, blocker)
    assert encoder.query_path == "onnx-fp32"
    assert _min_cosine(encoder, VARIED_QUERIES[:20]) >= 0.999
    assert any("kept in memory only" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("quantize", "path"), [("int8", "int8"), ("none", "fp32")])
def test_query_runtime_torch_keeps_the_torch_path(quantize, path, tmp_path, tiny_model_dir):
    encoder = HFEncoder(
        str(tiny_model_dir), device="cpu", query_runtime="torch", query_quantize=quantize, cache_dir=tmp_path
    )
    assert encoder.query_path == path
    assert not list(tmp_path.rglob("*.onnx"))  # nothing exported
    if path == "fp32":
        np.testing.assert_array_equal(
            encoder.encode_text(VARIED_QUERIES[:4]), encoder.encode_text_exact(VARIED_QUERIES[:4])
        )


def test_without_onnxruntime_auto_falls_back_to_torch_and_onnx_says_why(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as where it is not installed: its import fails
    auto = HFEncoder(str(tiny_model_dir), device="cpu", query_runtime="auto", query_quantize="auto", cache_dir=tmp_path)
    assert auto.query_path in ("fp32", "int8")
    assert not list(tmp_path.rglob("*.onnx"))  # nothing exported
    required = HFEncoder(str(tiny_model_dir), device="cpu", query_runtime="onnx", cache_dir=tmp_path)
    with pytest.raises(ClipSearchError, match="query_runtime is onnx but onnxruntime and onnx are not installed"):
        required.warm_up()


def _png(color: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return buf.getvalue()
